"""``fastconv.convert(model)``: put fastconv layers into a model someone else wrote.

With ``fuse=True`` the model is traced with ``torch.fx`` (through nested modules and
custom ``forward`` methods; convs, ReLUs and max-pools are kept as leaves) and each
chain

    Conv2d -> ReLU -> MaxPool2d(k, stride=k)      (also Conv2d -> MaxPool2d(k) -> ReLU)
    Conv2d -> MaxPool2d(k, stride=k)
    Conv2d -> ReLU

becomes one ``fastconv.nn.Conv2d(..., activation=, pool=)`` at the conv's qualified
name. In eval mode (and with ``inplace=False``) a ``BatchNorm2d`` right after the conv
is folded into it first (torch's ``fuse_conv_bn_eval``: a new conv with the scaled
weight and shifted bias; the given model keeps its own), so ResNet / VGG-BN stems
fuse for inference; in train mode BatchNorm stays where it is (the log says so). ReLU may be ``nn.ReLU`` (in-place or not), ``F.relu``, ``torch.relu``,
``x.relu()`` or their in-place forms; the pool ``nn.MaxPool2d``, ``F.max_pool2d`` or
``torch.max_pool2d`` with kernel = stride = k, no padding, no dilation, floor mode. A
link is fused only when the intermediate tensor has no other user, and a conv module
called at several places only when every call site fuses the same way.

A conv or ReLU that fuses with nothing stays a torch module: fastconv's gain is the fusion,
and alone its conv or ReLU is no faster than torch's (an in-place ReLU would even keep an
extra tensor), so converting never slows a model down. An ``nn.MaxPool2d`` that fuses with
nothing (overlapping ones such as ResNet's 3x3 / stride 2 included) becomes
``fastconv.nn.MaxPool2d``: ``auto`` times fastconv's pool against torch's on the first call
of each shape and runs torch's where that is faster, and fastconv's saves an int32 index where
torch's keeps an int64 one (on the 2-core AMD EPYC its 3x3 / stride 2 forward took 0.18 ms where
torch's took 0.45, 8x64x16x16). ``swap_unfused=True`` swaps the convs and ReLUs one
for one too: ``nn.Conv2d`` -> ``fastconv.nn.Conv2d``, ``nn.ReLU`` -> ``fastconv.nn.ReLU``.
Functional ReLUs and pools that fuse with nothing stay as they are.

Tracing keeps as one call (a leaf) every torch.nn layer and every subclass of one that
keeps torch's ``forward`` (airbench's ``BatchNorm(nn.BatchNorm2d)``), and any submodule
whose forward fx cannot trace: the rest of the model still fuses.

Result:

* traced, something fused: an ``fx.GraphModule`` named like the model's class, whose module tree,
  parameters and buffers are the model's, in the same order: ``state_dict`` keys equal
  the original's, so checkpoints load both ways. Its ``forward`` is the converted
  model. A ReLU or pool module whose every call was fused into a conv is replaced by
  ``nn.Identity``, so a ``Sequential`` of modules (``model.features(x)``) still
  computes its own function when called on its own; a custom submodule whose
  ``forward`` applies ``F.relu`` / ``F.max_pool2d`` after a fused conv does not (its
  code is not rewritten, only the whole model's graph is).
* nothing fuses: the model's own class and forward (a copy, or the model with
  ``inplace=True``), so the converted model runs the original's code, its unfused
  ``nn.MaxPool2d`` modules aside.
* not traceable at the top (data-dependent control flow in the model's own forward,
  ...), or a forward that switches grad / autocast mode (``with torch.no_grad():``,
  which a graph does not record): the model's own class, nothing fused (leaves swapped
  one for one with ``swap_unfused=True``); a warning says why.
* ``fuse=False``: the model's own class (leaves swapped with ``swap_unfused=True``).

Parameters and buffers are shared with the given model, never copied. With
``inplace=False`` (default) the module structure is deep-copied first, so the given
model is untouched; ``inplace=True`` swaps the given model's submodules in place (no
copy), after which only the returned module computes the original function.

Modules left alone (and logged): conv/ReLU/pool subclasses that override ``forward``
(or a conv's ``_conv_forward``), modules with hooks, lazy or parametrized convs,
``MaxPool2d(return_indices=True)``. Subclasses of ``nn.Conv2d`` that only add their
own ``__init__`` are convs. What was replaced is logged (logger ``fastconv.convert``,
INFO) and listed in ``result.fastconv_replacements`` (a list of :class:`Replacement`);
what was left, and why, in ``result.fastconv_left`` ((name, reason) pairs).
"""
from __future__ import annotations

import copy
import inspect
import itertools
import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair
from torch.nn.utils import parametrize

from . import nn as fnn
from ._params import MAX_POOL

__all__ = ["convert", "Replacement"]


def _keeps_torch_forward(m: nn.Module) -> bool:
    """A subclass of a torch.nn layer (say airbench's ``BatchNorm(nn.BatchNorm2d)``) whose forward
    is torch's own: as much a leaf as torch's class (fx would trace into it and fail on
    ``_check_input_dim``). Containers are not leaves."""
    if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) or type(m).__module__.startswith("torch."):
        return False
    fwd = type(m).forward
    return any(base.__module__.startswith("torch.nn") and base is not nn.Module and base.__dict__.get("forward") is fwd
               for base in type(m).__mro__)

log = logging.getLogger("fastconv.convert")


@dataclass(frozen=True)
class Replacement:
    """One change: ``name`` (qualified module name) now holds ``new`` where ``old`` ran.

    ``absorbed`` lists what was folded into a fused conv: the names of ReLU/pool modules
    (now ``nn.Identity`` unless still called elsewhere) and functional calls (``F.relu``).
    """

    name: str
    old: str
    new: str
    absorbed: tuple[str, ...] = ()

    def __str__(self) -> str:
        fused = f" (fused {', '.join(self.absorbed)})" if self.absorbed else ""
        return f"{self.name or '<model>'}: {self.old} -> {self.new}{fused}"


# --------------------------------------------------------------------------- what can be replaced


def _why_not(m: nn.Module) -> Optional[str]:
    """Why module m (a conv, ReLU or max-pool) must stay as it is, or None."""
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    if any(getattr(m, h, None) for h in hooks):
        return "it has hooks"
    if isinstance(m, nn.Conv2d):
        cls = type(m)
        if cls.forward not in (nn.Conv2d.forward, fnn.Conv2d.forward) or cls._conv_forward not in (
                nn.Conv2d._conv_forward, fnn.Conv2d._conv_forward):
            return f"{cls.__name__} overrides forward"
        if parametrize.is_parametrized(m):
            return "it is parametrized"
        w = m._parameters.get("weight")
        if not isinstance(w, nn.Parameter) or isinstance(w, nn.parameter.UninitializedParameter):
            return "its weight is not an initialized Parameter"
        if w.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            return f"dtype {w.dtype} is not supported"
        return None
    if isinstance(m, nn.ReLU):
        return None if type(m).forward in (nn.ReLU.forward, fnn.ReLU.forward) else \
            f"{type(m).__name__} overrides forward"
    if isinstance(m, nn.MaxPool2d):
        if type(m).forward not in (nn.MaxPool2d.forward, fnn.MaxPool2d.forward):
            return f"{type(m).__name__} overrides forward"
        return "return_indices=True" if m.return_indices else None
    return "not a conv, ReLU or max-pool"


def _is_fast(m: nn.Module) -> bool:
    return type(m) in (fnn.Conv2d, fnn.Conv2dReLU, fnn.Conv2dReLUMaxPool2d, fnn.ReLU, fnn.MaxPool2d)


def _swapped(m: nn.Module) -> Optional[nn.Module]:
    """The one-for-one fastconv replacement of a supported leaf, or None."""
    if _is_fast(m) or not isinstance(m, (nn.Conv2d, nn.ReLU, nn.MaxPool2d)) or _why_not(m):
        return None
    if isinstance(m, nn.Conv2d):
        return fnn.Conv2d.from_torch(m)
    if isinstance(m, nn.ReLU):
        return fnn.ReLU.from_torch(m)
    return fnn.MaxPool2d.from_torch(m)


def _short(m: nn.Module) -> str:
    """``nn.Conv2d(3, 8, ...)``, ``fastconv.nn.Conv2d(...)``, ``MyConv(...)``."""
    cls = type(m)
    where = "fastconv.nn." if cls.__module__ == fnn.__name__ else "nn." if cls.__module__.startswith(
        "torch.nn.") else ""
    return f"{where}{cls.__name__}({m.extra_repr()})"


# --------------------------------------------------------------------------- graph patterns

_RELU_FUNCTIONS = (F.relu, F.relu_, torch.relu, torch.relu_)
_RELU_METHODS = ("relu", "relu_")


def _signature(*params) -> inspect.Signature:
    return inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d)
                              for n, d in params])


_REQUIRED = inspect.Parameter.empty
# F.max_pool2d and torch.max_pool2d, to read their calls' arguments by name
_F_POOL = _signature(("input", _REQUIRED), ("kernel_size", _REQUIRED), ("stride", None), ("padding", 0),
                     ("dilation", 1), ("ceil_mode", False), ("return_indices", False))
_TORCH_POOL = _signature(("input", _REQUIRED), ("kernel_size", _REQUIRED), ("stride", ()), ("padding", 0),
                         ("dilation", 1), ("ceil_mode", False))


def _label(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "call_method":
        return f".{node.target}()"
    fn = node.target
    if fn is F.max_pool2d:
        return "F.max_pool2d"
    mod = getattr(fn, "__module__", None) or "torch"
    return f"{'F' if mod == 'torch.nn.functional' else mod}.{getattr(fn, '__name__', fn)}"


def _relu_input(node: fx.Node, modules: dict) -> Optional[fx.Node]:
    """The tensor a plain ReLU node reads, or None when node is not one."""
    if node.op == "call_module":
        m = modules.get(node.target)
        ok = isinstance(m, nn.ReLU) and _why_not(m) is None and len(node.args) == 1 and not node.kwargs
    elif node.op == "call_function":
        ok = node.target in _RELU_FUNCTIONS and 1 <= len(node.args) <= 2 and set(node.kwargs) <= {"inplace"}
    elif node.op == "call_method":
        ok = node.target in _RELU_METHODS and len(node.args) == 1 and not node.kwargs
    else:
        ok = False
    return node.args[0] if ok and isinstance(node.args[0], fx.Node) else None


def _pool_input(node: fx.Node, modules: dict) -> Optional[tuple[fx.Node, int]]:
    """(input, k) when node is a k x k / stride-k max-pool the fused conv can take, else None."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if not isinstance(m, nn.MaxPool2d) or _why_not(m) or len(node.args) != 1 or node.kwargs:
            return None
        x, a = node.args[0], dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                  dilation=m.dilation, ceil_mode=m.ceil_mode)
    elif node.op == "call_function" and node.target in (F.max_pool2d, torch.max_pool2d):
        sig = _F_POOL if node.target is F.max_pool2d else _TORCH_POOL
        try:
            bound = sig.bind(*node.args, **node.kwargs)
        except TypeError:
            return None
        bound.apply_defaults()
        a = dict(bound.arguments)
        x = a.pop("input")
        if a.pop("return_indices", False) is not False:
            return None
    else:
        return None
    if not isinstance(x, fx.Node) or any(isinstance(v, fx.Node) for v in
                                          itertools.chain.from_iterable(_flat(v) for v in a.values())):
        return None
    try:
        k = _pair(a["kernel_size"])
        s = k if a["stride"] in (None, (), []) else _pair(a["stride"])
        pad, dil = _pair(a["padding"]), _pair(a["dilation"])
    except TypeError:
        return None
    if (len(k) != 2 or k[0] != k[1] or tuple(s) != tuple(k) or tuple(pad) != (0, 0) or tuple(dil) != (1, 1)
            or a["ceil_mode"] or not isinstance(k[0], int) or not 2 <= k[0] <= MAX_POOL):
        return None
    return x, int(k[0])


def _flat(v):
    return v if isinstance(v, (tuple, list)) else (v,)


def _only_user(node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


@dataclass
class _Site:
    conv: fx.Node
    chain: list  # the BatchNorm / ReLU / pool nodes folded into the conv, in graph order
    relu: bool
    pool: Optional[int]
    bn: Optional[str] = None  # the eval-mode BatchNorm2d folded into the conv weights


def _foldable_bn(node: fx.Node, modules: dict) -> Optional[str]:
    """node's target if it is an eval-mode BatchNorm2d with running statistics that torch's
    ``fuse_conv_bn_eval`` can fold into the conv before it, else None."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    m = modules.get(node.target)
    ok = (isinstance(m, nn.BatchNorm2d) and not m.training and m.track_running_stats
          and m.running_mean is not None and not any(getattr(m, h, None) for h in ("_forward_hooks",
                                                                                  "_forward_pre_hooks"))
          and type(m).forward is nn.modules.batchnorm._BatchNorm.forward)
    return node.target if ok else None


def _fusion_site(conv: fx.Node, m: nn.Conv2d, modules: dict, fold_bn: bool = False) -> _Site:
    """Follow conv's single-user chain: [batchnorm (eval)] [relu] [pool] or pool relu."""
    site = _Site(conv, [], False, None)
    if isinstance(m, fnn.Conv2d) and m.pool is not None:
        return site
    can_relu = not (isinstance(m, fnn.Conv2d) and m.activation is not None)
    cur = conv
    nxt = _only_user(cur)
    if nxt is not None and nxt.args and nxt.args[0] is cur and (bn := _foldable_bn(nxt, modules)):
        if not fold_bn or m.training or isinstance(m, fnn.Conv2d) and m.activation is not None:
            return site  # a BatchNorm between the conv and its relu / pool: nothing fuses across it
        site.bn = bn
        site.chain.append(nxt)
        cur = nxt
    for _ in range(2):
        nxt = _only_user(cur)
        if nxt is None:
            break
        if can_relu and not site.relu and _relu_input(nxt, modules) is cur:
            site.relu = True
        elif site.pool is None and (hit := _pool_input(nxt, modules)) is not None and hit[0] is cur:
            site.pool = hit[1]
        else:
            break
        site.chain.append(nxt)
        cur = nxt
    return site


class _Tracer(fx.Tracer):
    """Traces through user modules but keeps every conv, ReLU and max-pool as one call.

    It also notes the grad / inference / autocast mode at each recorded op: an fx graph
    does not record ``with torch.no_grad():`` and the like, so a forward that switches
    modes cannot be replaced by its graph.
    """

    def __init__(self):
        super().__init__()
        self.modes: set = set()
        self.untraceable: dict[str, str] = {}  # submodule -> why it was kept as one call

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, (nn.Conv2d, nn.ReLU, nn.MaxPool2d)) or super().is_leaf_module(m, qualname)
                or _keeps_torch_forward(m) or qualname in self.untraceable)

    def call_module(self, m, forward, args, kwargs):
        """A submodule whose forward fx cannot trace becomes one call (a leaf) instead of failing
        the whole model: the rest of the model still fuses."""
        qualname = self.path_of_module(m)
        if self.is_leaf_module(m, qualname) or m is self.root:
            return super().call_module(m, forward, args, kwargs)
        before = set(self.graph.nodes)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:  # noqa: BLE001  (fx raises TraceError, TypeError, ...)
            self.untraceable[qualname] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
            for node in reversed([n for n in self.graph.nodes if n not in before]):
                if not node.users:
                    self.graph.erase_node(node)
            return self.create_proxy("call_module", qualname, args, kwargs)

    def create_node(self, *args, **kwargs):
        self.modes.add((torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
                        torch.is_autocast_enabled("cpu"), torch.is_autocast_enabled("cuda")))
        return super().create_node(*args, **kwargs)


# --------------------------------------------------------------------------- convert


def convert(model: nn.Module, fuse: bool = True, inplace: bool = False, swap_unfused: bool = False) -> nn.Module:
    """Fuse the model's conv -> [batchnorm (eval)] -> relu -> max-pool chains into fastconv layers.

    See the module docstring for what is fused, what is left and what comes back.
    Returns the converted model; ``result.fastconv_replacements`` lists the changes and
    ``result.fastconv_left`` what was left as it is, and why.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, v in (("fuse", fuse), ("inplace", inplace), ("swap_unfused", swap_unfused)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    work = model if inplace else _structural_copy(model)
    replacements: list[Replacement] = []
    left: list[tuple[str, str]] = []
    if isinstance(work, (nn.Conv2d, nn.ReLU, nn.MaxPool2d)):
        new = _swapped(work) if swap_unfused or isinstance(work, nn.MaxPool2d) else None
        if new is not None:
            replacements.append(Replacement("", _short(work), _short(new)))
        elif _swapped(work) is not None:
            left.append(("", _UNFUSED))
        out = work if new is None else new
    elif not fuse:
        out = _swap_leaves(work, {}, replacements, swap_unfused, left)
    else:
        tracer = _Tracer()
        try:
            graph = tracer.trace(work)
            if len(tracer.modes) > 1:
                raise RuntimeError("forward switches grad, inference or autocast mode (torch.no_grad(), "
                                   "torch.autocast(), ...), which an fx graph does not record")
        except Exception as e:  # any tracing failure: fx raises TraceError, TypeError, ...
            why = (str(e).strip().splitlines() or [""])[0]
            log.warning("fastconv.convert: torch.fx cannot trace %s (%s: %s); nothing is fused%s",
                        type(model).__name__, type(e).__name__, why,
                        " (supported layers swapped one for one)" if swap_unfused else "")
            out = _swap_leaves(work, {}, replacements, swap_unfused, left)
        else:
            for name, why in tracer.untraceable.items():
                left.append((name, f"torch.fx cannot trace it ({why}): kept as one call, its inside not fused"))
            out = _fuse(work, graph, type(model).__name__, replacements, swap_unfused, left,
                        fold_bn=not inplace and not model.training)
            if model.training and any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
                left.append(("", "the model is in train mode: BatchNorm2d layers stay (call .eval() first to "
                                 "fold them into the convs for inference)"))
    for r in replacements:
        log.info("%s", r)
    for name, why in left:
        log.info("left %s as it is: %s", name or "<model>", why)
    out.fastconv_replacements = replacements
    out.fastconv_left = left
    return out


_UNFUSED = ("fuses with nothing: alone, fastconv's conv or relu is no faster than torch's, so the torch "
            "module stays (swap_unfused=True swaps it)")


def _structural_copy(model: nn.Module) -> nn.Module:
    """A deep copy of the module tree that shares every Parameter and buffer with model."""
    memo = {id(t): t for _, t in itertools.chain(model.named_parameters(remove_duplicate=False),
                                                 model.named_buffers(remove_duplicate=False))}
    try:
        return copy.deepcopy(model, memo)
    except Exception as e:
        raise TypeError(f"model could not be copied ({type(e).__name__}: {e}); "
                        "pass inplace=True to convert it in place") from e


def _swap_leaves(root: nn.Module, fixed: dict, replacements: list, swap: bool = True,
                 left: Optional[list] = None) -> nn.Module:
    """Replace every module object in root's tree by fixed[id] or, with ``swap``, its
    one-for-one swap (else it stays, noted in ``left``).

    Works on module objects, so a module registered under several names is replaced at
    every name (and recorded once, at its first name).
    """
    plan = dict(fixed)
    for name, m in root.named_modules():
        if id(m) in plan:
            continue
        new = _swapped(m)
        if new is not None and (swap or isinstance(m, nn.MaxPool2d)):  # a pool: auto times both
            plan[id(m)] = new
            replacements.append(Replacement(name, _short(m), _short(new)))
        elif new is not None:
            if left is not None:
                left.append((name, _UNFUSED))
        elif isinstance(m, (nn.Conv2d, nn.ReLU, nn.MaxPool2d)) and not _is_fast(m):
            if left is not None:
                left.append((name, f"{type(m).__name__}: {_why_not(m)}"))
    for parent in root.modules():
        for name, child in parent._modules.items():
            if child is not None and id(child) in plan:
                parent._modules[name] = plan[id(child)]
    return root


def _fuse(work: nn.Module, graph: fx.Graph, class_name: str, replacements: list, swap: bool = True,
          left: Optional[list] = None, fold_bn: bool = False) -> fx.GraphModule:
    modules = dict(work.named_modules())
    convs = [n for n in graph.nodes if n.op == "call_module" and isinstance(modules.get(n.target), nn.Conv2d)
             and _why_not(modules[n.target]) is None]
    sites = [_fusion_site(n, modules[n.target], modules, fold_bn) for n in convs]
    # A conv module called at several places fuses only when every call fuses the same way.
    by_module: dict[int, list[_Site]] = {}
    for s in sites:
        by_module.setdefault(id(modules[s.conv.target]), []).append(s)
    plan: dict[int, nn.Module] = {}
    absorbed_modules: set[int] = set()
    for group in by_module.values():
        m = modules[group[0].conv.target]
        kinds = {(s.relu, s.pool, s.bn) for s in group}
        if len(kinds) > 1:
            log.info("%s is called %d times with different epilogues; not fused",
                     group[0].conv.target, len(group))
            continue
        relu, pool, bn = kinds.pop()
        if not relu and pool is None and bn is None:
            continue
        src = m
        if bn is not None:  # torch's own folding: a new conv with the scaled weight and shifted bias
            from torch.nn.utils.fusion import fuse_conv_bn_eval

            src = fuse_conv_bn_eval(m, modules[bn])
        new = fnn.Conv2d.from_torch(src, "relu" if relu else None, pool)
        plan[id(m)] = new
        absorbed = []
        for s in group:
            absorbed += [_label(n) for n in s.chain]
            absorbed_modules.update(id(modules[n.target]) for n in s.chain if n.op == "call_module")
            s.chain[-1].replace_all_uses_with(s.conv)
            for n in reversed(s.chain):
                graph.erase_node(n)
        replacements.append(Replacement(group[0].conv.target, _short(m), _short(new),
                                        tuple(dict.fromkeys(absorbed))))
    if not plan:  # nothing fuses: the model's own structure (and forward), not a traced copy
        return _swap_leaves(work, {}, replacements, swap, left)
    # ReLU / pool modules whose every call was fused away become Identity.
    still_called = {id(modules[n.target]) for n in graph.nodes if n.op == "call_module"}
    for i in absorbed_modules - still_called:
        plan[i] = nn.Identity()
    _swap_leaves(work, plan, replacements, swap, left)
    gm = fx.GraphModule(work, graph, class_name)
    # Own exactly work's children, parameters and buffers, in work's order: unused modules are
    # kept and state_dict keys (and their order) equal the original's.
    gm._modules.clear()
    gm._modules.update(work._modules)
    gm._parameters.clear()
    gm._parameters.update(work._parameters)
    gm._buffers.clear()
    gm._buffers.update(work._buffers)
    gm._non_persistent_buffers_set = set(work._non_persistent_buffers_set)
    graph.lint()
    gm.recompile()
    return gm
