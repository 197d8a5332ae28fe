#!/usr/bin/python3
"""Writes tests/fixtures/dtnh_step_{l2sp,fmap}.safetensors: one full DTNH step on a small
ResNet-18 computed by PyTorch (in float64), which tests/test_dtnh.c recomputes. Run by hand
with Debian's python (it has torch):

    /usr/bin/python3 tools/gen_dtnh_fixtures.py

THE NETWORKS come from the closed-form formula of tools/gen_fixtures.py (see its docstring):
state tensor k of the target is formula(name, shape, k). Input and labels as there.
    l2sp: w_s = w + PULL * g_J / rms(g_J) + 0.01 u(i, k + 500) on the backbone (as if the
          target had moved from w_s along -g_J, the conflict DTNH is about), stored in the file
    fmap: the source model (w_s and its BN statistics) is formula(name, shape, k + SOURCE_KEY)
Configuration: cifar stem, width 4, 3 input channels, 16x16 inputs, batch 4, 10 classes.

THE STEP (the paper's Algorithm 1, global scope, then plain SGD with lr):
    target in training mode (batch statistics); J = mean cross-entropy; g_J = dJ/dw
    l2sp: g_Omega = alpha (w - w_s) on every parameter but fc.*, beta w on fc.weight, fc.bias
    fmap: Omega = alpha/2 * (1/batch) * sum over layer1..layer4 of ||F_l(w,x) - F_l(w_s,x)||^2,
          the source in evaluation mode (its running statistics); g_Omega = dOmega/dw
    when <g_J, g_Omega> < 0: g_Omega -= <g_J,g_Omega>/||g_J||^2 g_J;  d = g_J + g_Omega
    w1 = w - lr d
Both cases project (the case worth checking): SOURCE_KEY is the first that does.

FILE LAYOUT: tensors
    update.<param>  F32  w1 - w, the whole update of every parameter
    w_src.<param>   F32  w_s (l2sp only)
    loss, omega, dot, norm_g_j, norm_g_omega   F32 []   J, Omega, <g_J,g_Omega>, the norms
    projected       I64 [1]
and metadata: case, width, stem, in_channels, height, batch, classes, lr, alpha, beta,
source_key, torch version.
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_torchvision as ex  # noqa: E402
import gen_fixtures as gf  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
STEM, WIDTH, CIN, SIZE, BATCH, CLASSES = "cifar", 4, 3, 16, 4, 10
HOOKS = ("layer1", "layer2", "layer3", "layer4")
CASES = {"l2sp": dict(lr=0.1, alpha=0.5, beta=0.3), "fmap": dict(lr=0.1, alpha=0.02, beta=0.0)}
PULL = 0.05


def filled_model(key):
    model = ex.make_model(WIDTH, CIN, CLASSES, STEM)
    sd = model.state_dict()
    model.load_state_dict({n: gf.formula(n, tuple(sd[n].shape), k + key) for k, n in enumerate(sd)},
                          strict=True)
    return model.double()


def batch():
    x32 = torch.from_numpy(gf.uniform(BATCH * CIN * SIZE * SIZE, 1000).astype(np.float32))
    labels = torch.tensor([(7 * n + 3) % CLASSES for n in range(BATCH)], dtype=torch.int64)
    return x32.reshape(BATCH, CIN, SIZE, SIZE).double(), labels


def hooked(model):
    feats = {}
    for name in HOOKS:
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: feats.__setitem__(name, o))
    return feats


def gradients(case, key, p):
    """J, Omega, the parameters, g_J and g_Omega of the target at its formula weights."""
    x, labels = batch()
    target = filled_model(0)
    target.train()
    names = [n for n, _ in target.named_parameters()]
    params = [q for _, q in target.named_parameters()]
    feats = hooked(target)
    loss = torch.nn.functional.cross_entropy(target(x), labels)
    if case == "l2sp":
        g_j = torch.autograd.grad(loss, params)
        rms = (sum(float((g * g).sum()) for g in g_j) / sum(g.numel() for g in g_j)) ** 0.5
        w_src = {}
        for k, (n, q, g) in enumerate(zip(names, params, g_j)):
            noise = torch.from_numpy(gf.uniform(q.numel(), k + 500)).reshape(q.shape)
            ws = q.detach() + (PULL / rms) * g + 0.01 * noise
            w_src[n] = (q.detach() if n.startswith("fc.") else ws).float().double()
        g_om = [p["beta"] * q.detach() if n.startswith("fc.") else p["alpha"] * (q.detach() - w_src[n])
                for n, q in zip(names, params)]
        omega = sum(0.5 * (p["beta"] if n.startswith("fc.") else p["alpha"]) *
                    float(((q.detach() - (0 if n.startswith("fc.") else w_src[n])) ** 2).sum())
                    for n, q in zip(names, params))
        return float(loss), omega, names, params, list(g_j), g_om, w_src
    else:
        source = filled_model(key)
        source.eval()
        sfeats = hooked(source)
        with torch.no_grad():
            source(x)
        omega_t = sum(((feats[h] - sfeats[h]) ** 2).sum() for h in HOOKS) * (0.5 * p["alpha"] / BATCH)
        g_j = torch.autograd.grad(loss, params, retain_graph=True)
        g_om = [g if g is not None else torch.zeros_like(q)  # fc is above every hook
                for g, q in zip(torch.autograd.grad(omega_t, params, allow_unused=True), params)]
        omega = float(omega_t)
    return float(loss), omega, names, params, list(g_j), list(g_om), None


def step(case, key):
    p = CASES[case]
    loss, omega, names, params, g_j, g_om, w_src = gradients(case, key, p)
    dot = sum(float((a * b).sum()) for a, b in zip(g_j, g_om))
    jj = sum(float((a * a).sum()) for a in g_j)
    oo = sum(float((b * b).sum()) for b in g_om)
    projected = dot < 0 and jj >= 1e-20
    c = dot / jj if projected else 0.0
    update = {n: -p["lr"] * (a + (b - c * a)) for n, a, b in zip(names, g_j, g_om)}
    return dict(loss=loss, omega=omega, dot=dot, jj=jj, oo=oo, projected=projected, update=update,
                w_src=w_src)


def write(case):
    for key in range(100, 1000, 100):
        r = step(case, key)
        if r["projected"]:
            break
    else:
        raise RuntimeError("no source key makes %s project" % case)
    p = CASES[case]
    out = {"update." + n: u.float() for n, u in r["update"].items()}
    if r["w_src"]:
        out.update({"w_src." + n: w.float() for n, w in r["w_src"].items()})
    for k in ("loss", "omega", "dot"):
        out[k] = torch.tensor(r[k], dtype=torch.float32)
    out["norm_g_j"] = torch.tensor(r["jj"] ** 0.5, dtype=torch.float32)
    out["norm_g_omega"] = torch.tensor(r["oo"] ** 0.5, dtype=torch.float32)
    out["projected"] = torch.tensor([int(r["projected"])], dtype=torch.int64)
    meta = {"case": case, "width": WIDTH, "stem": STEM, "in_channels": CIN, "height": SIZE,
            "batch": BATCH, "classes": CLASSES, "lr": p["lr"], "alpha": p["alpha"], "beta": p["beta"],
            "source_key": key, "torch": torch.__version__, "generator": "tools/gen_dtnh_fixtures.py"}
    path = os.path.join(OUT, "dtnh_step_%s.safetensors" % case)
    ex.save_safetensors(out, path, meta)
    print("%-40s J %.5f Omega %.5f cos %.4f source_key %d  %d bytes" % (
        os.path.relpath(path), r["loss"], r["omega"], r["dot"] / (r["jj"] * r["oo"]) ** 0.5, key,
        os.path.getsize(path)))


def main():
    torch.set_num_threads(1)
    for case in CASES:
        write(case)


if __name__ == "__main__":
    main()
