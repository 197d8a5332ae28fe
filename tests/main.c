/* The test runner: `tests/run [filter]` runs every test whose name contains filter.
   The last line is "N passed, M failed"; the exit status is non-zero on any failure. */
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

#define SUITE(name) void suite_##name(void);
#include "suites.h"
#undef SUITE

int main(int argc, char **argv) {
    t_filter = argc > 1 ? argv[1] : NULL;
#define SUITE(name) suite_##name();
#include "suites.h"
#undef SUITE
    printf("%d passed, %d failed\n", t_passed, t_failed);
    return t_failed ? 1 : 0;
}
