/* The command-line programs (examples/), driven as a user would: dtnh-train pre-trains and
   fine-tunes with every regularizer and mode, dtnh-eval reads the network from the file it
   wrote, dtnh-plot compares logs; bad input gives a one-line message naming the culprit, a
   non-zero exit and no output file. The programs live in $DTNH_BIN (the Makefile sets it),
   else beside this runner in ../examples. Tiny networks (width 4) on 12x12 images. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "test.h"

static char tp_bin[1024], tp_dir[1100];

/* Finds the programs and makes a scratch folder beside them; 0 when they are there. */
static int tp_setup(void) {
    char cmd[1300];
    FILE *f;
    if (tp_bin[0]) return 0;
    if (getenv("DTNH_BIN")) snprintf(tp_bin, sizeof tp_bin, "%s", getenv("DTNH_BIN"));
    else {
        char self[900];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        char *slash;
        if (n <= 0) return -1;
        self[n] = 0;
        if ((slash = strrchr(self, '/'))) *slash = 0; /* .../tests */
        if ((slash = strrchr(self, '/'))) *slash = 0;
        snprintf(tp_bin, sizeof tp_bin, "%s/examples", self);
    }
    snprintf(tp_dir, sizeof tp_dir, "%s/tp", tp_bin);
    snprintf(cmd, sizeof cmd, "%s/dtnh-train", tp_bin);
    if (!(f = fopen(cmd, "rb"))) {
        printf("    programs not found in %s (make builds them; DTNH_BIN names the folder)\n", tp_bin);
        tp_bin[0] = 0;
        return -1;
    }
    fclose(f);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", tp_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char *tp_path(const char *name) {
    static char buf[4][1400];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%.250s", tp_dir, name);
    return buf[k];
}

static int tp_exists(const char *name) {
    FILE *f = fopen(tp_path(name), "rb");
    if (f) fclose(f);
    return f != NULL;
}

static void tp_remove(const char *name) { remove(tp_path(name)); }

/* What a program printed: stdout and stderr apart. */
static char tp_out[1 << 16], tp_err[1024];

static void tp_slurp(const char *path, char *buf, size_t size) {
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(buf, 1, size - 1, f) : 0;
    buf[n] = 0;
    if (f) fclose(f);
}

/* s with every @ replaced by the scratch folder and a slash: "@train" is its file "train". */
static void tp_expand(const char *s, char *out, size_t size) {
    size_t n = 0;
    for (; *s && n + 1200 < size; s++) {
        if (*s == '@') n += (size_t)snprintf(out + n, size - n, "%s/", tp_dir);
        else out[n++] = *s;
    }
    out[n] = 0;
}

/* Runs "<bin>/<prog> <args>" from the repository root; returns its exit status. */
static int tp_run(const char *prog, const char *args) {
    char cmd[8192], expanded[3000];
    int status;
    tp_expand(args, expanded, sizeof expanded);
    snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 %s/%s %s > %s/out.txt 2> %s/err.txt", tp_bin, prog, expanded, tp_dir,
             tp_dir);
    status = system(cmd);
    tp_slurp(tp_path("out.txt"), tp_out, sizeof tp_out);
    tp_slurp(tp_path("err.txt"), tp_err, sizeof tp_err);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* ---- fixtures: tiny IDX files with a learnable pattern ---------------------------------------- */

static void tp_be32(unsigned char *p, unsigned v) {
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16), p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}

/* n images of side x side, class i % classes (label bias shifts every label), a bright bar
   whose row tells the class, plus noise. */
static int tp_write_idx(const char *name, int n, int side, int classes, int label_bias) {
    char lname[256];
    unsigned char head[16];
    FILE *fi, *fl;
    int i, k;
    unsigned seed = 12345;
    snprintf(lname, sizeof lname, "%s-labels", name);
    fi = fopen(tp_path(name), "wb");
    fl = fopen(tp_path(lname), "wb");
    if (!fi || !fl) {
        if (fi) fclose(fi);
        if (fl) fclose(fl);
        return -1;
    }
    tp_be32(head, 0x803), tp_be32(head + 4, (unsigned)n), tp_be32(head + 8, (unsigned)side), tp_be32(head + 12, (unsigned)side);
    fwrite(head, 1, 16, fi);
    tp_be32(head, 0x801), tp_be32(head + 4, (unsigned)n);
    fwrite(head, 1, 8, fl);
    for (i = 0; i < n; i++) {
        int label = i % classes;
        unsigned char lab = (unsigned char)(label + label_bias);
        for (k = 0; k < side * side; k++) {
            int row = k / side, v;
            seed = seed * 1103515245u + 12345u;
            v = (int)((seed >> 16) % 60) + (row / 2 % classes == label ? 180 : 0);
            fputc(v > 255 ? 255 : v, fi);
        }
        fputc(lab, fl);
    }
    fclose(fi);
    fclose(fl);
    return 0;
}

static int tp_fixtures(void) {
    static int made;
    FILE *f;
    if (made) return 0;
    if (tp_setup() || tp_write_idx("train", 24, 12, 4, 0) || tp_write_idx("test", 12, 12, 4, 0) ||
        tp_write_idx("test6", 12, 12, 6, 0) || tp_write_idx("big", 8, 16, 4, 0))
        return -1;
    if (!(f = fopen(tp_path("garbage"), "wb"))) return -1;
    fputs("this is not an image file at all, just text\n", f);
    fclose(f);
    made = 1;
    return 0;
}

#define TP_DATA "--data @train --labels @train-labels "
#define TP_TEST "--test-data @test --test-labels @test-labels "
#define TP_TINY "--width 4 --batch 4 --iters 3 --eval-every 0 --reg l2 --seed 5 "

/* A source for fine-tuning: width 4, 4 classes, trained a few steps from scratch. */
static int tp_source(void) {
    static int made;
    if (made) return 0;
    if (tp_fixtures() || tp_run("dtnh-train", TP_DATA TP_TINY "--save @src.safetensors") != 0) return -1;
    made = 1;
    return 0;
}

/* One line on stderr, "prog: ..." naming what (@ expanded); stdout free of a result. */
static int tp_one_line_naming(const char *prog, const char *what_at) {
    size_t len = strlen(tp_err);
    char what[1500];
    tp_expand(what_at, what, sizeof what);
    return strncmp(tp_err, prog, strlen(prog)) == 0 && len > 0 && tp_err[len - 1] == '\n' &&
           strchr(tp_err, '\n') == tp_err + len - 1 && strstr(tp_err, what) != NULL && !strstr(tp_out, "result:");
}

#define CHECK_REFUSED(prog, args, what)                                                             \
    do {                                                                                            \
        int rc_ = tp_run(prog, args);                                                               \
        CHECK_MSG(rc_ != 0 && rc_ != -1, "%.120s %.120s: exit %d", prog, args, rc_);                        \
        CHECK_MSG(tp_one_line_naming(prog, what), "%.120s %.120s: stderr '%.120s' should be one line naming '%.120s'", prog, args, \
                  tp_err, what);                                                                    \
    } while (0)

/* ---- dtnh-train ------------------------------------------------------------------------------- */

static void train_from_scratch_writes_weights_log_and_plots(void) {
    const char *outs[5] = {"s.safetensors", "s.csv", "s.svg", "s-angles.svg", "s.safetensors.tmp"};
    int i;
    CHECK(tp_fixtures() == 0);
    for (i = 0; i < 5; i++) tp_remove(outs[i]);
    CHECK_MSG(tp_run("dtnh-train", TP_DATA TP_TEST TP_TINY "--save @s.safetensors --log @s.csv --plot @s.svg") == 0,
              "exit non-zero: %.120s", tp_err);
    CHECK(strstr(tp_out, "test: accuracy") && strstr(tp_out, "result: test_acc="));
    for (i = 0; i < 4; i++) CHECK_MSG(tp_exists(outs[i]), "%.120s missing", outs[i]);
    CHECK(!tp_exists(outs[4]));
}

/* The CSV: the header names every column, one row per iteration, the test columns filled in
   where evaluated (here the last row only). */
static void train_log_has_a_row_per_iteration(void) {
    char line[1024];
    int rows = 0;
    FILE *f;
    CHECK(tp_fixtures() == 0);
    CHECK(tp_run("dtnh-train", TP_DATA TP_TEST TP_TINY "--iters 5 --log @rows.csv") == 0);
    CHECK((f = fopen(tp_path("rows.csv"), "r")) != NULL);
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    CHECK(strncmp(line, "iter,J,omega,cos_gj_gomega,projected,norm_gj,norm_gomega,angle1_d_gj,", 69) == 0);
    while (fgets(line, sizeof line, f)) {
        rows++;
        if (rows < 5) CHECK_MSG(strstr(line, ",,,,,") != NULL, "row %d: %.120s", rows, line);
    }
    fclose(f);
    CHECK(rows == 5);
    {
        char *field[20], *p = line;
        int n = 0;
        while (n < 20 && p) field[n++] = p, p = strchr(p, ','), p = p ? (*p = 0, p + 1) : NULL;
        CHECK(n == 18 && strcmp(field[0], "5") == 0 && field[13][0] && field[14][0]); /* test loss, acc */
    }
}

static void progress_into_a_pipe_is_plain_lines(void) {
    CHECK(tp_fixtures() == 0);
    CHECK(tp_run("dtnh-train", TP_DATA TP_TINY) == 0);
    CHECK(strstr(tp_out, "iter 3/3 J ") != NULL && strstr(tp_out, "img/s") && strstr(tp_out, "left"));
    CHECK(strchr(tp_out, '\r') == NULL && strstr(tp_out, "\033[") == NULL);
}

static void every_regularizer_and_dtnh_mode_trains(void) {
    static const char *regs[6] = {"none", "l2", "l2sp", "fm", "delta", "at"};
    static const char *modes[3] = {"off", "global", "per-tensor"};
    char args[512];
    int r, m;
    CHECK(tp_source() == 0);
    for (r = 0; r < 6; r++)
        for (m = 0; m < 3; m++) {
            if (r < 2 && m == 2) continue;
            snprintf(args, sizeof args, "--weights @src.safetensors " TP_DATA TP_TEST "--batch 4 --iters 2 "
                     "--reg %s --dtnh %s --head-iters 2 --hooks layer1,layer3", regs[r], modes[m]);
            CHECK_MSG(tp_run("dtnh-train", args) == 0, "--reg %.120s --dtnh %.120s: %.120s", regs[r], modes[m], tp_err);
            CHECK_MSG(strstr(tp_out, "result:") != NULL, "--reg %.120s --dtnh %.120s", regs[r], modes[m]);
            if (r >= 3 && m == 0) /* plain distillation: one backward pass, nothing to measure */
                CHECK_MSG(strstr(tp_out, "not measured") && strstr(tp_out, "mean_cos=nan"), "--reg %.120s", regs[r]);
            else if (r > 0)
                CHECK_MSG(strstr(tp_out, "dtnh: g_J and g_Omega conflicted (cos < 0) in "), "--reg %.120s", regs[r]);
        }
}

/* Plain feature maps back-propagate J and Omega in one pass; --angles takes them apart. The two
   give the same training up to rounding, and only --angles logs cos and the angles plot. */
static void plain_distillation_takes_one_backward_unless_angles(void) {
    static const char *base = "--weights @src.safetensors " TP_DATA TP_TEST "--batch 4 --iters 3 --reg fm --dtnh off ";
    static char one[sizeof tp_out];
    char args[512];
    double acc1, acc2;
    CHECK(tp_source() == 0);
    tp_remove("one-angles.svg");
    tp_remove("two-angles.svg");
    snprintf(args, sizeof args, "%s--plot @one.svg", base);
    CHECK_MSG(tp_run("dtnh-train", args) == 0, "%.200s", tp_err);
    snprintf(one, sizeof one, "%s", tp_out);
    CHECK(!tp_exists("one-angles.svg") && tp_exists("one.svg"));
    snprintf(args, sizeof args, "%s--angles --plot @two.svg", base);
    CHECK_MSG(tp_run("dtnh-train", args) == 0, "%.200s", tp_err);
    CHECK(strstr(tp_out, "conflicted (cos < 0) in ") && strstr(tp_out, "not projected"));
    CHECK(tp_exists("two-angles.svg"));
    CHECK(sscanf(strstr(one, "final_j="), "final_j=%lf", &acc1) == 1);
    CHECK(sscanf(strstr(tp_out, "final_j="), "final_j=%lf", &acc2) == 1);
    CHECK_MSG(fabs(acc1 - acc2) <= 1e-3 * fabs(acc1) + 1e-4, "final J %g (one pass) vs %g (two)", acc1, acc2);
}

/* --data takes the other formats the library reads: a folder of PGM/PPM class folders and a
   CIFAR-10 binary batch (the tiny fixtures of tests/test_data.c). */
static void train_reads_a_pgm_folder_and_a_cifar_batch(void) {
    CHECK(tp_fixtures() == 0);
    CHECK_MSG(tp_run("dtnh-train", "--data tests/fixtures/data/folder --width 4 --batch 2 --iters 2 --eval-every 0 "
                                   "--reg none --dtnh off --save @folder.safetensors") == 0,
              "folder: %.200s", tp_err);
    CHECK(tp_exists("folder.safetensors"));
    CHECK_MSG(tp_run("dtnh-train", "--data tests/fixtures/data/tiny.cifar --width 4 --batch 2 --iters 2 --eval-every 0 "
                                   "--reg none --dtnh off --save @cifar.safetensors") == 0,
              "cifar: %.200s", tp_err);
    CHECK(tp_exists("cifar.safetensors"));
    CHECK_REFUSED("dtnh-train", "--data tests/fixtures/data/folder-badsize --width 4 --batch 2 --iters 2 --reg none",
                  "folder-badsize");
}

static void optimizers_and_freezing_train(void) {
    static const char *variants[] = {"--optim sgd", "--optim adam --lr 0.001", "--freeze stem", "--freeze layer2",
                                     "--freeze backbone", "--freeze kernels", "--lr-step 1,2 --crop-pad 2 --flip",
                                     "--size 16 --mean 0.1 --std 0.3", "--shots 3 --val-shots 2"};
    char args[512];
    size_t i;
    CHECK(tp_source() == 0);
    for (i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        snprintf(args, sizeof args, "--weights @src.safetensors " TP_DATA "--batch 4 --iters 2 %s", variants[i]);
        CHECK_MSG(tp_run("dtnh-train", args) == 0, "%.120s: %.120s", variants[i], tp_err);
    }
    CHECK(strstr(tp_out, "val: accuracy") && strstr(tp_out, "data: 12 training images, 8 validation"));
}

/* Without a test file, the test set is held out of --data: a share of every class, or what
   the few-shot draw leaves. */
static void test_images_can_be_held_out_of_the_data(void) {
    CHECK(tp_fixtures() == 0);
    CHECK_MSG(tp_run("dtnh-train", TP_DATA TP_TINY "--test-fraction 0.25") == 0, "%.120s", tp_err);
    CHECK(strstr(tp_out, "data: 16 training images, 0 validation, 8 test") && strstr(tp_out, "(8 images)"));
    CHECK_MSG(tp_run("dtnh-train", TP_DATA TP_TINY "--shots 3 --val-shots 1 --test-rest") == 0, "%.120s", tp_err);
    CHECK(strstr(tp_out, "data: 12 training images, 4 validation, 8 test") && strstr(tp_out, "val: accuracy"));
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TINY "--test-rest", "--test-rest needs --shots");
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TEST TP_TINY "--test-fraction 0.5", "give one");
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TINY "--test-fraction 0.5 --shots 4", "--shots 4");
}

/* The result line, without its time. */
static void tp_result(char *out, size_t size) {
    const char *r = strstr(tp_out, "result:");
    size_t n = r ? strcspn(r, "\n") : 0;
    const char *sec = r ? strstr(r, " seconds=") : NULL;
    if (sec && (size_t)(sec - r) < n) n = (size_t)(sec - r);
    snprintf(out, size, "%.*s", (int)n, r ? r : "");
}

static void the_same_seed_gives_the_same_run(void) {
    char a[512], b[512], c[512];
    CHECK(tp_source() == 0);
    CHECK(tp_run("dtnh-train", "--weights @src.safetensors " TP_DATA TP_TEST "--batch 4 --iters 3 --shots 4 --seed 9 "
                               "--crop-pad 1") == 0);
    tp_result(a, sizeof a);
    CHECK(tp_run("dtnh-train", "--weights @src.safetensors " TP_DATA TP_TEST "--batch 4 --iters 3 --shots 4 --seed 9 "
                               "--crop-pad 1 --threads 2") == 0);
    tp_result(b, sizeof b);
    CHECK(tp_run("dtnh-train", "--weights @src.safetensors " TP_DATA TP_TEST "--batch 4 --iters 3 --shots 4 --seed 10 "
                               "--crop-pad 1") == 0);
    tp_result(c, sizeof c);
    CHECK_MSG(a[0] && strcmp(a, b) == 0, "'%.120s' vs '%.120s'", a, b);
    CHECK_MSG(strcmp(a, c) != 0, "another seed, the same run: %.120s", a);
}

/* A run cut off after a checkpoint and resumed ends exactly as the run that went through:
   weights, optimizer, minibatch order, augmentation draws, lr schedule and log all restored. */
static void a_resumed_run_ends_as_the_uninterrupted_one(void) {
    static const char *regs[2] = {"l2sp --lr-step 5 --crop-pad 1 --flip", "delta --head-iters 2 --dtnh per-tensor"};
    char args[768], whole[512], resumed[512];
    int r;
    CHECK(tp_source() == 0);
    for (r = 0; r < 2; r++) {
        snprintf(args, sizeof args, "--weights @src.safetensors " TP_DATA TP_TEST "--batch 4 --iters 6 --shots 4 "
                 "--seed 3 --reg %s --checkpoint @ck.safetensors --checkpoint-every 4", regs[r]);
        CHECK_MSG(tp_run("dtnh-train", args) == 0, "%.120s", tp_err);
        tp_result(whole, sizeof whole);
        CHECK(tp_exists("ck.safetensors") && tp_exists("ck.safetensors.log.csv"));
        strcat(args, " --resume @ck.safetensors");
        CHECK_MSG(tp_run("dtnh-train", args) == 0, "%.120s", tp_err);
        CHECK(strstr(tp_out, "resumed: ") && strstr(tp_out, " at iteration 4\n"));
        tp_result(resumed, sizeof resumed);
        CHECK_MSG(whole[0] && strcmp(whole, resumed) == 0, "--reg %.120s: '%.120s' vs '%.120s'", regs[r], whole, resumed);
    }
    CHECK_REFUSED("dtnh-train", "--weights @src.safetensors " TP_DATA "--batch 4 --iters 3 --shots 4 --reg delta "
                  "--resume @ck.safetensors", "past --iters 3");
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TINY "--width 8 --resume @ck.safetensors", "@ck.safetensors");
}

static void help_lists_every_option_with_its_default(void) {
    static const char *opts[] = {"--weights", "--data", "--labels", "--test-data", "--test-labels", "--classes",
                                 "--shots", "--val-shots", "--reg", "--dtnh", "--alpha", "--beta", "--optim", "--lr",
                                 "--lr-step", "--iters", "--batch", "--freeze", "--threads", "--seed", "--save",
                                 "--log", "--plot", "--width", "--stem", "--mean", "--std", "--crop-pad", "--flip",
                                 "--eval-every", "--hooks", "--memory"};
    size_t i;
    int defaults = 0, options = 0;
    const char *p;
    CHECK(tp_setup() == 0);
    CHECK(tp_run("dtnh-train", "--help") == 0);
    for (i = 0; i < sizeof opts / sizeof opts[0]; i++) CHECK_MSG(strstr(tp_out, opts[i]) != NULL, "%.120s not in --help", opts[i]);
    for (p = tp_out; (p = strstr(p, "(default: ")) != NULL; p++) defaults++;
    for (p = tp_out; (p = strstr(p, "\n  --")) != NULL; p++) options++;
    CHECK_MSG(defaults == options - 1, "%d defaults for %d options (--help has none)", defaults, options);
    CHECK(tp_run("dtnh-eval", "--help") == 0 && strstr(tp_out, "--predictions"));
    CHECK(tp_run("dtnh-plot", "--help") == 0 && strstr(tp_out, "--logs"));
}

/* ---- dtnh-eval -------------------------------------------------------------------------------- */

static void eval_reports_accuracy_classes_and_confusion(void) {
    char line[256];
    int lines = 0;
    FILE *f;
    CHECK(tp_source() == 0);
    tp_remove("pred.csv");
    CHECK_MSG(tp_run("dtnh-eval", "--weights @src.safetensors --data @test --labels @test-labels --predictions @pred.csv") == 0,
              "%.120s", tp_err);
    CHECK(strstr(tp_out, "network: ResNet-18 width 4, cifar stem, input 1x12x12, 4 classes"));
    CHECK(strstr(tp_out, "\naccuracy: ") && strstr(tp_out, "% (") && strstr(tp_out, "/12)"));
    CHECK(strstr(tp_out, "  class 3: ") && strstr(tp_out, "confusion matrix"));
    CHECK((f = fopen(tp_path("pred.csv"), "r")) != NULL);
    while (fgets(line, sizeof line, f)) lines++;
    fclose(f);
    CHECK(lines == 13);
}

/* The imagenet stem on grey images repeated into 3 channels, stored as F16: dtnh-eval reads
   it all back from the file; --size and --keep-head do what they say. */
static void stem_channels_dtype_size_and_head_options_work(void) {
    CHECK(tp_source() == 0);
    CHECK_MSG(tp_run("dtnh-train", TP_DATA TP_TINY "--stem imagenet --in-channels 3 --size 16 --save-dtype f16 "
                                   "--mean 0.4,0.5,0.6 --std 0.2 --save @f16.safetensors") == 0, "%.120s", tp_err);
    CHECK_MSG(tp_run("dtnh-eval", "--weights @f16.safetensors --data @big --labels @big-labels --threads 1") == 0,
              "%.120s", tp_err);
    CHECK(strstr(tp_out, "width 4, imagenet stem, input 3x16x16, 4 classes") && strstr(tp_out, "accuracy: "));
    CHECK_MSG(tp_run("dtnh-eval", "--weights @src.safetensors --data @big --labels @big-labels --size 12 --mean 0.5 "
                                  "--std 0.5 --batch 3") == 0, "%.120s", tp_err);
    CHECK(strstr(tp_out, "input 1x12x12") && strstr(tp_out, "/8)"));
    CHECK(tp_run("dtnh-train", "--weights @src.safetensors " TP_DATA "--batch 4 --iters 1 --keep-head") == 0);
    CHECK(strstr(tp_out, "its head kept"));
    CHECK(tp_run("dtnh-train", "--weights @src.safetensors " TP_DATA "--batch 4 --iters 1") == 0);
    CHECK(strstr(tp_out, "a new head for 4 classes"));
}

/* A class subset trained by dtnh-train is stored in the file; dtnh-eval applies it. */
static void eval_applies_the_class_subset_the_file_names(void) {
    CHECK(tp_fixtures() == 0);
    CHECK(tp_run("dtnh-train", "--data @test6 --labels @test6-labels --classes 5,2 " TP_TINY "--save @sub.safetensors") == 0);
    CHECK_MSG(tp_run("dtnh-eval", "--weights @sub.safetensors --data @test6 --labels @test6-labels") == 0, "%.120s", tp_err);
    CHECK(strstr(tp_out, "data: 4 images") && strstr(tp_out, "  class 5: ") && strstr(tp_out, "  class 2: "));
}

static void plot_compares_logs(void) {
    CHECK(tp_source() == 0);
    CHECK(tp_run("dtnh-train", "--weights @src.safetensors " TP_DATA TP_TEST "--batch 4 --iters 3 --dtnh off --log @a.csv") == 0);
    CHECK(tp_run("dtnh-train", "--weights @src.safetensors " TP_DATA TP_TEST "--batch 4 --iters 3 --log @b.csv") == 0);
    tp_remove("accuracy.svg");
    CHECK_MSG(tp_run("dtnh-plot", "--logs @a.csv,@b.csv --names 'L2-SP,DTNH(L2-SP)' --out @") == 0, "%.120s", tp_err);
    CHECK(strstr(tp_out, "L2-SP  ") && strstr(tp_out, "DTNH(L2-SP)") && strstr(tp_out, "test acc"));
    CHECK(tp_exists("loss.svg") && tp_exists("accuracy.svg") && tp_exists("angles-dtnh-l2-sp.svg"));
}

/* ---- bad input ------------------------------------------------------------------------------- */

/* Each refusal also asks for every output: none may appear. */
#define TP_OUTS "--save @no.safetensors --log @no.csv --plot @no.svg "

static void tp_remove_outputs(void) {
    tp_remove("no.safetensors");
    tp_remove("no.csv");
    tp_remove("no.svg");
}

static void train_refuses_missing_and_malformed_files(void) {
    CHECK(tp_fixtures() == 0);
    tp_remove_outputs();
    CHECK_REFUSED("dtnh-train", "--data @nope --labels @train-labels " TP_TINY TP_OUTS, "@nope");
    CHECK_REFUSED("dtnh-train", "--data @train --labels @nope-labels " TP_TINY TP_OUTS, "@nope-labels");
    CHECK_REFUSED("dtnh-train", "--data @garbage " TP_TINY TP_OUTS, "@garbage");
    CHECK_REFUSED("dtnh-train", "--data @train --labels @train " TP_TINY TP_OUTS, "@train");
    CHECK_REFUSED("dtnh-train", TP_DATA "--weights @nope.safetensors --batch 4 --iters 2 " TP_OUTS, "@nope.safetensors");
    CHECK_REFUSED("dtnh-train", TP_DATA "--weights @train --batch 4 --iters 2 " TP_OUTS, "@train");
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TINY "--test-data @big --test-labels @big-labels " TP_OUTS, "@big");
    CHECK_REFUSED("dtnh-train", "--data @train " TP_TINY TP_OUTS, "--labels");
    CHECK(!tp_exists("no.safetensors") && !tp_exists("no.csv") && !tp_exists("no.svg"));
    CHECK(!tp_exists("no.safetensors.tmp") && !tp_exists("no.csv.tmp"));
}

static void train_refuses_bad_options_naming_them(void) {
    CHECK(tp_fixtures() == 0);
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TINY "--nope 3", "--nope");
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TINY "--lr -1", "--lr");
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TINY "--batch 0", "--batch");
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TINY "--reg zz", "--reg");
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TINY "--classes 1,,2", "--classes");
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TINY "--mean 0.1,0.2", "--mean");
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TINY "--iters", "--iters");
    CHECK_REFUSED("dtnh-train", TP_DATA "--reg l2sp --iters 2", "--weights");
    CHECK_REFUSED("dtnh-train", TP_TINY, "--data");
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TINY "stray", "stray");
}

static void train_refuses_impossible_requests(void) {
    CHECK(tp_fixtures() == 0);
    tp_remove_outputs();
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TINY "--shots 50", "--shots 50");
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TINY "--classes 1,7", "--classes: class 7");
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TINY "--batch 2048 --memory 1 " TP_OUTS, "--memory 1");
    CHECK_REFUSED("dtnh-train", TP_DATA TP_TINY "--test-data @test6 --test-labels @test6-labels", "@test6");
    CHECK(tp_source() == 0);
    CHECK_REFUSED("dtnh-train", TP_DATA "--weights @src.safetensors --reg fm --hooks layer9 --iters 2", "layer9");
    CHECK(!tp_exists("no.safetensors") && !tp_exists("no.csv") && !tp_exists("no.svg"));
}

/* A learning rate far too large: NaN. The run says where, exits 3, keeps its log, saves no
   weights. */
static void a_diverging_run_is_reported_and_saves_nothing(void) {
    int rc;
    CHECK(tp_fixtures() == 0);
    tp_remove("div.safetensors");
    tp_remove("div.csv");
    rc = tp_run("dtnh-train", TP_DATA "--width 4 --batch 4 --iters 30 --reg l2 --optim sgd --lr 10 --alpha 1000000 "
                              "--save @div.safetensors --log @div.csv");
    CHECK_MSG(rc == 3, "exit %d: %.120s", rc, tp_out);
    CHECK(strstr(tp_out, "diverged at iteration") && strstr(tp_out, "diverged=1"));
    CHECK(tp_exists("div.csv") && !tp_exists("div.safetensors"));
}

static void eval_refuses_bad_input_naming_it(void) {
    CHECK(tp_source() == 0);
    tp_remove("no-pred.csv");
    CHECK_REFUSED("dtnh-eval", "--weights @src.safetensors --data @test6 --labels @test6-labels --predictions @no-pred.csv",
                  "@test6-labels' is out of range");
    CHECK_REFUSED("dtnh-eval", "--weights @src.safetensors --data @big --labels @big-labels", "16x16");
    CHECK_REFUSED("dtnh-eval", "--weights @nope.safetensors --data @test --labels @test-labels", "@nope.safetensors");
    CHECK_REFUSED("dtnh-eval", "--weights @garbage --data @test --labels @test-labels", "@garbage");
    CHECK_REFUSED("dtnh-eval", "--weights @src.safetensors --data @garbage", "@garbage");
    CHECK_REFUSED("dtnh-eval", "--weights @src.safetensors --data @test --labels @test-labels --classes 1,2", "--classes");
    CHECK_REFUSED("dtnh-eval", "--weights @src.safetensors --data @test --labels @test-labels --batch 100000", "--batch");
    CHECK_REFUSED("dtnh-eval", "--weights @src.safetensors --data @test --labels @test-labels --batch 4096 --memory 1", "--memory 1");
    CHECK_REFUSED("dtnh-eval", "--data @test", "--weights");
    CHECK(!tp_exists("no-pred.csv") && !tp_exists("no-pred.csv.tmp"));
}

static void plot_refuses_bad_logs(void) {
    CHECK(tp_fixtures() == 0);
    CHECK_REFUSED("dtnh-plot", "--logs @nope.csv", "@nope.csv");
    CHECK_REFUSED("dtnh-plot", "--logs @garbage", "@garbage");
    CHECK_REFUSED("dtnh-plot", "--logs @garbage,@garbage --names one", "--names");
}

void suite_programs(void) {
    RUN(train_from_scratch_writes_weights_log_and_plots);
    RUN(train_log_has_a_row_per_iteration);
    RUN(progress_into_a_pipe_is_plain_lines);
    RUN(every_regularizer_and_dtnh_mode_trains);
    RUN(plain_distillation_takes_one_backward_unless_angles);
    RUN(train_reads_a_pgm_folder_and_a_cifar_batch);
    RUN(optimizers_and_freezing_train);
    RUN(test_images_can_be_held_out_of_the_data);
    RUN(the_same_seed_gives_the_same_run);
    RUN(a_resumed_run_ends_as_the_uninterrupted_one);
    RUN(help_lists_every_option_with_its_default);
    RUN(eval_reports_accuracy_classes_and_confusion);
    RUN(eval_applies_the_class_subset_the_file_names);
    RUN(stem_channels_dtype_size_and_head_options_work);
    RUN(plot_compares_logs);
    RUN(train_refuses_missing_and_malformed_files);
    RUN(train_refuses_bad_options_naming_them);
    RUN(train_refuses_impossible_requests);
    RUN(a_diverging_run_is_reported_and_saves_nothing);
    RUN(eval_refuses_bad_input_naming_it);
    RUN(plot_refuses_bad_logs);
}
