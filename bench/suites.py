"""Layer suites of the benchmarks and the ``--layer`` shape syntax.

All convs are 3x3, stride 1, padding 1 unless a suite says otherwise. A first
layer (the image input) has ``needs_dx=False``: training never needs its input
gradient, so neither fastconv nor the baselines compute it there.
"""
from __future__ import annotations

from .model import Layer


def _conv(name, N, C, HW, K, **kw) -> Layer:
    return Layer(name, N, C, HW, HW, K, **kw)


SUITES: dict[str, list[Layer]] = {
    # the reference CNN of fastconv.train at its benchmark batch
    "cnn": [
        _conv("cnn1 3-32@32", 256, 3, 32, 32, needs_dx=False),
        _conv("cnn2 32-64@16", 256, 32, 16, 64),
    ],
    # VGG-16's first conv of each stage, each followed by relu and a 2x2 pool
    "vgg": [
        _conv("vgg1 3-64@224", 64, 3, 224, 64, needs_dx=False),
        _conv("vgg2 64-128@112", 64, 64, 112, 128),
        _conv("vgg3 128-256@56", 64, 128, 56, 256),
        _conv("vgg4 256-512@28", 64, 256, 28, 512),
        _conv("vgg5 512-512@14", 64, 512, 14, 512),
    ],
    # airbench's blocks: conv + 2x2 pool, no bias (a norm follows), relu after the pool
    "airbench": [
        _conv("air1 24-64@32", 1024, 24, 32, 64, bias=False, relu=False),
        _conv("air2 64-256@16", 1024, 64, 16, 256, bias=False, relu=False),
        _conv("air3 256-256@8", 1024, 256, 8, 256, bias=False, relu=False),
    ],
    # a ResNet stem: 7x7/s2 conv + relu, then an overlapping 3x3/s2 max-pool
    "stem": [
        Layer("stem 3-64@224 7x7s2+mp3s2", 64, 3, 224, 224, 64, R=7, S=7, stride=2, padding=3, pool=1,
              post_pool=(3, 2, 1), needs_dx=False),
    ],
    # first layers with few input channels, where an implicit GEMM wastes its tensor cores
    "small-c": [
        _conv("smallc 1-32@28", 256, 1, 28, 32, needs_dx=False),
        _conv("smallc 3-64@32", 256, 3, 32, 64, needs_dx=False),
    ],
    # depthwise 3x3 convs (MobileNet's shapes), here followed by relu and a 2x2 pool
    "depthwise": [
        _conv("dw1 32@112 g32", 64, 32, 112, 32, groups=32),
        _conv("dw2 128@56 g128", 64, 128, 56, 128, groups=128),
    ],
    # the CPU comparison (cpu backend vs PyTorch CPU eager)
    "cpu": [
        _conv("cpu1 3-32@32", 64, 3, 32, 32, needs_dx=False),
        _conv("cpu2 32-64@16", 64, 32, 16, 64),
        _conv("cpu3 64-128@8", 64, 64, 8, 128),
        _conv("cpu4 1-16@28 5x5", 64, 1, 28, 16, R=5, S=5, padding=2, needs_dx=False),  # MNIST first layer
        _conv("cpu5 16-32@30 pad0", 64, 16, 30, 32, padding=0),
        _conv("cpu6 64-64@56 vgg", 16, 64, 56, 64),
    ],
    # smoke tests and dry runs: tiny shapes that exercise every code path
    "tiny": [
        _conv("tiny 3-8@8", 2, 3, 8, 8),
        Layer("tiny-stem 3-8@16", 2, 3, 16, 16, 8, R=7, S=7, stride=2, padding=3, pool=1, post_pool=(3, 2, 1),
              needs_dx=False),
    ],
}

_INT_KEYS = ("N", "C", "H", "W", "K", "R", "S", "stride", "padding", "dilation", "groups", "pool")
_BOOL_KEYS = ("bias", "relu", "needs_dx")


def parse_layer(spec: str) -> Layer:
    """``--layer "N=64,C=128,H=56,K=256"`` -> Layer.

    Keys: name, N, C, H, W (default H), K, R (default 3), S (default R),
    stride, padding, dilation, groups, bias, relu, needs_dx (0/1), pool (the
    fused k) and post_pool=K/S/P (a general max-pool after the conv).
    """
    kv: dict = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if "=" not in item:
            raise ValueError(f"--layer: expected key=value, got {item!r} in {spec!r}")
        k, v = (s.strip() for s in item.split("=", 1))
        if k in _INT_KEYS:
            kv[k] = int(v)
        elif k in _BOOL_KEYS:
            if v not in ("0", "1", "true", "false", "True", "False"):
                raise ValueError(f"--layer: {k} must be 0 or 1, got {v!r}")
            kv[k] = v in ("1", "true", "True")
        elif k == "post_pool":
            parts = v.split("/")
            if len(parts) != 3:
                raise ValueError(f"--layer: post_pool must be kernel/stride/padding, got {v!r}")
            kv[k] = tuple(int(p) for p in parts)
        elif k == "name":
            kv[k] = v
        else:
            raise ValueError(f"--layer: unknown key {k!r}; keys are name, {', '.join(_INT_KEYS + _BOOL_KEYS)}, "
                             "post_pool")
    missing = [k for k in ("N", "C", "H", "K") if k not in kv]
    if missing:
        raise ValueError(f"--layer: {', '.join(missing)} missing in {spec!r}")
    kv.setdefault("W", kv["H"])
    kv.setdefault("R", 3)
    kv.setdefault("S", kv["R"])
    kv.setdefault("name", f"{kv['C']}-{kv['K']}@{kv['H']}x{kv['W']}")
    return Layer(**kv)


def layers_of(suites: list[str], layer_specs: list[str]) -> list[tuple[str, Layer]]:
    """(suite, layer) pairs of the named suites, then the ``--layer`` shapes (suite 'custom')."""
    out = []
    for s in suites:
        if s not in SUITES:
            raise ValueError(f"unknown suite {s!r}; suites are {', '.join(SUITES)}")
        out += [(s, layer) for layer in SUITES[s]]
    out += [("custom", parse_layer(spec)) for spec in layer_specs]
    return out
