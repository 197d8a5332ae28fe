/* cli.h - a table-driven command-line parser for the example programs.
   Every option is a row: name, kind, where the value goes, its range or choices, its help.
   Parsing never exits or prints: it returns 0, or -1 with a one-line message naming the option
   and the value, so the programs (and the fuzzer) decide what to do with it.

   #define CLI_IMPLEMENTATION in one file.
*/
#ifndef DTNH_CLI_H
#define DTNH_CLI_H

#include <stdio.h>

typedef enum cli_kind { CLI_FLAG, CLI_INT, CLI_FLOAT, CLI_STRING, CLI_CHOICE, CLI_INT_LIST } cli_kind;

#define CLI_MAX_LIST 64 /* enough for a class subset of a 64-class data set */

typedef struct cli_option {
    const char *name;    /* without the leading "--" */
    cli_kind kind;
    void *dest;          /* int* (FLAG, INT, CHOICE: index into choices), float*, const char**,
                            cli_int_list* */
    double min, max;     /* inclusive range for INT, FLOAT and list items */
    const char *choices; /* CHOICE: "a|b|c" */
    const char *help;    /* one line; the default is printed from dest */
} cli_option;

typedef struct cli_int_list {
    int count;
    int v[CLI_MAX_LIST];
} cli_int_list;

/* Parses argv[1..argc-1]; "--name value" and "--name=value" both work. *help is set by --help.
   Positional arguments are refused. Returns 0, or -1 with msg filled. */
int cli_parse(const cli_option *opts, int nopts, int argc, char **argv, int *help, char *msg, size_t msgsize);
/* Prints "--name VALUE  help (default: ...)" for each option, with the current values. */
void cli_print_help(FILE *out, const char *usage, const cli_option *opts, int nopts);

#endif

#ifdef CLI_IMPLEMENTATION
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const cli_option *cli__find(const cli_option *opts, int n, const char *name, size_t len) {
    int i;
    for (i = 0; i < n; i++)
        if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0) return &opts[i];
    return NULL;
}

/* The index of value among "a|b|c", or -1. */
static int cli__choice(const char *choices, const char *value) {
    const char *p = choices;
    size_t len = strlen(value);
    int i = 0;
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == len && strncmp(p, value, n) == 0) return i;
        if (!bar) break;
        p = bar + 1;
        i++;
    }
    return -1;
}

static int cli__int(const char *s, double lo, double hi, int *out) {
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

/* "3,7,11": every item an integer in range, no empty items, at most CLI_MAX_LIST. */
static int cli__int_list(const char *value, double lo, double hi, cli_int_list *l) {
    const char *p = value;
    l->count = 0;
    for (;;) {
        char item[32];
        size_t n = strcspn(p, ",");
        if (n == 0 || n >= sizeof item || l->count == CLI_MAX_LIST) return -1;
        memcpy(item, p, n);
        item[n] = 0;
        if (cli__int(item, lo, hi, &l->v[l->count])) return -1;
        l->count++;
        if (!p[n]) return 0;
        p += n + 1;
    }
}

static int cli__set(const cli_option *o, const char *value, char *msg, size_t msgsize) {
    switch (o->kind) {
    case CLI_INT:
        if (cli__int(value, o->min, o->max, (int *)o->dest) == 0) return 0;
        snprintf(msg, msgsize, "--%s: '%s' is not an integer in [%g, %g]", o->name, value, o->min, o->max);
        return -1;
    case CLI_FLOAT: {
        char *end;
        double v;
        errno = 0;
        v = strtod(value, &end);
        if (!errno && end != value && !*end && v >= o->min && v <= o->max) {
            *(float *)o->dest = (float)v;
            return 0;
        }
        snprintf(msg, msgsize, "--%s: '%s' is not a number in [%g, %g]", o->name, value, o->min, o->max);
        return -1;
    }
    case CLI_STRING:
        if (!*value) {
            snprintf(msg, msgsize, "--%s: empty value", o->name);
            return -1;
        }
        *(const char **)o->dest = value;
        return 0;
    case CLI_CHOICE: {
        int i = cli__choice(o->choices, value);
        if (i >= 0) {
            *(int *)o->dest = i;
            return 0;
        }
        snprintf(msg, msgsize, "--%s: '%s' is not one of %s", o->name, value, o->choices);
        return -1;
    }
    case CLI_INT_LIST:
        if (cli__int_list(value, o->min, o->max, (cli_int_list *)o->dest) == 0) return 0;
        snprintf(msg, msgsize, "--%s: '%s' is not a comma-separated list of at most %d integers in [%g, %g]",
                 o->name, value, CLI_MAX_LIST, o->min, o->max);
        return -1;
    case CLI_FLAG: break;
    }
    return 0;
}

int cli_parse(const cli_option *opts, int nopts, int argc, char **argv, int *help, char *msg, size_t msgsize) {
    int i;
    *help = 0;
    for (i = 1; i < argc; i++) {
        const char *arg = argv[i], *eq, *value;
        const cli_option *o;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            *help = 1;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0) {
            snprintf(msg, msgsize, "unexpected argument '%s' (options start with --; see --help)", arg);
            return -1;
        }
        arg += 2;
        eq = strchr(arg, '=');
        o = cli__find(opts, nopts, arg, eq ? (size_t)(eq - arg) : strlen(arg));
        if (!o) {
            snprintf(msg, msgsize, "unknown option '%s' (see --help)", argv[i]);
            return -1;
        }
        if (o->kind == CLI_FLAG) {
            if (eq) {
                snprintf(msg, msgsize, "--%s takes no value", o->name);
                return -1;
            }
            *(int *)o->dest = 1;
            continue;
        }
        if (eq) value = eq + 1;
        else if (i + 1 < argc) value = argv[++i];
        else {
            snprintf(msg, msgsize, "--%s needs a value", o->name);
            return -1;
        }
        if (cli__set(o, value, msg, msgsize)) return -1;
    }
    return 0;
}

static void cli__print_default(FILE *out, const cli_option *o) {
    switch (o->kind) {
    case CLI_FLAG: fprintf(out, "%s", *(int *)o->dest ? "on" : "off"); break;
    case CLI_INT: fprintf(out, "%d", *(int *)o->dest); break;
    case CLI_FLOAT: fprintf(out, "%g", *(float *)o->dest); break;
    case CLI_STRING: fprintf(out, "%s", *(const char **)o->dest ? *(const char **)o->dest : "none"); break;
    case CLI_CHOICE: {
        const char *p = o->choices;
        int k = *(int *)o->dest;
        while (k-- > 0 && strchr(p, '|')) p = strchr(p, '|') + 1;
        fprintf(out, "%.*s", (int)strcspn(p, "|"), p);
        break;
    }
    case CLI_INT_LIST: {
        const cli_int_list *l = (const cli_int_list *)o->dest;
        int k;
        if (!l->count) fprintf(out, "none");
        for (k = 0; k < l->count; k++) fprintf(out, "%s%d", k ? "," : "", l->v[k]);
        break;
    }
    }
}

void cli_print_help(FILE *out, const char *usage, const cli_option *opts, int nopts) {
    int i;
    fprintf(out, "%s\n\noptions:\n", usage);
    for (i = 0; i < nopts; i++) {
        const cli_option *o = &opts[i];
        const char *meta = o->kind == CLI_FLAG ? "" : o->kind == CLI_CHOICE ? o->choices
                         : o->kind == CLI_INT || o->kind == CLI_INT_LIST ? "N" : o->kind == CLI_FLOAT ? "X" : "PATH";
        fprintf(out, "  --%s", o->name);
        if (o->kind == CLI_CHOICE) fprintf(out, " {%s}", meta);
        else if (*meta) fprintf(out, " %s", meta);
        fprintf(out, "\n      %s (default: ", o->help);
        cli__print_default(out, o);
        fprintf(out, ")\n");
    }
    fprintf(out, "  --help\n      print this and exit\n");
}
#endif
