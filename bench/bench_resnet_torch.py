"""PyTorch's side of bench_resnet: the same ResNet-18 configuration, trained and run the same
way (SGD with momentum 0.9, cross-entropy, batch statistics), timed the same way (median of
`iters` steps after one warm-up). Launched by bench_resnet.c with Debian's /usr/bin/python3:

    bench_resnet_torch.py STEM WIDTH IN_CH HW BATCH CLASSES THREADS ITERS

Prints one line: train_ips=.. train_spread=.. infer_ips=.. rss_kb=..
(images per second, the (max - min) / median of the step times, peak resident set in KiB).
"""
import resource
import sys
import time

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock


class ResNet18(nn.Module):
    """torchvision's resnet18 layout (same module names), with a width and a stem to choose."""

    def __init__(self, stem, width, in_ch, classes):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_ch, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_ch, width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = width
        self.layer1 = self._stage(width, 1)
        self.layer2 = self._stage(2 * width, 2)
        self.layer3 = self._stage(4 * width, 2)
        self.layer4 = self._stage(8 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, classes)

    def _stage(self, planes, stride):
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


def timed(fn, iters):
    fn()  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    return med, (times[-1] - times[0]) / med


def main():
    stem, width, in_ch, hw, batch, classes, threads, iters = sys.argv[1:9]
    width, in_ch, hw, batch, classes = int(width), int(in_ch), int(hw), int(batch), int(classes)
    threads, iters = int(threads), max(1, int(iters))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ResNet18(stem, width, in_ch, classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch, in_ch, hw, hw)
    y = torch.randint(0, classes, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    def infer():
        with torch.no_grad():
            model(x)

    model.train()
    t_train, spread = timed(step, iters)
    model.eval()
    t_infer, _ = timed(infer, iters)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("train_ips=%.3f train_spread=%.3f infer_ips=%.3f rss_kb=%d"
          % (batch / t_train, spread, batch / t_infer, rss))


if __name__ == "__main__":
    main()
