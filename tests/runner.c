/* The runner's parts that every test program shares: the counters, failure reports and
   fixture paths (tests/main.c runs the suites with them, tests/conv_sweep.c its sweep). */
#include <stdlib.h>
#include <string.h>
#include "test.h"

int t_passed, t_failed, t_current_failed;
const char *t_filter;

void t_report(const char *file, int line, const char *what) {
    printf("    %s:%d: %s\n", file, line, what);
    t_current_failed = 1;
}

void t_run(const char *name, void (*fn)(void)) {
    if (t_filter && !strstr(name, t_filter)) return;
    t_current_failed = 0;
    fn();
    if (t_current_failed) {
        t_failed++;
        printf("FAIL %s\n", name);
    } else {
        t_passed++;
        if (getenv("DTNH_TEST_VERBOSE")) printf("ok   %s\n", name);
    }
    fflush(stdout);
}

const char *t_fixture(const char *name) {
    static char path[1024];
    const char *dir = getenv("DTNH_FIXTURES");
    snprintf(path, sizeof path, "%s/%s", dir ? dir : "tests/fixtures", name);
    return path;
}
