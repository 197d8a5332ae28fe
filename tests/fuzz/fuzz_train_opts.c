/* libFuzzer target for dtnh-train's real option table (examples/train_opts.h) through the
   parser (examples/cli.h):
      clang -g -O1 -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_train_opts.c -lm -o fuzz_train
      ./fuzz_train -max_total_time=60 tests/fuzz/corpus/train_opts
   Input: the arguments separated by NUL bytes. Parsing must return 0 or -1 with a message,
   never fault, and the help printer must then print whatever values it left. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#define CLI_IMPLEMENTATION
#include "../../examples/cli.h"
#include "../../examples/train_opts.h"

#define FUZZ_ARGS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char text[1 << 16];
    static cli_option opts[TRAIN_MAX_OPTIONS];
    static train_opts v;
    char *argv[FUZZ_ARGS + 1];
    char msg[256];
    int argc = 1, help = 0, n;
    size_t i, start = 0;
    FILE *null_out;
    if (size >= sizeof text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    train_option_defaults(&v);
    n = train_option_table(opts, &v);
    argv[0] = (char *)"dtnh-train";
    for (i = 0; i <= size && argc < FUZZ_ARGS; i++)
        if (text[i] == 0) {
            argv[argc++] = text + start;
            start = i + 1;
        }
    argv[argc] = NULL;
    msg[0] = 0;
    if (cli_parse(opts, n, argc, argv, &help, msg, sizeof msg) != 0 && msg[0] == 0) __builtin_trap();
    null_out = fopen("/dev/null", "w");
    if (null_out) {
        cli_print_help(null_out, "usage: dtnh-train [options]", opts, n);
        fclose(null_out);
    }
    return 0;
}
