#!/bin/sh
# `make demo`: the main job in miniature, offline. The shipped source checkpoint (ResNet-18,
# width 16, pre-trained on Fashion-MNIST classes 0-4 by `make source`) is fine-tuned on 30
# MNIST digits per class of 5-9, drawn with seed 1 from data/digits-train: a target from
# another domain, where the source does not fit and negative transfer can show. Once with
# L2-SP and once with DTNH(L2-SP), the same recipe otherwise (SGD momentum 0.9, lr 0.01
# divided by 10 for the last quarter, beta = 0.01), each on one thread, side by side. Both
# are tested on the 500 held-out digits 5-9 of data/digits-test, which nothing here was
# tuned on.
#
# alpha = 1 is the never-hurt setting of issue 6 (a regularizer strong enough to matter):
# in a run this short, alpha = 0.01 (the default) leaves ||g_Omega|| two orders of magnitude
# below ||g_J|| (see the logs' norm columns) and the two methods take the same steps.
#
# usage: sh examples/demo.sh PROGRAM_DIR SOURCE OUT_DIR
set -u
bin=$1
source=$2
out=$3

if [ ! -f "$source" ]; then
    echo "demo: $source is missing (make source makes it)" >&2
    exit 1
fi
mkdir -p "$out" || exit 1
common="--weights $source --data data/digits-train-images-idx3-ubyte --labels data/digits-train-labels-idx1-ubyte
 --test-data data/digits-test-images-idx3-ubyte --test-labels data/digits-test-labels-idx1-ubyte
 --classes 5,6,7,8,9 --shots 30 --seed 1 --reg l2sp --alpha 1 --beta 0.01
 --optim momentum --lr 0.01 --iters 160 --lr-step 120 --batch 32 --crop-pad 2 --eval-every 20 --threads 1"

echo "demo: fine-tune $source (Fashion-MNIST classes 0-4)"
echo "      on 30 MNIST digits per class of 5-9 with L2-SP and with DTNH(L2-SP) (alpha 1), side by side;"
echo "      test on the 500 held-out digits 5-9 (logs in $out/)"
start=$(date +%s)
"$bin/dtnh-train" $common --dtnh off --log "$out/l2sp.csv" > "$out/l2sp.txt" 2>&1 &
pid=$!
"$bin/dtnh-train" $common --dtnh global --log "$out/dtnh-l2sp.csv" > "$out/dtnh-l2sp.txt" 2>&1
status_dtnh=$?
wait $pid
status_l2sp=$?
check() { # run exit-status
    if [ "$2" -ne 0 ]; then
        echo "demo: the $1 run failed (exit $2); the end of $out/$1.txt:" >&2
        tail -n 5 "$out/$1.txt" >&2
        exit 1
    fi
}
check l2sp $status_l2sp
check dtnh-l2sp $status_dtnh
echo
"$bin/dtnh-plot" --logs "$out/l2sp.csv,$out/dtnh-l2sp.csv" --names "L2-SP,DTNH(L2-SP)" --out "$out" \
    --title "FM 0-4 -> digits 5-9, 30 per class, alpha 1" || exit 1
echo
echo "demo: $(( $(date +%s) - start )) s of training and testing; final J is the mean training loss of the"
echo "      last 10 iterations; 'conflicting' counts the steps with cos(g_J, g_Omega) < 0, which DTNH projects"
