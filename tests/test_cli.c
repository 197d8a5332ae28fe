/* The example programs' option parser and SVG writer. */
#include <string.h>
#define CLI_IMPLEMENTATION
#include "../examples/cli.h"
#define SVG_IMPLEMENTATION
#include "../examples/svg.h"
#include "test.h"

typedef struct opts_fixture {
    int iters, reg, flip;
    float lr;
    const char *weights;
    cli_int_list steps;
} opts_fixture;

static int parse(opts_fixture *f, int argc, char **argv, char *msg) {
    cli_option o[6];
    int help;
    cli_option rows[6] = {
        {"iters", CLI_INT, NULL, 1, 1e7, NULL, "iterations"},
        {"reg", CLI_CHOICE, NULL, 0, 0, "none|l2|l2sp", "regularizer"},
        {"lr", CLI_FLOAT, NULL, 0, 10, NULL, "learning rate"},
        {"weights", CLI_STRING, NULL, 0, 0, NULL, "source weights"},
        {"flip", CLI_FLAG, NULL, 0, 0, NULL, "mirror"},
        {"lr-step", CLI_INT_LIST, NULL, 1, 1e7, NULL, "decay at"},
    };
    memcpy(o, rows, sizeof o);
    o[0].dest = &f->iters;
    o[1].dest = &f->reg;
    o[2].dest = &f->lr;
    o[3].dest = &f->weights;
    o[4].dest = &f->flip;
    o[5].dest = &f->steps;
    return cli_parse(o, 6, argc, argv, &help, msg, 256);
}

static void cli_parses_every_kind(void) {
    opts_fixture f;
    char msg[256];
    char *argv[] = {"prog", "--iters=5", "--reg", "l2sp", "--lr", "0.1", "--flip", "--lr-step", "3,9", "--weights", "w.st"};
    memset(&f, 0, sizeof f);
    CHECK(parse(&f, 11, argv, msg) == 0);
    CHECK(f.iters == 5 && f.reg == 2 && f.flip == 1);
    CHECK_NEAR(f.lr, 0.1, 1e-7);
    CHECK(f.steps.count == 2 && f.steps.v[0] == 3 && f.steps.v[1] == 9);
    CHECK(strcmp(f.weights, "w.st") == 0);
}

static void cli_rejects_bad_values_with_one_line(void) {
    char *cases[][3] = {{"prog", "--iters", "0"},     {"prog", "--reg", "zz"},       {"prog", "--lr", "nan"},
                        {"prog", "--nope", "1"},      {"prog", "--lr-step", "3,,4"}, {"prog", "--lr-step", "3,"},
                        {"prog", "stray", "1"},       {"prog", "--iters", "12x"},    {"prog", "--weights", ""},
                        {"prog", "--lr", "1e999"}};
    const char *named[] = {"--iters", "--reg", "--lr", "--nope", "--lr-step", "--lr-step", "stray", "--iters", "--weights", "--lr"};
    int i;
    for (i = 0; i < 10; i++) {
        opts_fixture f;
        char msg[256] = "";
        memset(&f, 0, sizeof f);
        CHECK_MSG(parse(&f, 3, cases[i], msg) == -1, "case %d accepted", i);
        CHECK_MSG(strstr(msg, named[i]) != NULL && !strchr(msg, '\n'), "case %d: '%s'", i, msg);
    }
}

static void cli_needs_a_value_and_flags_take_none(void) {
    opts_fixture f;
    char msg[256];
    char *a[] = {"prog", "--lr"}, *b[] = {"prog", "--flip=1"};
    memset(&f, 0, sizeof f);
    CHECK(parse(&f, 2, a, msg) == -1 && strstr(msg, "needs a value"));
    CHECK(parse(&f, 2, b, msg) == -1 && strstr(msg, "takes no value"));
}

static void svg_plot_is_written_whole(void) {
    float x[3] = {0, 1, 2}, y[3] = {1, NAN, 0.5f};
    svg_series s = {"J", x, y, 3};
    const char *path = "build/test_plot.svg";
    char buf[8192];
    size_t n;
    FILE *f;
    CHECK(svg_line_plot(path, "loss <&>", "iteration", "J", &s, 1) == 0);
    f = fopen(path, "rb");
    CHECK(f != NULL);
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    CHECK(strstr(buf, "<svg") == buf && strstr(buf, "</svg>\n") != NULL);
    CHECK(strstr(buf, "loss &lt;&amp;&gt;") != NULL);
    CHECK(svg_line_plot("build/no/such/dir/plot.svg", "t", "x", "y", &s, 1) == -1);
    remove(path);
}

void suite_cli(void) {
    RUN(cli_parses_every_kind);
    RUN(cli_rejects_bad_values_with_one_line);
    RUN(cli_needs_a_value_and_flags_take_none);
    RUN(svg_plot_is_written_whole);
}
