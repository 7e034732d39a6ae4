"""fastconv: fused conv2d + bias + ReLU + max-pool kernels for PyTorch.

    y = fastconv.conv2d(x, w, b, padding=1, activation="relu", pool=2)
    layer = fastconv.nn.Conv2dReLUMaxPool2d(3, 32, 3, padding=1, pool=2)
    model = fastconv.convert(torch_model)      # fuse conv -> relu -> max-pool chains

See README.md for the backends (reference, cpu, cuda, triton) and how to pick one.
"""
from . import nn
from .backends import BackendUnsupportedError, current as current_backend, set_backend, use_backend
from .convert import convert
from .info import info
from .functional import conv2d, max_pool2d, relu

__version__ = "0.1.0"

__all__ = [
    "conv2d", "relu", "max_pool2d", "nn", "convert", "set_backend", "use_backend", "current_backend",
    "BackendUnsupportedError", "info", "__version__",
]
