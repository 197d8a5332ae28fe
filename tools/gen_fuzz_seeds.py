#!/usr/bin/python3
"""Writes the seed corpora of the libFuzzer targets in tests/fuzz/ (tests/fuzz/corpus/<target>):
a few small valid inputs of each format and a few nearly valid ones. Python standard library
only; run by hand from the repository root (`/usr/bin/python3 tools/gen_fuzz_seeds.py`), the
outputs are committed. Inputs the fuzzers found later are added by hand beside these, and the
checkpoint seed comes from tests/fuzz/fuzz_checkpoint.c itself (see there)."""
import json
import os
import struct

ROOT = "tests/fuzz/corpus"


def put(target, name, data):
    os.makedirs(os.path.join(ROOT, target), exist_ok=True)
    with open(os.path.join(ROOT, target, name), "wb") as f:
        f.write(data)


def idx_images(n, rows, cols):
    return struct.pack(">IIII", 0x803, n, rows, cols) + bytes((i * 37) % 256 for i in range(n * rows * cols))


def idx_labels(labels):
    return struct.pack(">II", 0x801, len(labels)) + bytes(labels)


def idx_input(images, labels):
    """The fuzz_idx layout: flags (bit 0: labels follow), images length (u16 LE), images, labels."""
    flags = 1 if labels is not None else 0
    return bytes([flags]) + struct.pack("<H", len(images)) + images + (labels or b"")


def seeds_idx():
    put("idx", "three-2x3-labelled", idx_input(idx_images(3, 2, 3), idx_labels([2, 0, 1])))
    put("idx", "images-only", idx_input(idx_images(2, 4, 4), None))
    put("idx", "count-mismatch", idx_input(idx_images(3, 2, 2), idx_labels([1, 1])))
    put("idx", "short-body", idx_input(idx_images(4, 3, 3)[:-5], idx_labels([0, 1, 2, 3])))
    put("idx", "big-label", idx_input(idx_images(2, 1, 1), idx_labels([250, 3])))


def cifar_record(label, k):
    return bytes([label]) + bytes((i * k + label) % 256 for i in range(3072))


def seeds_cifar():
    put("cifar", "two-records", cifar_record(3, 5) + cifar_record(9, 11))
    put("cifar", "one-record", cifar_record(0, 1))
    put("cifar", "truncated", (cifar_record(1, 3) + cifar_record(2, 7))[:4000])
    put("cifar", "bad-label", cifar_record(10, 2))


def seeds_pnm():
    put("pnm", "p5-4x3", b"P5\n4 3\n255\n" + bytes(range(0, 240, 20)))
    put("pnm", "p6-2x2", b"P6 2 2 255\n" + bytes(range(12)))
    put("pnm", "p2-comments", b"P2\n# a comment\n3 2\n# another\n15\n0 1 2\n13 14 15\n")
    put("pnm", "p3-2x1", b"P3\n2 1\n100\n100 0 50  7 8 9\n")
    put("pnm", "p5-16bit-maxval", b"P5\n2 1\n65535\n" + bytes(4))
    put("pnm", "p6-short", b"P6\n3 3\n255\n" + bytes(10))


def seeds_cli():
    args = [
        ["--steps", "100", "--lr=0.5", "--mode", "sum"],
        ["--classes", "1,2,3", "--verbose", "--out", "/tmp/x"],
        ["--help"],
        ["--steps=abc", "--lr", "nan"],
        ["--classes=1,,2", "--mode=nope", "positional"],
    ]
    for i, a in enumerate(args):
        put("cli", "args-%d" % i, b"\0".join(s.encode() for s in a))


def seeds_train_opts():
    args = [
        ["--data", "data/fashion-train-images-idx3-ubyte", "--labels", "x", "--classes", "5,6,7,8,9", "--shots", "30",
         "--reg", "l2sp", "--dtnh", "global", "--alpha", "0.01", "--lr", "0.01", "--lr-step", "225", "--iters", "300"],
        ["--weights=src.safetensors", "--reg=delta", "--hooks", "layer1,layer4", "--optim", "adam", "--checkpoint",
         "c.ckpt", "--checkpoint-every", "10", "--resume", "c.ckpt"],
        ["--width", "4", "--stem", "imagenet", "--size", "64", "--mean", "0.485,0.456,0.406", "--std",
         "0.229,0.224,0.225", "--crop-pad", "4", "--flip", "--memory", "1"],
        ["--help"],
        ["--iters", "-3", "--batch", "1", "--freeze", "nope"],
    ]
    for i, a in enumerate(args):
        put("train_opts", "args-%d" % i, b"\0".join(s.encode() for s in a))


def safetensors(tensors, meta=None):
    """tensors: (name, dtype, shape, raw bytes); header padded with spaces to 8 as the reference."""
    header, off, data = {}, 0, b""
    if meta:
        header["__metadata__"] = meta
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f32(values):
    return struct.pack("<%df" % len(values), *values)


def seeds_safetensors():
    put("safetensors", "f32-f16-bf16-i64", safetensors([
        ("a", "F32", [2, 2], f32([1, -2, 3.5, 0])),
        ("b", "F16", [3], struct.pack("<3H", 0x3C00, 0xC000, 0x7BFF)),
        ("c", "BF16", [1, 2], struct.pack("<2H", 0x3F80, 0x4000)),
        ("n", "I64", [], struct.pack("<q", 7)),
    ], {"format": "pt", "dtnh.iteration": "12"}))
    put("safetensors", "empty", safetensors([]))
    put("safetensors", "nan", safetensors([("x", "F32", [2], f32([float("nan"), 1]))]))
    # The stem and head of a width-4 ImageNet-stem ResNet-18 with 5 classes (fuzz_safetensors'
    # network): the loader matches these names and shapes and goes through its full path.
    c = 4
    put("safetensors", "resnet-w4-stem-head", safetensors([
        ("conv1.weight", "F32", [c, 3, 7, 7], f32([((i * 13) % 17 - 8) / 64 for i in range(c * 3 * 49)])),
        ("bn1.weight", "F32", [c], f32([1] * c)),
        ("bn1.bias", "F32", [c], f32([0] * c)),
        ("bn1.running_mean", "F32", [c], f32([0.1] * c)),
        ("bn1.running_var", "F32", [c], f32([0.9] * c)),
        ("bn1.num_batches_tracked", "I64", [], struct.pack("<q", 3)),
        ("fc.weight", "F32", [5, 8 * c], f32([(i % 7 - 3) / 10 for i in range(5 * 8 * c)])),
        ("fc.bias", "F32", [5], f32([0.5] * 5)),
    ]))


if __name__ == "__main__":
    seeds_idx()
    seeds_cifar()
    seeds_pnm()
    seeds_cli()
    seeds_train_opts()
    seeds_safetensors()
