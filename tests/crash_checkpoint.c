/* Crash test of the checkpoints: a child process (this program again, run with --child) trains
   the tiny run of tests/rel_trainer.h and saves a checkpoint after every step, so it spends most
   of its time saving; the parent kills it with SIGKILL after a random number of microseconds,
   then checks that the last checkpoint loads, holds exactly the state an uninterrupted run has
   at that iteration, and resumes (one more step gives the uninterrupted run's next state). The
   next child resumes from it. The child is a fresh exec, not just a fork, so an OpenMP runtime
   started in the parent cannot hang it. POSIX.

      crash_checkpoint DIR [ROUNDS] [SEED]      (make check-crash)

   Prints one line per round, then "N passed, M failed" (a round passes when its checkpoint, if
   any was written yet, checks out); exit status 1 on any failure, or when fewer than half the
   rounds found a checkpoint or no kill landed during a save (the test would prove nothing). */
#define _POSIX_C_SOURCE 200809L
#define DTNH_IMPLEMENTATION
#include "../dtnh.h"
#include "../dtnh_nn.h"
#include "rel_trainer.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define CRASH_MAX_STEPS 1500
#define CRASH_TRAIN_SEED 7

static uint64_t crash_reference[CRASH_MAX_STEPS + 1]; /* the state's hash after k steps */
static rel_trainer crash_t;

/* The uninterrupted run, step by step. */
static int crash_make_reference(int steps) {
    dtnh_error err;
    int k;
    if (!rel_trainer_open(&crash_t, CRASH_TRAIN_SEED)) return 0;
    crash_reference[0] = rel_trainer_hash(&crash_t);
    for (k = 1; k <= steps; k++) {
        if (rel_trainer_step(&crash_t, &err)) {
            fprintf(stderr, "reference step %d: %s\n", k, err.msg);
            return 0;
        }
        crash_reference[k] = rel_trainer_hash(&crash_t);
    }
    rel_trainer_close(&crash_t);
    return 1;
}

static int crash_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* The child: resume from path when it exists, tell the parent (a byte on ready_fd), then step
   and save until killed. */
static void crash_child(const char *path, int ready_fd) {
    dtnh_checkpoint c;
    dtnh_error err;
    if (!rel_trainer_open(&crash_t, CRASH_TRAIN_SEED)) _exit(3);
    rel_trainer_checkpoint(&crash_t, &c);
    if (crash_exists(path)) {
        if (dtnh_checkpoint_load_file(&c, path, &crash_t.scratch, &err)) _exit(4);
        crash_t.iteration = c.iteration;
    }
    if (write(ready_fd, "r", 1) != 1) _exit(8);
    close(ready_fd);
    while (crash_t.iteration < CRASH_MAX_STEPS) {
        if (rel_trainer_step(&crash_t, &err)) _exit(5);
        rel_trainer_checkpoint(&crash_t, &c);
        if (dtnh_checkpoint_save(&c, path, &crash_t.scratch, &err)) _exit(6);
    }
    _exit(0);
}

/* Loads the checkpoint into a run of another seed; checks it against the reference at its
   iteration and one step further. *iteration gets it. */
static int crash_verify(const char *path, long *iteration) {
    static rel_trainer t;
    dtnh_checkpoint c;
    dtnh_error err;
    int ok = 0;
    if (!rel_trainer_open(&t, 12345)) return 0;
    rel_trainer_checkpoint(&t, &c);
    if (dtnh_checkpoint_load_file(&c, path, &t.scratch, &err)) {
        printf("  load failed: %s\n", err.msg);
    } else if (c.iteration < 1 || c.iteration >= CRASH_MAX_STEPS) {
        printf("  iteration %ld out of range\n", c.iteration);
    } else {
        t.iteration = *iteration = c.iteration;
        if (rel_trainer_hash(&t) != crash_reference[c.iteration])
            printf("  state at iteration %ld differs from the uninterrupted run\n", c.iteration);
        else if (rel_trainer_step(&t, &err))
            printf("  resuming failed: %s\n", err.msg);
        else if (rel_trainer_hash(&t) != crash_reference[c.iteration + 1])
            printf("  the step after iteration %ld differs from the uninterrupted run\n", c.iteration);
        else
            ok = 1;
    }
    rel_trainer_close(&t);
    return ok;
}

/* Sleeps between 0 and max_us microseconds (drawn from r). */
static void crash_sleep(dtnh_rng *r, uint32_t max_us) {
    uint32_t us = dtnh_rng_below(r, max_us);
    struct timespec ts;
    ts.tv_sec = us / 1000000;
    ts.tv_nsec = (long)(us % 1000000) * 1000;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Microseconds one save takes here, measured on a fresh run (a round waits up to a few). */
static uint32_t crash_save_us(const char *path) {
    static rel_trainer t;
    dtnh_checkpoint c;
    struct timespec a, b;
    double us;
    int k;
    if (!rel_trainer_open(&t, 1)) return 2000;
    rel_trainer_checkpoint(&t, &c);
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (k = 0; k < 5; k++) dtnh_checkpoint_save(&c, path, &t.scratch, NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    rel_trainer_close(&t);
    remove(path);
    us = ((double)(b.tv_sec - a.tv_sec) * 1e6 + (double)(b.tv_nsec - a.tv_nsec) / 1e3) / 5;
    return us < 50 ? 50 : (uint32_t)us;
}

/* Starts the child (this program with --child path fd) and waits until it has loaded and is
   about to train; -1 if it could not start. */
static pid_t crash_spawn(const char *self, const char *path) {
    int fds[2];
    char fd_text[16], byte;
    pid_t pid;
    if (pipe(fds) != 0) return -1;
    pid = fork();
    if (pid == 0) {
        char *args[5];
        close(fds[0]);
        snprintf(fd_text, sizeof fd_text, "%d", fds[1]);
        args[0] = (char *)self;
        args[1] = (char *)"--child";
        args[2] = (char *)path;
        args[3] = fd_text;
        args[4] = NULL;
        execv(self, args);
        _exit(7);
    }
    close(fds[1]);
    if (pid > 0 && read(fds[0], &byte, 1) != 1) { /* it died before training: waitpid tells why */
    }
    close(fds[0]);
    return pid;
}

int main(int argc, char **argv) {
    char path[512], tmp[520];
    const char *dir = argc > 1 ? argv[1] : "build/crash";
    int rounds = argc > 2 ? atoi(argv[2]) : 50, round, passed = 0, failed = 0, mid_save = 0;
    long last = 0;
    uint32_t save_us, max_us;
    int found = 0;
    dtnh_rng r;
    if (argc == 4 && strcmp(argv[1], "--child") == 0) crash_child(argv[2], atoi(argv[3]));
#ifdef _OPENMP
    /* One thread here and in the children: the test is about the file, and idle OpenMP
       threads spinning on a busy machine would only slow the steps down. */
    omp_set_num_threads(1);
    setenv("OMP_NUM_THREADS", "1", 1);
#endif
    dtnh_rng_seed(&r, argc > 3 ? (uint64_t)atoll(argv[3]) : (uint64_t)time(NULL));
    snprintf(path, sizeof path, "%s/crash.ckpt", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    mkdir(dir, 0755);
    remove(path);
    remove(tmp);
    if (!crash_make_reference(CRASH_MAX_STEPS)) return 1;
    save_us = crash_save_us(path);
    max_us = 4 * save_us; /* a few steps and saves after the child is ready */
    printf("crash test: %d rounds in %s, one save ~%u us, kills within %u us\n", rounds, dir, save_us, max_us);
    for (round = 0; round < rounds; round++) {
        pid_t pid;
        int status, had_tmp, ok = 1;
        fflush(stdout);
        if ((pid = crash_spawn(argv[0], path)) < 0) return 1;
        crash_sleep(&r, max_us);
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
            printf("round %d: the child failed by itself (exit %d)\n", round, WEXITSTATUS(status));
            ok = 0;
        }
        had_tmp = crash_exists(tmp);
        mid_save += had_tmp;
        remove(tmp); /* so the next round's tmp is the next child's */
        if (ok && crash_exists(path)) {
            long it = 0;
            ok = crash_verify(path, &it) && it >= last;
            found++;
            if (ok) last = it;
            printf("round %d: killed%s; checkpoint at iteration %ld %s\n", round, had_tmp ? " while saving" : "",
                   it, ok ? "loads and resumes exactly" : "FAILED");
            if (ok && it > CRASH_MAX_STEPS - 200) { /* near the reference's end: start over */
                remove(path);
                last = 0;
            }
        } else if (ok) {
            printf("round %d: killed before the first checkpoint\n", round);
        }
        ok ? passed++ : failed++;
    }
    printf("%d kills, %d of them while a save was in progress; last checkpoint at iteration %ld\n", rounds,
           mid_save, last);
    if (found < rounds / 2 || mid_save == 0) {
        printf("only %d rounds found a checkpoint and %d kills landed during a save: too few to tell\n",
               found, mid_save);
        failed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
