#!/usr/bin/python3
"""Writes the tiny crafted files of tests/fixtures/data/ that tests/test_data.c reads.

    /usr/bin/python3 tools/make_data_fixtures.py      (Debian's python3: it has torch)

Every file is small and made from a formula that the tests restate; resize-golden.txt holds
PyTorch's own F.interpolate(mode="bilinear", align_corners=False) results, so the C resize
is checked against PyTorch, not against itself.
"""
import os
import shutil
import struct

import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "data")


def write(name, data, mode="wb"):
    path = os.path.join(OUT, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as f:
        f.write(data)


def idx_images(n, h, w, pixels, magic=0x803):
    return struct.pack(">IIII", magic, n, h, w) + bytes(pixels)


def idx_labels(labels):
    return struct.pack(">II", 0x801, len(labels)) + bytes(labels)


def pgm(kind, w, h, values, maxval=255, comment=b""):
    head = b"P%d\n" % kind + comment + b"%d %d\n%d\n" % (w, h, maxval)
    if kind in (5, 6):
        return head + bytes(values)
    return head + b"\n".join(b" ".join(b"%d" % v for v in values[i:i + 6])
                             for i in range(0, len(values), 6)) + b"\n"


def idx_fixtures():
    # tiny: 3 images of 2x3, pixel j of image k = 10 k + j + 1; labels 2, 0, 1
    pixels = [10 * k + j + 1 for k in range(3) for j in range(6)]
    tiny = idx_images(3, 2, 3, pixels)
    write("tiny-images.idx3", tiny)
    write("tiny-labels.idx1", idx_labels([2, 0, 1]))
    write("bad-magic.idx3", idx_images(3, 2, 3, pixels, magic=0x801))
    write("truncated.idx3", tiny[:-2])
    write("short-labels.idx1", idx_labels([2, 0]))


def cifar_record(label, r):
    return bytes([label]) + bytes((r * 7 + p) % 256 for p in range(3072))


def cifar_fixtures():
    # pixel p of record r = (7 r + p) mod 256; labels 3, 9
    write("tiny.cifar", cifar_record(3, 0) + cifar_record(9, 1))
    write("bad-label.cifar", cifar_record(3, 0) + cifar_record(10, 1))
    write("truncated.cifar", cifar_record(3, 0) + cifar_record(9, 1)[:100])


def folder_fixtures():
    # folder/: classes cat (0) and dog (1), 3x2 grey images; image value formulas below
    grey = lambda base: [base + i for i in range(6)]
    write("folder/cat/b.pgm", pgm(2, 3, 2, [i for i in range(6)], maxval=15,
                                  comment=b"# ASCII, maxval 15: values scale by 255/15\n"))
    write("folder/cat/a.pgm", pgm(5, 3, 2, grey(100), comment=b"# binary, with a comment\n"))
    write("folder/dog/c.pnm", pgm(5, 3, 2, grey(200)))
    write("folder/dog/D.PGM", pgm(5, 3, 2, grey(50)))
    write("folder/dog/notes.txt", b"not an image: skipped\n")
    write("folder/readme.txt", b"a file beside the class folders: skipped\n")
    write("folder/.hidden/x.pgm", pgm(5, 3, 2, grey(0)))
    # folder-rgb/: classes blue (0) and red (1), 2x2 RGB; value of channel c, pixel i = 40 c + i + base
    rgb = lambda base: [40 * c + i + base for i in range(4) for c in range(3)]  # interleaved
    write("folder-rgb/red/x.ppm", pgm(6, 2, 2, rgb(1)))
    write("folder-rgb/blue/y.ppm", pgm(3, 2, 2, rgb(2)))
    write("folder-badsize/a/1.pgm", pgm(5, 3, 2, grey(0)))
    write("folder-badsize/b/2.pgm", pgm(5, 2, 3, grey(0)))
    write("folder-empty-class/a/1.pgm", pgm(5, 3, 2, grey(0)))
    write("folder-empty-class/b/README", b"no images in this class folder\n")
    # headers fine (open succeeds), bodies bad: read fails naming the file
    write("folder-badpixel/a/1.pgm", pgm(2, 3, 2, [1, 2, 300, 4, 5, 6]))
    write("folder-badpixel/a/2.pgm", pgm(5, 3, 2, grey(0))[:-2])


def resize_cases():
    """(channels, h, w, out_h, out_w, mean, std): grey down and up, 28 -> 32, and RGB."""
    half = (0.5, 0.5, 0.5)
    return [
        (1, 5, 7, 3, 4, half, half),
        (1, 5, 7, 9, 11, half, half),
        (1, 28, 28, 32, 32, half, half),
        (3, 4, 5, 7, 3, (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    ]


def resize_fixtures():
    # input byte of channel c at (y, x) = (50 c + 37 y + 11 x + 5) mod 256
    lines = ["# c h w out_h out_w mean[3] std[3] then out values (c, y, x order): PyTorch "
             "F.interpolate(x / 255, (out_h, out_w), mode='bilinear', align_corners=False), "
             "then (y - mean) / std; input byte (50 c + 37 y + 11 x + 5) mod 256"]
    for c, h, w, oh, ow, mean, std in resize_cases():
        img = torch.tensor([[[(50 * k + 37 * y + 11 * x + 5) % 256 for x in range(w)]
                             for y in range(h)] for k in range(c)], dtype=torch.float32)
        out = F.interpolate((img / 255.0)[None], size=(oh, ow), mode="bilinear",
                            align_corners=False)[0]
        m = torch.tensor(mean[:c], dtype=torch.float32)[:, None, None]
        s = torch.tensor(std[:c], dtype=torch.float32)[:, None, None]
        out = (out - m) / s
        head = [c, h, w, oh, ow] + list(mean) + list(std)
        lines.append(" ".join(str(v) for v in head) + " " +
                     " ".join("%.9g" % v for v in out.flatten().tolist()))
    write("resize-golden.txt", ("\n".join(lines) + "\n").encode())


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    idx_fixtures()
    cifar_fixtures()
    folder_fixtures()
    resize_fixtures()
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
