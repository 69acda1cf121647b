"""PyTorch CPU twins of the benchmark networks (same layer shapes; init does not matter).

Options: ``channels_last`` (default False) puts the model and batch in NHWC memory
format, which lets oneDNN skip layout reorders. Two intra-op threads, one inter-op
thread: the machine has two cores.
"""

from __future__ import annotations

from harness import Spec, Target


def simple_cnn(torch):
    """Conv(32/64/128, 3x3, valid) + ReLU + 2x2 max-pool, flatten, Dense 10: SimpleCNN."""
    nn = torch.nn
    layers, channels = [], 3
    for features in (32, 64, 128):
        layers += [nn.Conv2d(channels, features, 3), nn.ReLU(), nn.MaxPool2d(2)]
        channels = features
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(2 * 2 * 128, 10))


def resnet18(torch):
    """CIFAR ResNet-18: 3x3 stem without max-pool, BasicBlocks (2, 2, 2, 2), as jaxcifar's."""
    nn = torch.nn

    def conv_bn(cin: int, cout: int, kernel: int, stride: int) -> list:
        return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout, 3, 1))
            self.shortcut = (nn.Sequential(*conv_bn(cin, cout, 1, stride))
                             if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    blocks, cin = [], 64
    for i in range(4):
        cout = 64 * 2**i
        blocks += [Block(cin, cout, 2 if i else 1), Block(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*conv_bn(3, 64, 3, 1), nn.ReLU(), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(512, 10))


def airbench(torch):
    """airbench94-style net as jaxcifar's ``airbench``: 2x2 whitening conv + GELU, three
    [conv -> pool -> BN -> GELU -> conv -> BN -> GELU] groups (64/256/256), global max-pool,
    bias-free Dense x 1/9. BatchNorm without scale (its weight frozen at 1)."""
    nn = torch.nn

    def bn(features: int):
        norm = nn.BatchNorm2d(features, eps=1e-12, momentum=0.6)
        norm.weight.requires_grad_(False)
        return norm

    layers, cin = [nn.Conv2d(3, 24, 2), nn.GELU()], 24
    for width in (64, 256, 256):
        layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.MaxPool2d(2), bn(width), nn.GELU(),
                   nn.Conv2d(width, width, 3, padding=1, bias=False), bn(width), nn.GELU()]
        cin = width

    class Scale(nn.Module):
        def forward(self, x):
            return x / 9

    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(256, 10, bias=False), Scale())


NETS = {"simple_cnn": simple_cnn, "resnet18": resnet18, "airbench": airbench}


def build(spec: Spec) -> Target:
    import torch

    torch.set_num_threads(2)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    model = NETS[spec.net](torch).train()
    x = torch.randn(spec.batch, 3, 32, 32)
    y = torch.randint(0, 10, (spec.batch,))
    if spec.options.get("channels_last", False):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def run(n: int) -> None:
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

    return Target(run=run, images_per_step=spec.batch)
