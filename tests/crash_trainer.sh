#!/bin/sh
# Crash test of dtnh-train itself: a run with --checkpoint-every 1 (so it spends much of its time
# saving) is killed with SIGKILL at a random moment, ROUNDS times, each new run resuming from the
# checkpoint the last one left; then one run resumes to the end. Every checkpoint must be resumed
# by the run after it ("resumed: ... at iteration K"), no run may fail by itself, and the end must
# be bit-identical to an uninterrupted run without checkpoints: the same result line and the same
# weights (the data section of --save; its header holds the command line, which differs).
#
#    sh tests/crash_trainer.sh BIN_DIR [WORK_DIR] [ROUNDS] [SEED]        (make check-crash-trainer)
#
# The last line is "N passed, M failed" (a round passes when its run was killed or ended well and
# the run after it resumed; the end counts as one more). Exit status 1 on any failure.
set -u
bin=${1:?usage: crash_trainer.sh BIN_DIR [WORK_DIR] [ROUNDS] [SEED]}
dir=${2:-build/crash-trainer}
rounds=${3:-50}
seed=${4:-$(date +%s)}
train="$bin/dtnh-train"
args="--data data/digits-train-images-idx3-ubyte --labels data/digits-train-labels-idx1-ubyte \
  --classes 5,6,7,8,9 --shots 8 --width 4 --size 12 --batch 8 --iters 300 --eval-every 0 \
  --reg l2 --optim momentum --crop-pad 1 --flip --seed 4 --threads 1"
ck="$dir/ck.safetensors"
passed=0
failed=0

fail() {
    echo "$1"
    failed=$((failed + 1))
}

# The data section of a safetensors file (after the 8-byte length and the header).
data_of() {
    n=$(od -An -tu8 -N8 "$1" | tr -d ' ')
    tail -c +$((9 + n)) "$1"
}

result_of() {
    grep '^result:' "$1" | sed 's/ seconds=.*//'
}

# Compares a finished run (its output and --save) with the uninterrupted one.
same_as_reference() {
    [ "$(result_of "$1")" = "$(result_of "$dir/ref.out")" ] && [ -n "$(result_of "$1")" ] || return 1
    data_of "$2" > "$dir/a.bin" && data_of "$dir/ref.safetensors" > "$dir/b.bin" && cmp -s "$dir/a.bin" "$dir/b.bin"
}

[ -x "$train" ] || { echo "no $train (make builds it)"; exit 1; }
rm -rf "$dir" && mkdir -p "$dir" || exit 1
export OMP_NUM_THREADS=1
"$train" $args --save "$dir/ref.safetensors" > "$dir/ref.out" 2>&1 || { cat "$dir/ref.out"; exit 1; }
echo "crash test of dtnh-train: $rounds kills, seed $seed, in $dir"

round=0
mid_save=0
pending=0 # a kill left a checkpoint that no later run has resumed yet
while [ $round -lt $rounds ]; do
    resume=""
    [ -f "$ck" ] && resume="--resume $ck"
    "$train" $args --checkpoint "$ck" --checkpoint-every 1 $resume --save "$dir/out.safetensors" > "$dir/run.out" 2>&1 &
    pid=$!
    sleep "$(awk -v s="$seed" -v r="$round" 'BEGIN { srand(s * 1000 + r); printf "%.4f", 0.02 + rand() * 0.2 }')"
    kill -9 $pid 2> /dev/null
    wait $pid 2> /dev/null
    status=$?
    if [ -f "$ck.tmp" ]; then
        mid_save=$((mid_save + 1))
        rm -f "$ck.tmp"
    fi
    if [ -n "$resume" ] && grep -q '^resumed: ' "$dir/run.out"; then pending=0; fi
    if [ $status -ne 137 ] && [ $status -ne 0 ]; then
        fail "round $round: dtnh-train failed by itself (exit $status): $(tail -n 1 "$dir/run.out")"
    elif [ $status -eq 0 ]; then # it finished before the kill: check it, start over
        if same_as_reference "$dir/run.out" "$dir/out.safetensors"; then
            passed=$((passed + 1))
        else
            fail "round $round: the run ended, but not as the uninterrupted one"
        fi
        rm -f "$ck" "$ck.log.csv"
    else
        passed=$((passed + 1))
        [ -f "$ck" ] && pending=1
    fi
    round=$((round + 1))
done

# The last checkpoint resumes to the end, bit-identical to the uninterrupted run.
resume=""
[ -f "$ck" ] && resume="--resume $ck"
if "$train" $args --checkpoint "$ck" --checkpoint-every 1 $resume --save "$dir/out.safetensors" > "$dir/run.out" 2>&1 &&
    { [ $pending -eq 0 ] || grep -q '^resumed: ' "$dir/run.out"; } &&
    same_as_reference "$dir/run.out" "$dir/out.safetensors"; then
    passed=$((passed + 1))
    echo "the last checkpoint ($(grep '^resumed: ' "$dir/run.out" | sed 's/.* at //')) resumed to the end, bit-identical to the uninterrupted run"
else
    fail "the last checkpoint did not resume to the uninterrupted run's end: $(tail -n 2 "$dir/run.out" | tr '\n' ' ')"
fi
echo "$rounds kills, $mid_save of them while a checkpoint was being written"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
