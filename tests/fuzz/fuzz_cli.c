/* libFuzzer target for the programs' option parser (examples/cli.h), with a table that has
   every kind of option:
      clang -g -O1 -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_cli.c -lm -o fuzz_cli
      ./fuzz_cli -max_total_time=60 tests/fuzz/corpus/cli
   Input: the arguments separated by NUL bytes. Parsing must return 0 or -1 with a message,
   never fault; the help printer must then print the values it left. */
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#define CLI_IMPLEMENTATION
#include "../../examples/cli.h"

#define FUZZ_ARGS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char text[1 << 16];
    char *argv[FUZZ_ARGS + 1];
    char msg[256];
    int argc = 1, help = 0, steps = 10, flag = 0, mode = 0;
    float lr = 0.01f;
    const char *path = NULL;
    cli_int_list classes;
    cli_option opts[6];
    size_t i, start = 0;
    FILE *null_out;
    const cli_option table[6] = {
        {"steps", CLI_INT, NULL, 1, 1e6, NULL, "steps"},
        {"lr", CLI_FLOAT, NULL, 0, 10, NULL, "learning rate"},
        {"out", CLI_STRING, NULL, 0, 0, NULL, "output path"},
        {"mode", CLI_CHOICE, NULL, 0, 0, "dtnh|sum|l2sp", "mode"},
        {"classes", CLI_INT_LIST, NULL, 0, 9, NULL, "class subset"},
        {"verbose", CLI_FLAG, NULL, 0, 0, NULL, "talk"},
    };
    if (size >= sizeof text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    memcpy(opts, table, sizeof opts);
    opts[0].dest = &steps;
    opts[1].dest = &lr;
    opts[2].dest = &path;
    opts[3].dest = &mode;
    opts[4].dest = &classes;
    opts[5].dest = &flag;
    classes.count = 0;
    argv[0] = (char *)"prog";
    for (i = 0; i <= size && argc < FUZZ_ARGS; i++)
        if (text[i] == 0) {
            argv[argc++] = text + start;
            start = i + 1;
        }
    argv[argc] = NULL;
    msg[0] = 0;
    if (cli_parse(opts, 6, argc, argv, &help, msg, sizeof msg) != 0 && msg[0] == 0) __builtin_trap();
    null_out = fopen("/dev/null", "w");
    if (null_out) {
        cli_print_help(null_out, "usage: prog [options]", opts, 6);
        fclose(null_out);
    }
    return 0;
}
