/* runlog.h - the record of one training run, a row per iteration: written and read back as
   CSV, summarised, and drawn as the paper's plots (Fig. 3: empirical and test loss against
   iterations; Figs. 4-5: Angles 1-4). Shared by dtnh-train, which writes it, and dtnh-plot,
   which compares runs.

   #define RUNLOG_IMPLEMENTATION in one file (after SVG_IMPLEMENTATION: it draws with svg.h).
*/
#ifndef DTNH_RUNLOG_H
#define DTNH_RUNLOG_H

#include <stddef.h>

/* The columns, in the CSV's order. */
#define RUNLOG_COLUMNS(X)                                                                      \
    X(RL_ITER, "iter") X(RL_J, "J") X(RL_OMEGA, "omega") X(RL_COS, "cos_gj_gomega")            \
    X(RL_PROJECTED, "projected") X(RL_NORM_GJ, "norm_gj") X(RL_NORM_GOMEGA, "norm_gomega")     \
    X(RL_ANGLE1, "angle1_d_gj") X(RL_ANGLE2, "angle2_d_gomega") X(RL_ANGLE3, "angle3_sum_gj")  \
    X(RL_ANGLE4, "angle4_sum_gomega") X(RL_TRAIN_ACC, "train_acc") X(RL_LR, "lr")              \
    X(RL_TEST_LOSS, "test_loss") X(RL_TEST_ACC, "test_acc") X(RL_VAL_LOSS, "val_loss")         \
    X(RL_VAL_ACC, "val_acc") X(RL_SECONDS, "seconds")

enum {
#define RUNLOG__ENUM(id, name) id,
    RUNLOG_COLUMNS(RUNLOG__ENUM)
#undef RUNLOG__ENUM
    RL_COUNT
};

/* A value that was not measured at that iteration (an empty CSV field), as opposed to a NaN
   that was (a diverged run: "nan"). */
#define RL_NONE (-1e300)

typedef struct runlog {
    double *v; /* rows x RL_COUNT */
    int rows, capacity;
} runlog;

/* What a run came to: the last evaluation, and means over the run. NaN where unknown. */
typedef struct runlog_summary {
    double test_acc, test_loss, val_acc, val_loss; /* at the last row that has them */
    double final_j;       /* mean J of the last 10 iterations */
    double final_omega;   /* mean Omega of the last 10 iterations */
    double conflict_rate; /* share of the iterations with cos(g_J, g_Omega) < 0 */
    double proj_rate;     /* mean of `projected` over the iterations that report it */
    double mean_cos;      /* mean cos(g_J, g_Omega) over those iterations */
    int iters;
} runlog_summary;

const char *runlog_column_name(int column);
/* 0, or -1 when malloc fails. */
int runlog_init(runlog *rl, int capacity);
void runlog_free(runlog *rl);
/* A new row with every value RL_NONE, or NULL when full. */
double *runlog_add(runlog *rl);
/* Whole or not at all: written to "<path>.tmp" then renamed. 0, or -1 on an I/O error. */
int runlog_write_csv(const runlog *rl, const char *path);
/* Reads a CSV that runlog_write_csv wrote (columns found by name, unknown ones ignored, a
   missing one left RL_NONE). 0, or -1 with a one-line message in msg. */
int runlog_read_csv(runlog *rl, const char *path, char *msg, size_t msgsize);
void runlog_summarize(const runlog *rl, runlog_summary *s);
/* Fig. 3: J (a 10-iteration moving mean) and the test loss of each run against iterations. */
int runlog_plot_loss(const char *path, const char *title, const runlog *runs, const char *const *names,
                     int count);
/* Figs. 4-5: Angles 1-4 of one run against iterations (a 10-iteration moving mean). */
int runlog_plot_angles(const char *path, const char *title, const runlog *rl);

#endif

#ifdef RUNLOG_IMPLEMENTATION
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const runlog__names[RL_COUNT] = {
#define RUNLOG__NAME(id, name) name,
    RUNLOG_COLUMNS(RUNLOG__NAME)
#undef RUNLOG__NAME
};

const char *runlog_column_name(int column) {
    return column >= 0 && column < RL_COUNT ? runlog__names[column] : "?";
}

int runlog_init(runlog *rl, int capacity) {
    rl->rows = 0;
    rl->capacity = capacity > 0 ? capacity : 1;
    rl->v = (double *)malloc((size_t)rl->capacity * RL_COUNT * sizeof(double));
    return rl->v ? 0 : -1;
}

void runlog_free(runlog *rl) {
    free(rl->v);
    rl->v = NULL;
    rl->rows = rl->capacity = 0;
}

/* Rows grow by doubling when read from a file of unknown length. */
static int runlog__grow(runlog *rl) {
    double *v;
    if (rl->rows < rl->capacity) return 0;
    v = (double *)realloc(rl->v, (size_t)rl->capacity * 2 * RL_COUNT * sizeof(double));
    if (!v) return -1;
    rl->v = v;
    rl->capacity *= 2;
    return 0;
}

double *runlog_add(runlog *rl) {
    double *row;
    int c;
    if (rl->rows >= rl->capacity) return NULL;
    row = rl->v + (size_t)rl->rows++ * RL_COUNT;
    for (c = 0; c < RL_COUNT; c++) row[c] = RL_NONE;
    return row;
}

int runlog_write_csv(const runlog *rl, const char *path) {
    char tmp[1100];
    FILE *f;
    int r, c, bad;
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (!(f = fopen(tmp, "w"))) return -1;
    for (c = 0; c < RL_COUNT; c++) fprintf(f, "%s%s", c ? "," : "", runlog__names[c]);
    fputc('\n', f);
    for (r = 0; r < rl->rows; r++) {
        const double *row = rl->v + (size_t)r * RL_COUNT;
        for (c = 0; c < RL_COUNT; c++) {
            if (c) fputc(',', f);
            if (row[c] == RL_NONE) continue;
            if (row[c] != row[c]) fputs("nan", f);
            else fprintf(f, "%.7g", row[c]);
        }
        fputc('\n', f);
    }
    bad = ferror(f);
    if (fclose(f) != 0 || bad || rename(tmp, path) != 0) {
        remove(tmp);
        return -1;
    }
    return 0;
}

/* Splits line (changed in place) at commas into at most max fields. */
static int runlog__split(char *line, char **field, int max) {
    int n = 0;
    char *p = line;
    line[strcspn(line, "\r\n")] = 0;
    while (n < max) {
        field[n++] = p;
        p = strchr(p, ',');
        if (!p) break;
        *p++ = 0;
    }
    return n;
}

static int runlog__header(char *line, int *map, int max, int *nfields) {
    char *field[64];
    int n = runlog__split(line, field, 64), i, c, found = 0;
    for (i = 0; i < n && i < max; i++) {
        map[i] = -1;
        for (c = 0; c < RL_COUNT; c++)
            if (strcmp(field[i], runlog__names[c]) == 0) map[i] = c, found++;
    }
    *nfields = n;
    return found;
}

static int runlog__value(const char *s, double *v) {
    char *end;
    if (!*s) {
        *v = RL_NONE;
        return 0;
    }
    *v = strtod(s, &end);
    return *end ? -1 : 0;
}

static int runlog__read(runlog *rl, FILE *f, const char *path, char *msg, size_t msgsize);

int runlog_read_csv(runlog *rl, const char *path, char *msg, size_t msgsize) {
    FILE *f = fopen(path, "r");
    int r;
    rl->v = NULL;
    rl->rows = rl->capacity = 0;
    if (!f) {
        snprintf(msg, msgsize, "%s: cannot open", path);
        return -1;
    }
    r = runlog__read(rl, f, path, msg, msgsize);
    fclose(f);
    if (r) runlog_free(rl);
    return r;
}

static int runlog__read(runlog *rl, FILE *f, const char *path, char *msg, size_t msgsize) {
    char line[4096];
    int map[64], nfields, lineno = 1;
    if (runlog_init(rl, 256) || !fgets(line, sizeof line, f) || runlog__header(line, map, 64, &nfields) == 0 ||
        map[0] != RL_ITER) {
        snprintf(msg, msgsize, "%s: not a dtnh-train log (its first line should name the columns, iter first)", path);
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        char *field[64];
        double *row;
        int n, i;
        lineno++;
        n = runlog__split(line, field, 64);
        if (runlog__grow(rl) || !(row = runlog_add(rl))) {
            snprintf(msg, msgsize, "%s: out of memory at line %d", path, lineno);
            return -1;
        }
        for (i = 0; i < n && i < nfields; i++) {
            double v;
            if (map[i] < 0) continue;
            if (runlog__value(field[i], &v)) {
                snprintf(msg, msgsize, "%s:%d: column %s: '%s' is not a number", path, lineno,
                         runlog__names[map[i]], field[i]);
                return -1;
            }
            row[map[i]] = v;
        }
    }
    return 0;
}

static double runlog__get(const runlog *rl, int row, int col) { return rl->v[(size_t)row * RL_COUNT + col]; }

/* Mean of a column over its measured values in rows [from, rl->rows); NaN when none. */
static double runlog__mean(const runlog *rl, int col, int from) {
    double sum = 0;
    int r, n = 0;
    for (r = from < 0 ? 0 : from; r < rl->rows; r++) {
        double v = runlog__get(rl, r, col);
        if (v == RL_NONE) continue;
        sum += v;
        n++;
    }
    return n ? sum / n : NAN;
}

/* Share of the measured values of a column below zero; NaN when none. */
static double runlog__negative(const runlog *rl, int col) {
    int r, n = 0, neg = 0;
    for (r = 0; r < rl->rows; r++) {
        double v = runlog__get(rl, r, col);
        if (v == RL_NONE) continue;
        n++;
        neg += v < 0;
    }
    return n ? (double)neg / n : NAN;
}

static double runlog__last(const runlog *rl, int col) {
    int r;
    for (r = rl->rows - 1; r >= 0; r--)
        if (runlog__get(rl, r, col) != RL_NONE) return runlog__get(rl, r, col);
    return NAN;
}

void runlog_summarize(const runlog *rl, runlog_summary *s) {
    s->test_acc = runlog__last(rl, RL_TEST_ACC);
    s->test_loss = runlog__last(rl, RL_TEST_LOSS);
    s->val_acc = runlog__last(rl, RL_VAL_ACC);
    s->val_loss = runlog__last(rl, RL_VAL_LOSS);
    s->final_j = runlog__mean(rl, RL_J, rl->rows - 10);
    s->final_omega = runlog__mean(rl, RL_OMEGA, rl->rows - 10);
    s->conflict_rate = runlog__negative(rl, RL_COS);
    s->proj_rate = runlog__mean(rl, RL_PROJECTED, 0);
    s->mean_cos = runlog__mean(rl, RL_COS, 0);
    s->iters = rl->rows;
}

/* ---- plots --------------------------------------------------------------------------------- */

/* x = iteration and y = column (a moving mean over `window` rows when window > 1) of the rows
   that measured it, into malloc'd arrays; returns the point count, -1 when malloc fails. */
static int runlog__series(const runlog *rl, int col, int window, float **x, float **y) {
    int r, n = 0;
    *x = (float *)malloc((size_t)(rl->rows + 1) * sizeof(float));
    *y = (float *)malloc((size_t)(rl->rows + 1) * sizeof(float));
    if (!*x || !*y) return -1;
    for (r = 0; r < rl->rows; r++) {
        double v = runlog__get(rl, r, col), sum = 0;
        int k, m = 0;
        if (v == RL_NONE) continue;
        for (k = r; k >= 0 && k > r - window; k--) {
            double u = runlog__get(rl, k, col);
            if (u != RL_NONE) sum += u, m++;
        }
        (*x)[n] = (float)runlog__get(rl, r, RL_ITER);
        (*y)[n++] = window > 1 ? (float)(sum / m) : (float)v;
    }
    return n;
}

static int runlog__plot(const char *path, const char *title, const char *ylabel, svg_series *s, float **buf,
                        int count, int ok) {
    int i, r = ok ? svg_line_plot(path, title, "iteration", ylabel, s, count) : -1;
    for (i = 0; i < 2 * count; i++) free(buf[i]);
    return r;
}

int runlog_plot_loss(const char *path, const char *title, const runlog *runs, const char *const *names,
                     int count) {
    static char label[16][96];
    svg_series s[16];
    float *buf[32];
    int i, n = 0, ok = 1;
    if (count > 8) count = 8;
    for (i = 0; i < count; i++) {
        snprintf(label[n], sizeof label[n], "%s: J", names[i]);
        s[n].label = label[n];
        s[n].n = runlog__series(&runs[i], RL_J, 10, &buf[2 * n], &buf[2 * n + 1]);
        s[n].x = buf[2 * n], s[n].y = buf[2 * n + 1];
        ok &= s[n++].n >= 0;
        snprintf(label[n], sizeof label[n], "%s: test", names[i]);
        s[n].label = label[n];
        s[n].n = runlog__series(&runs[i], RL_TEST_LOSS, 1, &buf[2 * n], &buf[2 * n + 1]);
        s[n].x = buf[2 * n], s[n].y = buf[2 * n + 1];
        ok &= s[n++].n >= 0;
    }
    return runlog__plot(path, title, "loss (J: mean of 10 iterations)", s, buf, n, ok);
}

int runlog_plot_angles(const char *path, const char *title, const runlog *rl) {
    static const char *const labels[4] = {"1: (d, g_J)", "2: (d, g_Omega)", "3: (g_J+g_Om, g_J)",
                                          "4: (g_J+g_Om, g_Om)"};
    svg_series s[4];
    float *buf[8];
    int i, ok = 1;
    for (i = 0; i < 4; i++) {
        s[i].label = labels[i];
        s[i].n = runlog__series(rl, RL_ANGLE1 + i, 10, &buf[2 * i], &buf[2 * i + 1]);
        s[i].x = buf[2 * i], s[i].y = buf[2 * i + 1];
        ok &= s[i].n >= 0;
    }
    return runlog__plot(path, title, "degrees (mean of 10 iterations)", s, buf, 4, ok);
}
#endif
