#!/usr/bin/python3
"""Moves ResNet-18 weights between PyTorch and dtnh's safetensors files, with nothing but the
standard library and torch (no `safetensors` package). Run with Debian's python, which has
torch and torchvision:

    # a PyTorch checkpoint (a state_dict, a pickled torchvision model, or a dict holding one
    # under "state_dict" or "model") to safetensors, F32 by default:
    /usr/bin/python3 tools/export_torchvision.py to-safetensors resnet18.pth weights.safetensors
    /usr/bin/python3 tools/export_torchvision.py to-safetensors resnet18.pth w16.safetensors --dtype f16

    # a file dtnh saved back to a state_dict that torchvision loads with strict=True:
    /usr/bin/python3 tools/export_torchvision.py to-pth weights.safetensors resnet18.pth

    # what a file holds, and a strict load into a torchvision-layout model:
    /usr/bin/python3 tools/export_torchvision.py check weights.safetensors

Any width that follows torchvision's naming works (64 is torchvision's resnet18; 16 and 32
make the small variants), with either stem: "imagenet" (conv1 7x7 stride 2 and a max-pool)
or "cifar" (conv1 3x3 stride 1, no max-pool), told apart by conv1's kernel size.
Names must be torchvision's resnet18 state_dict names; a "module." prefix (DataParallel) is
removed. Anything else is refused with the offending names listed (--force writes it anyway).
"""
import argparse
import collections
import json
import struct
import sys

import torch
import torch.nn as nn

DTYPES = {  # safetensors name: (torch dtype, bytes)
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
}
TORCH_TO_ST = {v[0]: k for k, v in DTYPES.items()}


# ---- safetensors, standard library + torch --------------------------------------------------

def tensor_bytes(t):
    """Little-endian bytes of a contiguous CPU tensor."""
    t = t.detach().cpu().contiguous()
    if t.dtype in (torch.float16, torch.bfloat16):
        arr = t.view(torch.int16).numpy()
    else:
        arr = t.numpy()
    if sys.byteorder != "little":
        arr = arr.byteswap()
    return arr.tobytes()


def save_safetensors(tensors, path, metadata=None):
    """tensors: an ordered mapping name -> tensor (F32, F16, BF16 or I64). Written in that
    order, header padded with spaces to a multiple of 8 as the reference writer does."""
    header = collections.OrderedDict()
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, offset = [], 0
    for name, t in tensors.items():
        if t.dtype not in TORCH_TO_ST:
            raise ValueError("%s: dtype %s is not F32, F16, BF16 or I64" % (name, t.dtype))
        b = tensor_bytes(t)
        header[name] = {"dtype": TORCH_TO_ST[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    """Returns (OrderedDict name -> tensor in header order, metadata dict)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError("%s: truncated" % path)
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise ValueError("%s: header length %d runs past the end" % (path, n))
    header = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=collections.OrderedDict)
    meta = header.pop("__metadata__", {}) or {}
    data = raw[8 + n:]
    out = collections.OrderedDict()
    for name, e in header.items():
        dtype, size = DTYPES[e["dtype"]]
        begin, end = e["data_offsets"]
        count = 1
        for d in e["shape"]:
            count *= d
        if end - begin != count * size or end > len(data):
            raise ValueError("%s: tensor %s has bad data_offsets" % (path, name))
        buf = bytearray(data[begin:end])
        if count == 0:
            t = torch.empty(e["shape"], dtype=dtype)
        else:
            if dtype in (torch.float16, torch.bfloat16):
                t = torch.frombuffer(buf, dtype=torch.int16).view(dtype)
            else:
                t = torch.frombuffer(buf, dtype=dtype)
            if sys.byteorder != "little":
                t = torch.from_numpy(t.numpy().byteswap())
            t = t.reshape(e["shape"]).clone()
        out[name] = t
    return out, meta


# ---- a torchvision-layout ResNet-18 of any width ------------------------------------------------

class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock, module for module (so names match)."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision.models.resnet18's layout with a base width, input channels and a stem."""

    def __init__(self, width=64, in_channels=3, num_classes=1000, stem="imagenet"):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        self.inplanes = width
        self.layer1 = self._layer(width, 1)
        self.layer2 = self._layer(width * 2, 2)
        self.layer3 = self._layer(width * 4, 2)
        self.layer4 = self._layer(width * 8, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8, num_classes)

    def _layer(self, planes, stride):
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes))
        blocks = [BasicBlock(self.inplanes, planes, stride, down), BasicBlock(planes, planes)]
        self.inplanes = planes
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def make_model(width=64, in_channels=3, num_classes=1000, stem="imagenet"):
    """torchvision's own resnet18 where it can be (width 64; the cifar stem swapped in as
    people do), else the ResNet18 above."""
    if width == 64:
        import torchvision
        m = torchvision.models.resnet18(num_classes=num_classes)
        if stem == "cifar" or in_channels != 3:
            k, s, p = (3, 1, 1) if stem == "cifar" else (7, 2, 3)
            m.conv1 = nn.Conv2d(in_channels, 64, k, s, p, bias=False)
        if stem == "cifar":
            m.maxpool = nn.Identity()
        return m
    return ResNet18(width, in_channels, num_classes, stem)


def describe(sd):
    """(width, in_channels, num_classes, stem) told by a state_dict's shapes."""
    w = sd["conv1.weight"]
    if w.dim() != 4 or w.shape[2] != w.shape[3] or w.shape[2] not in (3, 7):
        raise ValueError("conv1.weight has shape %s, expected [width, in, 7|3, 7|3]"
                         % list(w.shape))
    stem = "imagenet" if w.shape[2] == 7 else "cifar"
    if "fc.weight" not in sd:
        raise ValueError("no fc.weight: not a ResNet-18 state_dict")
    return int(w.shape[0]), int(w.shape[1]), int(sd["fc.weight"].shape[0]), stem


def expected_names(width, in_channels, num_classes, stem):
    return list(ResNet18(width, in_channels, num_classes, stem).state_dict().keys())


# ---- checkpoints ---------------------------------------------------------------------------------

def state_dict_of(obj):
    """A state_dict from whatever torch.load returned."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], (dict, nn.Module)):
                return state_dict_of(obj[key])
        sd = collections.OrderedDict()
        for k, v in obj.items():
            if torch.is_tensor(v):
                sd[k[len("module."):] if k.startswith("module.") else k] = v
        if sd:
            return sd
    raise ValueError("no state_dict found in the checkpoint")


def check_names(sd, force=False):
    """Refuses names that are not torchvision's resnet18 names, listing them."""
    width, cin, classes, stem = describe(sd)
    want = expected_names(width, cin, classes, stem)
    missing = [n for n in want if n not in sd]
    unknown = [n for n in sd if n not in want]
    if (missing or unknown) and not force:
        raise ValueError("not a torchvision ResNet-18 state_dict:\n  missing: %s\n  unknown: %s"
                         % (", ".join(missing) or "-", ", ".join(unknown) or "-"))
    return width, cin, classes, stem


def to_safetensors(sd, path, dtype="f32", force=False):
    width, cin, classes, stem = check_names(sd, force)
    target = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    out = collections.OrderedDict()
    for name, t in sd.items():
        t = t.detach().cpu()
        out[name] = t.to(torch.int64) if not t.is_floating_point() else t.to(target)
    save_safetensors(out, path, {"format": "pt", "arch": "resnet18", "width": width,
                                 "stem": stem, "in_channels": cin, "num_classes": classes})
    return width, cin, classes, stem


def to_state_dict(path):
    """A state_dict in torchvision's order, floats as float32, counters as int64."""
    tensors, _ = load_safetensors(path)
    width, cin, classes, stem = describe(tensors)
    order = expected_names(width, cin, classes, stem)
    sd = collections.OrderedDict()
    for name in order + [n for n in tensors if n not in order]:
        if name in tensors:
            t = tensors[name]
            sd[name] = t.to(torch.int64) if not t.is_floating_point() else t.to(torch.float32)
    return sd


def strict_load(sd):
    """Loads sd into a fresh torchvision-layout model with strict=True; returns the model."""
    width, cin, classes, stem = describe(sd)
    model = make_model(width, cin, classes, stem)
    model.load_state_dict(sd, strict=True)
    return model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("to-safetensors", help="a PyTorch checkpoint to safetensors")
    a.add_argument("src")
    a.add_argument("dst")
    a.add_argument("--dtype", choices=("f32", "f16", "bf16"), default="f32")
    a.add_argument("--force", action="store_true", help="write names that are not resnet18's")
    b = sub.add_parser("to-pth", help="a safetensors file to a torchvision state_dict .pth")
    b.add_argument("src")
    b.add_argument("dst")
    c = sub.add_parser("check", help="describe a safetensors file and load it with strict=True")
    c.add_argument("src")
    args = ap.parse_args(argv)

    if args.cmd == "to-safetensors":
        sd = state_dict_of(torch.load(args.src, map_location="cpu"))
        width, cin, classes, stem = to_safetensors(sd, args.dst, args.dtype, args.force)
        print("%s: %d tensors, width %d, %d input channels, %d classes, %s stem"
              % (args.dst, len(sd), width, cin, classes, stem))
    elif args.cmd == "to-pth":
        sd = to_state_dict(args.src)
        strict_load(sd)  # refuse to write what torchvision would not load
        torch.save(sd, args.dst)
        print("%s: %d tensors, loads with strict=True" % (args.dst, len(sd)))
    else:
        sd = to_state_dict(args.src)
        width, cin, classes, stem = describe(sd)
        strict_load(sd)
        print("%s: %d tensors, width %d, %d input channels, %d classes, %s stem; "
              "loads into a torchvision-layout resnet18 with strict=True"
              % (args.src, len(sd), width, cin, classes, stem))
    return 0


if __name__ == "__main__":
    sys.exit(main())
