#!/bin/sh
# bench/scaling.sh: OpenMP scaling on a machine with more cores than the 2 this project is
# tuned on (a 16-core server, a many-core board). Builds the two benchmarks with that machine's
# compiler and ISA (the Makefile's bench rule, into build/scaling/bench), then runs
# bench_resnet at 1, 2, 4, 8 and 16 threads (PyTorch beside it where the Python in
# $DTNH_BENCH_PYTHON, default python3 on the PATH, has torch and torchvision) and bench_gemm
# with its "2t" columns on 16 threads; their output goes to the terminal and to $OUT (default
# build/scaling). Each step has its own time limit (RESNET_LIMIT, GEMM_LIMIT seconds), so a
# slow machine still reports the rest; CONFIGS (default cba) and GEMM_ONLY (a layer-name
# filter) narrow the runs.
#   sh bench/scaling.sh [THREAD_LIST] [GEMM_THREADS]      e.g. sh bench/scaling.sh 1,4,16 16
set -u
out=${OUT:-build/scaling}
threads=${1:-1,2,4,8,16}
team=${2:-16}
cc=${CC:-$(command -v gcc || command -v cc)}
bin=build/scaling/bench
mkdir -p "$out"
{
    date -u
    echo "cores: $(nproc)"
    lscpu | grep -E 'Model name|^CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)|NUMA node\(s\)|L2 cache|L3 cache'
    grep -o -m1 -w 'avx512f' /proc/cpuinfo || echo "no avx512f"
    $cc --version | head -n 1
} 2>&1 | tee "$out/machine.txt"
make --no-print-directory CC="$cc" OMP=1 B=build/scaling "$bin/bench_resnet" "$bin/bench_gemm" || exit 1
export DTNH_BENCH_PYTHON="${DTNH_BENCH_PYTHON:-$(command -v python3)}"
DTNH_BENCH_ITERS=${DTNH_BENCH_ITERS:-5} DTNH_BENCH_THREADS=$threads \
    timeout "${RESNET_LIMIT:-330}" "$bin/bench_resnet" "${CONFIGS:-cba}" 2>&1 | tee "$out/resnet.txt"
DTNH_BENCH_THREADS=$team timeout "${GEMM_LIMIT:-150}" "$bin/bench_gemm" "${GEMM_ONLY:-}" 2>&1 | tee "$out/gemm.txt"
