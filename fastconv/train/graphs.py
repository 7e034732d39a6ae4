"""Training steps without host overhead: CUDA graphs (``--cuda-graphs`` of ``fastconv train`` and
``bench/bench_train.py``).

The reference CNN's step is host-bound on a GPU at its small layer sizes (the launches, not the
kernels, set its time), and CUDA graphs replay a captured step with one launch. fastconv ops are
capturable after a warm-up: they launch on the current stream with no host sync, allocate the
same sizes each replay (from the graph's private pool), and the one-time work -- Triton's
autotuning, cuDNN's algorithm search, auto's first-call timing (fastconv/backends/measure.py,
which never times inside a capture) -- happens in the warm-up, outside the capture.

* ``capture_step``: the whole step -- forward, loss, backward and optimizer step -- captured once
  on static input tensors and replayed (the pattern of torch's CUDA-graph docs; the optimizer's
  hyper-parameters are frozen into the graph, so it suits a constant learning rate: the
  benchmark);
* ``graph_network``: forward + backward of the network as one graphed callable
  (``torch.cuda.make_graphed_callables``), the optimizer step left eager so that a learning-rate
  schedule still applies (the trainer). Batches of another size (an epoch's last) run the
  ungraphed network.
"""
from __future__ import annotations

from typing import Callable

import torch


def _require_cuda(device: torch.device) -> None:
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"CUDA graphs need a CUDA device, got {device}")


def capture_step(step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor, opt: torch.optim.Optimizer, warmup: int = 3):
    """A replayable ``run(x, y) -> loss`` of ``step`` (forward, backward and ``opt.step()`` on
    (x, y)): ``warmup`` eager steps on a side stream, then one capture on static copies of x, y."""
    _require_cuda(x.device)
    static_x, static_y = x.clone(), y.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            opt.zero_grad(set_to_none=True)
            step(static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = step(static_x, static_y)

    def run(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        static_x.copy_(xb, non_blocking=True)
        static_y.copy_(yb, non_blocking=True)
        graph.replay()
        return static_loss

    return run


def graph_network(net: torch.nn.Module, sample: torch.Tensor, amp: torch.dtype | None):
    """``net`` with forward + backward graphed for inputs shaped like ``sample`` (under autocast
    to ``amp``, its cache off as graphed callables need); other shapes run the plain net."""
    _require_cuda(sample.device)
    with torch.autocast("cuda", amp or torch.float32, enabled=amp is not None, cache_enabled=False):
        graphed = torch.cuda.make_graphed_callables(net, (sample.detach().requires_grad_(False),))

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.shape == sample.shape and x.dtype == sample.dtype:
            return graphed(x)
        return net(x)

    return forward
