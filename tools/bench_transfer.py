#!/usr/bin/env python3
"""Issue 6: the paper's Tables II-IV in miniature, on real data (`make bench-transfer`).

Two sources pre-trained from scratch by dtnh-train (FM-A: Fashion-MNIST classes 0-4, all
30,000 training images; D-A: MNIST digits 0-4 of the 10,000-digit set, a fifth held out),
each fine-tuned on two few-shot targets (FM-B: Fashion-MNIST 5-9, D-B: digits 5-9; 30 training
and 20 validation images per class drawn with the seed) with eight methods: from scratch, L2,
L2-SP, DTNH(L2-SP), feature maps, DTNH(feature maps), DELTA, DTNH(DELTA). alpha of each
regularizer is picked per pair on the validation split from ALPHAS with the plain method at
seed 1 (best validation accuracy, ties to the lower validation loss) and used unchanged for
its DTNH variant. Then the never-hurt test: L2-SP at alpha 1 and feature maps at alpha 0.1,
plain and DTNH, every pair, every seed, with the paired difference.

Every number comes from dtnh-train's own `result:` line (test and validation accuracy and loss,
share of conflicting steps, mean cos(g_J, g_Omega)). Runs go two at a time, one thread each.
A run whose output (OUT/runs/NAME.txt) holds a result line for the same command is not run
again, so an interrupted bench resumes; --fresh starts over. The order puts seed 1 of every
cell first, so a bench stopped early still has complete tables with fewer seeds.

Standard library only. Usage (from the repository root, after `make examples data`):
  python3 tools/bench_transfer.py [--quick] [--out DIR] [--jobs 2] [--benchmarks BENCHMARKS.md]
--quick: one seed, alpha fixed at 0.01, 60 iterations and short pre-training: a smoke test.
"""
import argparse
import concurrent.futures as cf
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time

BIN = "bin"
D = "data/full"
FASHION_TRAIN = ["--data", f"{D}/fashion-train-images-idx3-ubyte", "--labels", f"{D}/fashion-train-labels-idx1-ubyte"]
FASHION_TEST = ["--test-data", f"{D}/fashion-test-images-idx3-ubyte", "--test-labels", f"{D}/fashion-test-labels-idx1-ubyte"]
DIGITS = ["--data", f"{D}/digits-images-idx3-ubyte", "--labels", f"{D}/digits-labels-idx1-ubyte"]
LOW, HIGH = "0,1,2,3,4", "5,6,7,8,9"

SOURCES = {  # name: data arguments (the test set: Fashion-MNIST's test images, or a fifth of the digits)
    "FM-A": FASHION_TRAIN + FASHION_TEST + ["--classes", LOW],
    "D-A": DIGITS + ["--classes", LOW, "--test-fraction", "0.2"],
}
TARGETS = {
    "FM-B": FASHION_TRAIN + FASHION_TEST + ["--classes", HIGH, "--shots", "30", "--val-shots", "20"],
    "D-B": DIGITS + ["--classes", HIGH, "--shots", "30", "--val-shots", "20", "--test-rest"],
}
PAIRS = [("FM-A", "FM-B"), ("D-A", "D-B"), ("D-A", "FM-B"), ("FM-A", "D-B")]
FITTING = {("FM-A", "FM-B"), ("D-A", "D-B")}

# (key, column title, --reg, --dtnh)
METHODS = [
    ("scratch", "from scratch", "none", "off"),
    ("l2", "L2", "l2", "off"),
    ("l2sp", "L2-SP", "l2sp", "off"),
    ("dtnh-l2sp", "DTNH(L2-SP)", "l2sp", "global"),
    ("fm", "feature maps", "fm", "off"),
    ("dtnh-fm", "DTNH(FM)", "fm", "global"),
    ("delta", "DELTA", "delta", "off"),
    ("dtnh-delta", "DTNH(DELTA)", "delta", "global"),
]
METHOD = {m[0]: m for m in METHODS}
REGS = ["l2", "l2sp", "fm", "delta"]  # alpha picked for each, with the plain method
DTNH_OF = {"l2sp": "dtnh-l2sp", "fm": "dtnh-fm", "delta": "dtnh-delta"}
PLAIN_OF = {v: k for k, v in DTNH_OF.items()}
NEVER_HURT = [("l2sp", "1"), ("fm", "0.1")]
ALPHAS = ["0.001", "0.01", "0.1", "1"]
BETA = "0.01"
PLOT_PAIR = ("D-A", "FM-B")
CHANCE = 0.2  # five classes


def recipe(quick):
    iters = 60 if quick else 300
    return ["--optim", "momentum", "--momentum", "0.9", "--lr", "0.01", "--lr-step", str(iters * 3 // 4),
            "--iters", str(iters), "--batch", "48", "--crop-pad", "2", "--mean", "0.5", "--std", "0.5"]


def pretrain_recipe(quick):
    iters = 200 if quick else 800
    return ["--width", "16", "--stem", "cifar", "--in-channels", "1", "--reg", "l2", "--dtnh", "off",
            "--alpha", "0.0005", "--optim", "momentum", "--momentum", "0.9", "--lr", "0.05",
            "--lr-step", f"{iters * 3 // 4},{iters * 11 // 12}", "--iters", str(iters), "--batch", "48",
            "--crop-pad", "2", "--mean", "0.5", "--std", "0.5", "--seed", "2019", "--eval-every", "0"]


def slug(s):
    return s.replace("-", "").lower()


class Bench:
    def __init__(self, args):
        self.a = args
        self.out = args.out
        self.runs = os.path.join(self.out, "runs")
        os.makedirs(self.runs, exist_ok=True)
        # private copies: a `make examples` elsewhere during the bench must not swap them mid-run
        self.bin = os.path.join(self.out, "bin")
        os.makedirs(self.bin, exist_ok=True)
        for prog in ("dtnh-train", "dtnh-plot"):
            shutil.copy2(os.path.join(BIN, prog), os.path.join(self.bin, prog))
        self.results = {}  # run name -> parsed result (or {"failed": msg})
        self.ran = 0
        self.reused = 0
        self.stopped = None
        self.deadline = None
        if args.deadline:  # HH:MM today (local time)
            h, m = map(int, args.deadline.split(":"))
            now = time.localtime()
            self.deadline = time.mktime((now.tm_year, now.tm_mon, now.tm_mday, h, m, 0, 0, 0, -1))

    # ---- running -------------------------------------------------------------------------
    def source_path(self, src):
        return os.path.join(self.out, "sources", slug(src) + ".safetensors")

    def command(self, name, extra):
        base = [os.path.join(self.bin, "dtnh-train"), "--threads", "1"]
        return base + extra + ["--log", os.path.join(self.runs, name + ".csv")]

    def cached(self, name, cmd):
        txt, cf_ = os.path.join(self.runs, name + ".txt"), os.path.join(self.runs, name + ".cmd")
        if self.a.fresh or not (os.path.exists(txt) and os.path.exists(cf_)):
            return None
        with open(cf_) as f:
            if f.read() != " ".join(cmd):
                return None
        return parse_result(txt)

    def run_one(self, name, cmd):
        r = self.cached(name, cmd)
        if r is not None:
            self.reused += 1
            return r
        os.makedirs(os.path.dirname(os.path.join(self.runs, name)), exist_ok=True)
        txt = os.path.join(self.runs, name + ".txt")
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
        t0 = time.time()
        with open(txt, "w") as f:
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        r = parse_result(txt)
        if r is None:
            r = {"failed": f"exit {p.returncode}; see {txt}"}
        with open(os.path.join(self.runs, name + ".cmd"), "w") as f:
            f.write(" ".join(cmd))
        self.ran += 1
        r["wall"] = time.time() - t0
        print(f"  [{time.strftime('%H:%M:%S')}] {name}: {summary(r)} ({r['wall']:.0f} s)", flush=True)
        return r

    def schedule(self, wanted):
        """Runs jobs a.jobs at a time until wanted(), asked again after every run, names none
        that is neither done nor running; wanted() lists the runs whose inputs exist, most
        important first. Past --deadline no run starts (the tables show what exists)."""
        running = {}
        with cf.ThreadPoolExecutor(self.a.jobs) as ex:
            while True:
                late = self.a.report_only or (self.deadline is not None and time.time() > self.deadline)
                progress = True
                while progress:  # take what an earlier bench left first: it may unlock more
                    progress = False
                    for name, cmd in wanted():
                        if name not in self.results and name not in running.values():
                            r = self.cached(name, cmd)
                            if r is not None:
                                self.results[name] = r
                                self.reused += 1
                                progress = True
                for name, cmd in [] if late else wanted():
                    if len(running) >= self.a.jobs:
                        break
                    if name not in self.results and name not in running.values():
                        running[ex.submit(self.run_one, name, cmd)] = name
                if late and not self.stopped and not self.a.report_only:
                    self.stopped = time.strftime("%H:%M")
                    print(f"bench-transfer: the deadline has passed; waiting for {len(running)} running run(s)")
                if not running:
                    return
                done, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    self.results[running.pop(fut)] = fut.result()

    # ---- the cells -----------------------------------------------------------------------
    def pretrain_jobs(self):
        os.makedirs(os.path.join(self.out, "sources"), exist_ok=True)
        return [(f"source-{slug(s)}", self.command(f"source-{slug(s)}", SOURCES[s] + pretrain_recipe(self.a.quick) +
                                                   ["--save", self.source_path(s)])) for s in SOURCES]

    def name(self, src, tgt, method, alpha, seed):
        if method == "scratch":
            return f"{slug(tgt)}/scratch-s{seed}"
        return f"{slug(src)}-{slug(tgt)}/{method}-a{alpha}-s{seed}"

    def job(self, src, tgt, method, alpha, seed, eval_every=0, suffix=""):
        _, _, reg, dtnh = METHOD[method]
        name = self.name(src, tgt, method, alpha, seed) + suffix
        extra = TARGETS[tgt] + recipe(self.a.quick) + ["--seed", str(seed), "--eval-every", str(eval_every),
                                                       "--reg", reg, "--dtnh", dtnh]
        if method == "scratch":
            extra += ["--width", "16", "--stem", "cifar", "--in-channels", "1"]
        else:
            extra = ["--weights", self.source_path(src)] + extra + ["--alpha", alpha, "--beta", BETA]
        return name, self.command(name, extra)

    def alphas(self):
        return ["0.01"] if self.a.quick else ALPHAS

    def seeds(self):
        return [1] if self.a.quick else [1, 2, 3]

    def chosen_alpha(self, src, tgt, reg):
        """Best validation accuracy at seed 1, ties to the lower validation loss; a run that
        diverged or failed ranks last. None until every alpha of the grid has run."""
        if not self.grid_done(src, tgt, reg):
            return None
        best = None
        for a in self.alphas():
            r = self.results.get(self.name(src, tgt, reg, a, 1), {})
            acc, loss = r.get("val_acc", float("nan")), r.get("val_loss", float("nan"))
            key = (-acc if acc == acc and not r.get("diverged") else 1.0, loss if loss == loss else math.inf)
            if best is None or key < best[0]:
                best = (key, a)
        return best[1]

    def scratch_jobs(self, seed):
        return [self.job(None, t, "scratch", None, seed) for t in TARGETS]

    def plot_alphas(self):
        """The chosen alpha, and alpha 1 (the never-hurt strength, where DTNH has work to do)."""
        a = self.chosen_alpha(*PLOT_PAIR, "l2sp")
        return [x for x in (a, "1") if x and (x != "1" or a != "1")]

    def plot_jobs(self, a=None):
        src, tgt = PLOT_PAIR
        a = a or self.chosen_alpha(src, tgt, "l2sp")
        every = 5 if self.a.quick else 20
        return [self.job(src, tgt, m, a, 1, eval_every=every, suffix="-curve") for m in ("l2sp", "dtnh-l2sp")]

    def determinism_job(self):
        """The first DTNH(L2-SP) cell again under another name: every number must match."""
        src, tgt = PAIRS[2]
        a = self.chosen_alpha(src, tgt, "l2sp")
        return self.job(src, tgt, "dtnh-l2sp", a, 1, suffix="-rerun")

    def grid_done(self, src, tgt, reg):
        return all(self.name(src, tgt, reg, a, 1) in self.results for a in self.alphas())

    def wanted(self):
        """Every run of the protocol whose inputs exist, in the order that makes a bench cut
        short by --deadline most useful: seed 1 of L2-SP with DTNH and the never-hurt test
        first, then their further seeds, then L2 and the costly feature-map regularizers."""
        if any(f"source-{slug(s)}" not in self.results for s in SOURCES):
            return self.pretrain_jobs()
        jobs = self.scratch_jobs(1)

        def reg_cells(reg, seed, with_dtnh=True):
            out = []
            for src, tgt in PAIRS:
                if seed == 1:
                    out += [self.job(src, tgt, reg, a, 1) for a in self.alphas()]
                if self.grid_done(src, tgt, reg):
                    a = self.chosen_alpha(src, tgt, reg)
                    out.append(self.job(src, tgt, reg, a, seed))
                    if with_dtnh and reg in DTNH_OF:
                        out.append(self.job(src, tgt, DTNH_OF[reg], a, seed))
            return out

        def never_hurt(reg, seed):
            a = dict(NEVER_HURT)[reg]
            return [self.job(src, tgt, m, a, seed) for src, tgt in PAIRS for m in (reg, DTNH_OF[reg])]

        jobs += reg_cells("l2sp", 1) + never_hurt("l2sp", 1) + never_hurt("fm", 1)
        if self.grid_done(*PLOT_PAIR, "l2sp"):
            jobs += [j for a in self.plot_alphas() for j in self.plot_jobs(a)] + [self.determinism_job()]
        for seed in self.seeds()[1:]:  # paired seeds of L2-SP vs DTNH(L2-SP) before more columns
            jobs += self.scratch_jobs(seed) + reg_cells("l2sp", seed) + never_hurt("l2sp", seed)
        jobs += reg_cells("l2", 1)
        jobs += sorted(reg_cells("fm", 1), key=lambda j: "dtnh" not in j[0])  # a finished grid's DTNH first
        for seed in self.seeds()[1:]:
            jobs += reg_cells("l2", seed)
        jobs += sorted(reg_cells("delta", 1), key=lambda j: "dtnh" not in j[0])
        for seed in self.seeds()[1:]:
            jobs += never_hurt("fm", seed) + reg_cells("fm", seed) + reg_cells("delta", seed)
        return jobs

    def run(self):
        t0 = time.time()
        print(f"bench-transfer: {'QUICK ' if self.a.quick else ''}output in {self.out}", flush=True)
        self.schedule(lambda: self.pretrain_jobs())
        for s in SOURCES:
            r = self.results[f"source-{slug(s)}"]
            if "failed" in r or r.get("diverged"):
                sys.exit(f"bench-transfer: pre-training {s} failed: {summary(r)}")
        self.schedule(self.wanted)
        self.wall = time.time() - t0
        self.plots()
        return self.report()

    # ---- results -------------------------------------------------------------------------
    def plots(self):
        """dtnh-plot's loss.svg (Fig. 3), angles-*.svg (Figs. 4-5), accuracy.svg per alpha."""
        src, tgt = PLOT_PAIR
        for a in self.plot_alphas():
            logs = [os.path.join(self.runs, n + ".csv") for n, _ in self.plot_jobs(a)]
            if not all(os.path.exists(f) for f in logs):
                continue
            out = os.path.join(self.out, "plots", f"alpha-{a}")
            os.makedirs(out, exist_ok=True)
            title = f"{src} to {tgt}, 30 per class, alpha {a}, seed 1"
            subprocess.run([os.path.join(self.bin, "dtnh-plot"), "--logs", ",".join(logs), "--names",
                            "L2-SP,DTNH(L2-SP)", "--out", out, "--title", title], stdout=subprocess.DEVNULL, check=False)
            if self.a.plots_to and not self.a.quick:
                dest = os.path.join(self.a.plots_to, f"alpha-{a}")
                os.makedirs(dest, exist_ok=True)
                for f in sorted(os.listdir(out)):
                    if f.endswith(".svg"):
                        shutil.copy(os.path.join(out, f), os.path.join(dest, f))

    def cell(self, src, tgt, method, alpha):
        rs = [self.results.get(self.name(src, tgt, method, alpha, s)) for s in self.seeds()]
        return [r for r in rs if r is not None]

    def report(self):
        lines = []
        w = lines.append
        q = self.a.quick
        seeds = self.seeds()
        if self.a.report_only:
            if self.a.deadline:
                self.stopped = self.a.deadline
            w(f"Made by `{self.a.command}` on {machine()}: the {len(self.results)} runs in {self.out} "
              f"(`python3 tools/bench_transfer.py --report-only` remakes these tables from them).")
        else:
            w(f"Made by `{self.a.command}` ({'QUICK: ' if q else ''}{len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
              f" per cell: {', '.join(map(str, seeds))}) on {machine()}, {self.wall / 60:.1f} min wall "
              f"({self.ran} runs run, {self.reused} reused from an earlier bench in {self.out}); load average at "
              f"the start {self.a.load_at_start}.")
        w("")
        if self.stopped:
            w(f"**Cut short**: `--deadline` stopped new runs at {self.stopped}; a cell run with fewer seeds than "
              f"{len(seeds)} shows their count as [n]; – marks a cell not run.")
            w("")
        w("Test accuracy (%), mean ± standard deviation over the seeds (the paper used 5 seeds; here 3). "
          "**Bold**: the best of the row; ↓: below training from scratch (negative transfer); "
          "`div k`: k of the seeds diverged (NaN or chance accuracy), reported, never dropped.")
        w("")
        w("Sources (pre-trained from scratch by dtnh-train; recipe below):")
        w("")
        w("| source | data | test images | test accuracy |")
        w("|---|---|---|---|")
        for s, what in (("FM-A", "Fashion-MNIST classes 0-4, all 30,000 training images"),
                        ("D-A", "MNIST digits 0-4 of the 10,000-digit set, 4/5 of each class")):
            r = self.results[f"source-{slug(s)}"]
            held = "Fashion-MNIST test, classes 0-4" if s == "FM-A" else "the held-out fifth"
            w(f"| {s} | {what} | {held} ({r.get('ntest', '?')}) | {100 * r.get('test_acc', float('nan')):.2f}% |")
        w("")
        w("Pre-training: `" + " ".join(pretrain_recipe(q)) + "` (on one thread; ~"
          f"{self.results['source-fma'].get('seconds', 0) / 60:.0f} min for FM-A).")
        w("")
        w("Fine-tuning recipe (every target run): `" + " ".join(recipe(q)) + f" --beta {BETA} --eval-every 0"
          " --threads 1`, `--dtnh global` for DTNH; from scratch: `--reg none --width 16 --stem cifar`. "
          "Targets: 30 training + 20 validation images per class drawn with the seed; test = Fashion-MNIST's "
          "5,000 test images of classes 5-9 (FM-B) or every digit 5-9 the draw leaves (D-B).")
        w("")
        for src in SOURCES:
            w(f"#### Source {src} ({'Fashion-MNIST 0-4' if src == 'FM-A' else 'digits 0-4'})")
            w("")
            w("| target | " + " | ".join(m[1] for m in METHODS) + " |")
            w("|---|" + "---|" * len(METHODS))
            for tgt in TARGETS:
                cells = {}
                for m in METHODS:
                    a = None if m[0] == "scratch" else self.chosen_alpha(src, tgt, PLAIN_OF.get(m[0], m[0]))
                    cells[m[0]] = stats(self.cell(src, tgt, m[0], a))
                scratch = cells["scratch"]["mean"]
                best = max((c["mean"] for c in cells.values() if c["mean"] == c["mean"]), default=None)
                row = []
                for m in METHODS:
                    c = cells[m[0]]
                    s = fmt_cell(c, len(seeds))
                    if c["mean"] == best:
                        s = f"**{s}**"
                    if m[0] != "scratch" and c["mean"] == c["mean"] and c["mean"] < scratch:
                        s += " ↓"
                    row.append(s)
                kind = "fitting" if (src, tgt) in FITTING else "unfitting"
                w(f"| {tgt} ({kind}) | " + " | ".join(row) + " |")
            w("")
        w("alpha chosen on the validation split (seed 1, plain method; used for its DTNH variant too), and "
          "validation accuracy (%) of each alpha tried:")
        w("")
        w("| pair | " + " | ".join(f"{METHOD[r][1]}" for r in REGS) + " |")
        w("|---|" + "---|" * len(REGS))
        for src, tgt in PAIRS:
            row = []
            for reg in REGS:
                ch = self.chosen_alpha(src, tgt, reg)
                tried = []
                for a in self.alphas():
                    r = self.results.get(self.name(src, tgt, reg, a, 1), {})
                    v = r.get("val_acc", float("nan"))
                    tried.append(f"{a}: {'div' if r.get('diverged') else f'{100 * v:.0f}'}")
                if ch is None:
                    done = [t for t in tried if not t.endswith("nan")]
                    row.append(f"grid not run ({', '.join(done)})" if done else "not run")
                else:
                    row.append(f"**{ch}** ({', '.join(tried)})" if len(tried) > 1 else f"**{ch}**")
            w(f"| {src}→{tgt} | " + " | ".join(row) + " |")
        w("")
        w("DTNH runs: share of the steps whose gradients conflicted (cos(g_J, g_Ω) < 0, the steps DTNH "
          "projects), and the mean cos(g_J, g_Ω), over the seeds:")
        w("")
        w("| pair | " + " | ".join(METHOD[m][1] for m in DTNH_OF.values()) + " |")
        w("|---|" + "---|" * len(DTNH_OF))
        for src, tgt in PAIRS:
            row = []
            for reg, m in DTNH_OF.items():
                rs = [r for r in self.cell(src, tgt, m, self.chosen_alpha(src, tgt, reg)) if "failed" not in r]
                row.append(f"{100 * mean([r['conflict_rate'] for r in rs]):.0f}% conflicting, cos "
                           f"{mean([r['mean_cos'] for r in rs]):+.3f}" if rs else "–")
            w(f"| {src}→{tgt} | " + " | ".join(row) + " |")
        w("")
        w("#### The never-hurt test")
        w("")
        w("A regularizer set too strong on purpose: L2-SP at α = 1 and feature maps at α = 0.1, plain and "
          "DTNH, the same seeds; Δ = DTNH − plain per seed (paired), mean ± std. Conflicting steps and mean "
          "cos are the DTNH runs'.")
        w("")
        w("| pair | regularizer | plain | DTNH | Δ (points) | DTNH better in | conflicting, mean cos |")
        w("|---|---|---|---|---|---|---|")
        for src, tgt in PAIRS:
            for reg, a in NEVER_HURT:
                p = self.cell(src, tgt, reg, a)
                d = self.cell(src, tgt, DTNH_OF[reg], a)
                diffs = [100 * (y["test_acc"] - x["test_acc"]) for x, y in zip(p, d) if ok(x) and ok(y)]
                better = sum(1 for x in diffs if x > 0)
                dd = [r for r in d if "failed" not in r]
                w(f"| {src}→{tgt} | {METHOD[reg][1]} α={a} | {fmt_cell(stats(p), len(seeds))} | {fmt_cell(stats(d), len(seeds))} | "
                  f"{fmt_pm(diffs, signed=True)} | {better} of {len(diffs)} | "
                  f"{100 * mean([r['conflict_rate'] for r in dd]):.0f}%, {mean([r['mean_cos'] for r in dd]):+.3f} |")
        w("")
        det = self.determinism()
        w(f"Determinism: {det}")
        w("")
        text = "\n".join(lines) + "\n"
        with open(os.path.join(self.out, "tables.md"), "w") as f:
            f.write(text)
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.results, f, indent=1, sort_keys=True)
        return text

    def determinism(self):
        name, _ = self.determinism_job()
        orig = name[: -len("-rerun")]
        a, b = self.results.get(orig), self.results.get(name)
        if not a or not b:
            return "not checked (a run is missing)."
        keys = [k for k in a if k not in ("seconds", "wall", "line")]
        same = all(a.get(k) == b.get(k) or (a.get(k) != a.get(k) and b.get(k) != b.get(k)) for k in keys)
        curve = self.results.get(orig + "-curve", {})
        same_curve = all(curve.get(k) == a.get(k) for k in ("test_acc", "test_loss", "val_acc", "val_loss", "final_j"))
        return (f"`{orig}` run twice: {'every number of the result line identical' if same else 'THE NUMBERS DIFFER'}"
                f" ({re.sub(r' seconds=[0-9.]+', '', a.get('line', ''))}); the same cell with the test set evaluated every 20 iterations (the "
                f"plots' run) ends {'identically' if same_curve else 'DIFFERENTLY'}.")


# ---- helpers ---------------------------------------------------------------------------------
RESULT = re.compile(r"^result: (.*)$", re.M)


def parse_result(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    m = RESULT.search(text)
    if not m:
        return None
    r = {"line": m.group(1)}
    for kv in m.group(1).split():
        k, v = kv.split("=", 1)
        r[k] = float(v)
    r["diverged"] = bool(r.get("diverged")) or not (r.get("test_acc", 0) == r.get("test_acc", 0)) \
        or r.get("test_acc", 1) <= CHANCE + 0.02
    t = re.search(r"^test: accuracy [^(]*\((\d+) images\)", text, re.M)
    if t:
        r["ntest"] = int(t.group(1))
    return r


def ok(r):
    return r is not None and "failed" not in r and not r.get("diverged")


def summary(r):
    if "failed" in r:
        return "FAILED " + r["failed"]
    return (f"test {100 * r['test_acc']:.2f}% val {100 * r['val_acc']:.0f}% loss {r['val_loss']:.3f}"
            f"{' DIVERGED' if r['diverged'] else ''}")


def cost_first(job):  # the feature-map regularizers take longest: start them first
    name = job[0]
    return 0 if "delta" in name else 1 if "/fm" in name or "dtnh-fm" in name else 2


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def std(xs):
    if len(xs) < 2:
        return float("nan")
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def stats(rs):
    good = [100 * r["test_acc"] for r in rs if ok(r)]
    return {"mean": mean(good), "std": std(good), "n": len(rs), "bad": len(rs) - len(good)}


def fmt_pm(xs, signed=False):
    if not xs:
        return "–"
    m = f"{mean(xs):+.1f}" if signed else f"{mean(xs):.1f}"
    return m + (f" ± {std(xs):.1f}" if len(xs) > 1 else "")


def fmt_cell(c, want=None):
    if c["n"] == 0:
        return "–"
    short = f" [{c['n']}]" if want and c["n"] < want else ""
    if c["bad"] == c["n"]:
        return f"div {c['bad']}"
    s = f"{c['mean']:.1f}" + (f" ± {c['std']:.1f}" if c["n"] - c["bad"] > 1 else "")
    return s + (f" (div {c['bad']})" if c["bad"] else "") + short


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores shared with other jobs ({platform.system()} {platform.machine()})"


def write_benchmarks(path, text):
    """Replaces what lies between the transfer markers of BENCHMARKS.md."""
    begin, end = "<!-- bench-transfer:begin -->", "<!-- bench-transfer:end -->"
    with open(path) as f:
        doc = f.read()
    i, j = doc.find(begin), doc.find(end)
    if i < 0 or j < i:
        print(f"bench-transfer: {path} has no {begin} ... {end} markers; the tables stay in tables.md")
        return
    with open(path + ".tmp", "w") as f:
        f.write(doc[: i + len(begin)] + "\n" + text + doc[j:])
    os.replace(path + ".tmp", path)
    print(f"bench-transfer: tables written into {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--deadline", default=None, help="HH:MM: start no run after this time (local)")
    p.add_argument("--report-only", action="store_true", help="run nothing: the tables from the runs in --out")
    p.add_argument("--fresh", action="store_true", help="run everything again (no reuse of earlier runs)")
    p.add_argument("--benchmarks", default=None, help="write the tables between the markers of this file")
    p.add_argument("--plots-to", default=None, help="copy the D-A to FM-B plots (SVG) here")
    a = p.parse_args()
    a.out = a.out or ("build/transfer-quick" if a.quick else "build/transfer")
    a.command = "make bench-transfer" + (" QUICK=1" if a.quick else "") + (f" DEADLINE={a.deadline}" if a.deadline else "")
    a.load_at_start = " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "?"
    for f in (os.path.join(BIN, "dtnh-train"), f"{D}/digits-images-idx3-ubyte", f"{D}/fashion-train-images-idx3-ubyte"):
        if not os.path.exists(f):
            sys.exit(f"bench-transfer: {f} is missing (make examples data)")
    text = Bench(a).run()
    print(text)
    if a.benchmarks and not a.quick:
        write_benchmarks(a.benchmarks, text)


if __name__ == "__main__":
    main()
