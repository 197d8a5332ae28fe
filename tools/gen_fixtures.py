#!/usr/bin/python3
"""Writes tests/fixtures/resnet_*.safetensors: what PyTorch computes for a torchvision-layout
ResNet-18, which tests/test_torch.c recomputes and compares. Run by hand with Debian's python
(it has torch and torchvision); the outputs are committed, so the tests need no Python:

    /usr/bin/python3 tools/gen_fixtures.py

CONFIGURATIONS (one file each, training and evaluation mode)
    name          stem      width  in_ch  input   batch  classes
    cifar_w16     cifar       16     1    28x28     4      10     full gradients stored
    cifar_w64     cifar       64     3    16x16     2      10
    imagenet_w16  imagenet    16     3    64x64     2       7
    imagenet_w64  imagenet    64     3    64x64     2    1000
Width 64 is torchvision.models.resnet18 itself (conv1 3x3 stride 1 padding 1 and maxpool =
Identity for the cifar stem); width 16 is tools/export_torchvision.py's ResNet18, which has
torchvision's module names. The reference runs in float64 (the float32 weights widened), so
it is PyTorch's answer without PyTorch's own rounding.

WEIGHTS AND INPUTS COME FROM A FORMULA, so no fixture stores weights. With
    h(i, k) = lowbias32((i * 0x9E3779B1 + (k + 1) * 0x85EBCA77) mod 2^32)
    lowbias32(x): x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16
                  (products mod 2^32)
    u(i, k) = (h(i, k) >> 8) * 2^-23 - 1        (exact in float32, in [-1, 1))
element i (flat, row-major) of the k-th state_dict tensor (parameters and buffers in
torchvision's order, k from 0) is, computed in double and rounded once to float32:
    convolution weight   u * sqrt(6 / fan_in)            fan_in = in_channels * kh * kw
    BN weight            0.7 + 0.25 u        BN bias             0.1 u
    BN running_mean      0.1 u               BN running_var      1 + 0.5 u
    BN num_batches_tracked 0
    fc.weight            u / sqrt(in_features)   fc.bias          0.1 u
    input x[n,c,h,w]     u(i, 1000)          label[n]            (7 n + 3) mod classes

FILE LAYOUT: tests/fixtures/resnet_<name>_<train|eval>.safetensors, tensors
    logits                  F32 [batch, classes]
    loss                    F32 []    mean cross-entropy
    labels                  I64 [batch]
    input_sum               F32 []    sum of the input (checks the formula)
    weight_sum.<state name> F32 []    sum of each float state tensor (checks the formula)
    grad_norm.<param>       F32 []    ||dloss/dparam||_2
    grad_dot.<param>        F32 []    <dloss/dparam, r>, r[i] = u(i, k + 3000)
    grad_index.<param>      I64 [16]  sampled flat indices: h(j, k + 2000) mod count
    grad_sample.<param>     F32 [16]  the gradient there
    grad.<param>            F32 [..]  the whole gradient (cifar_w16 training only)
    running.<buffer>        F32/I64   every BN buffer after the step (training mode)
and metadata: config, stem, width, in_channels, height, width_px, batch, classes, mode,
torch version.

A PYTORCH CHECKPOINT, LOADED AS USERS LOAD THEIRS: a width-4 ResNet-18 (imagenet stem, 5
classes) with torch.manual_seed(0)'s default initialisation and random running statistics
(num_batches_tracked 123) is exported by tools/export_torchvision.py to
resnet_w4_weights.safetensors; resnet_w4_expect.safetensors holds its evaluation-mode
logits for the input u(i, 1000) of shape [2, 3, 32, 32] (float32 PyTorch, as users run it). "train" is model.train() (batch statistics; one forward updates the running
statistics, momentum 0.1, unbiased variance); "eval" is model.eval() (running statistics),
and both take the gradient of the loss with respect to every parameter.
"""
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_torchvision as ex  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
SAMPLES = 16
CONFIGS = [  # name, stem, width, in_channels, size, batch, classes, full gradients
    ("cifar_w16", "cifar", 16, 1, 28, 4, 10, True),
    ("cifar_w64", "cifar", 64, 3, 16, 2, 10, False),
    ("imagenet_w16", "imagenet", 16, 3, 64, 2, 7, False),
    ("imagenet_w64", "imagenet", 64, 3, 64, 2, 1000, False),
]
M32 = 0xFFFFFFFF


def hash32(i, k):
    x = (np.asarray(i, dtype=np.uint64) * 0x9E3779B1 + (k + 1) * 0x85EBCA77) & M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    x ^= x >> 16
    return x


def uniform(count, k):
    """u(i, k) for i < count, as float64 (exactly float32 values)."""
    return (hash32(np.arange(count, dtype=np.uint64), k) >> 8).astype(np.float64) * 2.0 ** -23 - 1.0


def formula(name, shape, k):
    """The float32 value of state tensor k (see the module's docstring)."""
    count = int(np.prod(shape)) if len(shape) else 1
    u = uniform(count, k)
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if name == "fc.weight":
        v = u / math.sqrt(shape[1])
    elif name == "fc.bias":
        v = 0.1 * u
    elif len(shape) == 4:
        v = u * math.sqrt(6.0 / (shape[1] * shape[2] * shape[3]))
    elif leaf == "weight":
        v = 0.7 + 0.25 * u
    elif leaf == "bias" or leaf == "running_mean":
        v = 0.1 * u
    elif leaf == "running_var":
        v = 1.0 + 0.5 * u
    else:
        raise ValueError(name)
    return torch.from_numpy(v.astype(np.float32)).reshape(shape)


def build(stem, width, cin, classes):
    model = ex.make_model(width, cin, classes, stem)
    if width == 64:  # the formula must fill the same layout in both classes
        own = ex.ResNet18(width, cin, classes, stem).state_dict()
        assert [(k, v.shape) for k, v in own.items()] == \
               [(k, v.shape) for k, v in model.state_dict().items()]
    sd = model.state_dict()
    filled = {name: formula(name, tuple(sd[name].shape), k) for k, name in enumerate(sd)}
    model.load_state_dict(filled, strict=True)
    return model, filled


def sample_indices(count, k):
    return (hash32(np.arange(SAMPLES, dtype=np.uint64), k + 2000) % count).astype(np.int64)


def run(cfg, mode):
    name, stem, width, cin, size, batch, classes, full = cfg
    model, filled = build(stem, width, cin, classes)
    model = model.double()
    model.train(mode == "train")
    x32 = torch.from_numpy(uniform(batch * cin * size * size, 1000).astype(np.float32))
    x = x32.reshape(batch, cin, size, size).double()
    labels = torch.tensor([(7 * n + 3) % classes for n in range(batch)], dtype=torch.int64)
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()

    out = {"logits": logits.detach().float(), "loss": loss.detach().float().reshape(()),
           "labels": labels, "input_sum": x32.double().sum().float().reshape(())}
    state_names = list(filled)
    for k, sname in enumerate(state_names):
        if filled[sname].is_floating_point():
            out["weight_sum." + sname] = filled[sname].double().sum().float().reshape(())
    params = dict(model.named_parameters())
    for k, sname in enumerate(state_names):
        if sname not in params:
            continue
        g = params[sname].grad.detach().reshape(-1)
        r = torch.from_numpy(uniform(g.numel(), k + 3000))
        idx = sample_indices(g.numel(), k)
        out["grad_norm." + sname] = g.norm().float().reshape(())
        out["grad_dot." + sname] = (g * r).sum().float().reshape(())
        out["grad_index." + sname] = torch.from_numpy(idx)
        out["grad_sample." + sname] = g[torch.from_numpy(idx)].float()
        if full and mode == "train":
            out["grad." + sname] = g.float().reshape(params[sname].shape)
    if mode == "train":
        for sname, t in model.state_dict().items():
            if sname not in params:
                out["running." + sname] = t.float() if t.is_floating_point() else t
    meta = {"config": name, "stem": stem, "width": width, "in_channels": cin, "height": size,
            "width_px": size, "batch": batch, "classes": classes, "mode": mode,
            "torch": torch.__version__, "generator": "tools/gen_fixtures.py"}
    path = os.path.join(OUT, "resnet_%s_%s.safetensors" % (name, mode))
    ex.save_safetensors(out, path, meta)
    print("%-45s loss %.6f  |logits| max %.3f  %7d bytes" % (
        os.path.relpath(path), loss.item(), logits.abs().max().item(), os.path.getsize(path)))


def export_checkpoint():
    torch.manual_seed(0)
    model = ex.ResNet18(4, 3, 5, "imagenet")
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn_like(buf))
            elif name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand_like(buf))
            else:
                buf.fill_(123)
    model.eval()
    path = os.path.join(OUT, "resnet_w4_weights.safetensors")
    ex.to_safetensors(model.state_dict(), path)
    x = torch.from_numpy(uniform(2 * 3 * 32 * 32, 1000).astype(np.float32)).reshape(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
    expect = os.path.join(OUT, "resnet_w4_expect.safetensors")
    ex.save_safetensors({"logits": logits}, expect, {"height": 32, "batch": 2})
    print("%-45s %7d bytes" % (os.path.relpath(path), os.path.getsize(path)))


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    for cfg in CONFIGS:
        for mode in ("train", "eval"):
            run(cfg, mode)
    export_checkpoint()


if __name__ == "__main__":
    main()
