/* Runs a libFuzzer target without libFuzzer: every file named on the command line (or found in
   a directory named there) is fed once to LLVMFuzzerTestOneInput. Builds with any compiler,
   so the seed corpora and the crashers found run under gcc, valgrind and qemu too:
      gcc -O1 -g tests/fuzz/fuzz_idx.c tests/fuzz/replay.c -lm -o replay_idx
      ./replay_idx tests/fuzz/corpus/idx                                                    */
#define _DEFAULT_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path) {
    FILE *fp = fopen(path, "rb");
    long size;
    unsigned char *buf;
    if (!fp || fseek(fp, 0, SEEK_END) != 0 || (size = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        fprintf(stderr, "replay: cannot read '%s'\n", path);
        if (fp) fclose(fp);
        return 1;
    }
    /* An exact-size copy, so a read past the input's end shows under ASan or valgrind. */
    buf = (unsigned char *)malloc(size ? (size_t)size : 1);
    if (!buf || fread(buf, 1, (size_t)size, fp) != (size_t)size) {
        fprintf(stderr, "replay: cannot read '%s'\n", path);
        fclose(fp);
        free(buf);
        return 1;
    }
    fclose(fp);
    LLVMFuzzerTestOneInput(buf, (size_t)size);
    free(buf);
    return 0;
}

static int replay_path(const char *path, int *count) {
    struct stat st;
    DIR *d;
    struct dirent *e;
    int bad = 0;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "replay: no such file '%s'\n", path);
        return 1;
    }
    if (!S_ISDIR(st.st_mode)) {
        ++*count;
        return replay_file(path);
    }
    if (!(d = opendir(path))) return 1;
    while ((e = readdir(d)) != NULL) {
        char sub[4096];
        if (e->d_name[0] == '.') continue;
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        bad |= replay_path(sub, count);
    }
    closedir(d);
    return bad;
}

int main(int argc, char **argv) {
    int i, bad = 0, count = 0;
    for (i = 1; i < argc; i++) bad |= replay_path(argv[i], &count);
    printf("replayed %d inputs\n", count);
    return bad;
}
