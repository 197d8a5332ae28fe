/* dtnh-plot: compares runs from their dtnh-train logs: prints a table (test accuracy and loss,
   final J, how often the gradients conflicted, mean cos(g_J, g_Omega)) and draws the empirical
   and test loss of every run (the paper's Fig. 3), Angles 1-4 of each run (Figs. 4-5) and the
   test accuracies as a bar chart.

   dtnh-plot --logs a.csv,b.csv --names "L2-SP,DTNH(L2-SP)" --out build/demo */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define CLI_IMPLEMENTATION
#include "cli.h"
#define SVG_IMPLEMENTATION
#include "svg.h"
#define RUNLOG_IMPLEMENTATION
#include "runlog.h"

#define PROG "dtnh-plot"
#define MAX_RUNS 8

typedef struct plot_opts {
    const char *logs, *names, *out, *title;
} plot_opts;

static int fail(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s: ", PROG);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 1;
}

/* Splits s at commas into at most max parts (s is copied into buf). */
static int split(const char *s, char *buf, size_t size, char **parts, int max) {
    int n = 0;
    char *p = buf;
    snprintf(buf, size, "%s", s);
    while (n < max) {
        parts[n++] = p;
        p = strchr(p, ',');
        if (!p) return n;
        *p++ = 0;
    }
    return -1;
}

/* "DTNH(L2-SP)" -> "dtnh-l2-sp": a file-name part. */
static void slug(const char *name, char *out, size_t size) {
    size_t n = 0;
    int dash = 0;
    for (; *name && n + 2 < size; name++) {
        char c = *name;
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
            if (dash && n) out[n++] = '-';
            out[n++] = c;
            dash = 0;
        } else dash = 1;
    }
    out[n] = 0;
}

static void print_table(const runlog *runs, char *const *names, int n) {
    int i;
    printf("%-24s %9s %9s %9s %11s %9s %9s\n", "method", "test acc", "test loss", "final J", "conflicting",
           "projected", "mean cos");
    for (i = 0; i < n; i++) {
        runlog_summary s;
        runlog_summarize(&runs[i], &s);
        printf("%-24s %8.2f%% %9.4f %9.4f %10.1f%% %8.1f%% %9.4f\n", names[i], 100 * s.test_acc, s.test_loss,
               s.final_j, 100 * s.conflict_rate, 100 * s.proj_rate, s.mean_cos);
    }
}

static int draw(const plot_opts *o, const runlog *runs, char *const *names, int n) {
    char path[1200], name[96];
    float acc[MAX_RUNS];
    int i;
    snprintf(path, sizeof path, "%s/loss.svg", o->out);
    if (runlog_plot_loss(path, o->title, runs, (const char *const *)names, n)) return fail("cannot write %s", path);
    printf("plot: %s\n", path);
    for (i = 0; i < n; i++) {
        runlog_summary s;
        runlog_summarize(&runs[i], &s);
        acc[i] = (float)(100 * s.test_acc);
        if (runs[i].rows && runs[i].v[RL_ANGLE1] == RL_NONE) continue; /* no regularizer: no angles */
        slug(names[i], name, sizeof name);
        snprintf(path, sizeof path, "%s/angles-%s.svg", o->out, name);
        if (runlog_plot_angles(path, names[i], &runs[i])) return fail("cannot write %s", path);
        printf("plot: %s\n", path);
    }
    snprintf(path, sizeof path, "%s/accuracy.svg", o->out);
    if (svg_bar_chart(path, o->title, "test accuracy (%)", (const char *const *)names, acc, NULL, n))
        return fail("cannot write %s", path);
    printf("plot: %s\n", path);
    return 0;
}

int main(int argc, char **argv) {
    static plot_opts o;
    static char logbuf[4096], namebuf[4096];
    cli_option opts[4] = {
        {"logs", CLI_STRING, NULL, 0, 0, NULL, "comma-separated dtnh-train --log files (required)"},
        {"names", CLI_STRING, NULL, 0, 0, NULL, "comma-separated names, one per log (default: the file names)"},
        {"out", CLI_STRING, NULL, 0, 0, NULL, "folder for loss.svg, angles-<name>.svg and accuracy.svg; none: the table only"},
        {"title", CLI_STRING, NULL, 0, 0, NULL, "title of the plots"},
    };
    runlog runs[MAX_RUNS] = {{NULL, 0, 0}};
    char *logs[MAX_RUNS], *names[MAX_RUNS], msg[512];
    int help, n, i, status = 0;
    o.title = "fine-tuning";
    opts[0].dest = &o.logs, opts[1].dest = &o.names, opts[2].dest = &o.out, opts[3].dest = &o.title;
    if (cli_parse(opts, 4, argc, argv, &help, msg, sizeof msg)) return fail("%s", msg);
    if (help) {
        cli_print_help(stdout, "usage: dtnh-plot --logs a.csv,b.csv [--names A,B] [--out DIR]\n"
                               "Compares dtnh-train runs: a table and SVG plots.", opts, 4);
        return 0;
    }
    if (!o.logs) return fail("--logs is required (see --help)");
    if ((n = split(o.logs, logbuf, sizeof logbuf, logs, MAX_RUNS)) < 0) return fail("--logs: more than %d logs", MAX_RUNS);
    if (o.names) {
        if (split(o.names, namebuf, sizeof namebuf, names, MAX_RUNS) != n)
            return fail("--names '%s': give one name per log (%s)", o.names, o.logs);
    } else {
        for (i = 0; i < n; i++) names[i] = logs[i];
    }
    for (i = 0; i < n; i++) {
        if (runlog_read_csv(&runs[i], logs[i], msg, sizeof msg)) {
            while (i-- > 0) runlog_free(&runs[i]);
            return fail("%s", msg);
        }
    }
    print_table(runs, names, n);
    if (o.out) status = draw(&o, runs, names, n);
    for (i = 0; i < n; i++) runlog_free(&runs[i]);
    return status;
}
