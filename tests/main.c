/* The test runner: `tests/run [filter]` runs every test whose name contains filter.
   The last line is "N passed, M failed"; the exit status is non-zero on any failure. */
#include <stdlib.h>
#include <string.h>
#include "test.h"

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
