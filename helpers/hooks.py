"""Hooks: capture what a layer computes, and change how ReLUs pass gradients back.

Explained in chapter 00, Models and images (capture) and chapter 04, Guided backpropagation
(ReLU rules).

Every context manager here leaves the model exactly as it found it when it exits, normally or
through an exception: the same hooks, the same ``inplace`` flags, the same ``requires_grad`` of
every parameter and the same train/eval mode. (:func:`evaluated`, the light one for code under
``torch.no_grad()``, leaves the removal of the hooks its caller adds to that caller.)
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import models

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


def _modules_once(model: nn.Module):
    """Every module of the model once (a shared one once), walked by the ``_modules`` dicts:
    ``model.modules()`` would also build every dotted name, whose cost shows on a small network."""
    seen, todo = {id(model)}, [model]
    while todo:
        m = todo.pop()
        yield m
        for child in m.__dict__["_modules"].values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                todo.append(child)


def _state(model: nn.Module):
    """A snapshot of what the contexts here may change: per module its mode, ``inplace`` flag and
    the keys of its non-empty hook dicts (hooks added later are removed on restore), and every
    parameter's ``requires_grad``. Kept lean: it runs on every call of every method, and on a
    small network at batch 1 its cost shows in the timings. So it walks the modules once
    (:func:`_modules_once`) and records hook dicts only where there are hooks."""
    models._check_model(model)
    mods, params, seen = [], [], set()
    for m in _modules_once(model):
        d = m.__dict__
        kept = None
        for k in _HOOK_DICTS:
            if d.get(k):
                kept = kept or {}
                kept[k] = tuple(d[k])
        mods.append((m, d, d.get("training"), d.get("inplace"), kept))
        for p in d["_parameters"].values():
            if p is not None and id(p) not in seen:     # a shared parameter once
                seen.add(id(p))
                params.append((p, p.requires_grad))
    return mods, params


def _restore(state) -> None:
    mods, params = state
    for m, d, training, inplace, kept in mods:
        if d.get("training") != training:
            m.training = training
        if inplace is not None and d.get("inplace") != inplace:
            m.inplace = inplace
        for k in _HOOK_DICTS:
            current = d.get(k)
            if current:
                keep = kept.get(k, ()) if kept else ()
                for key in [key for key in current if key not in keep]:
                    del current[key]
    for p, rg in params:
        if p.requires_grad != rg:
            p.requires_grad_(rg)


@contextlib.contextmanager
def preserved(model: nn.Module):
    """Restore hooks, ``inplace`` flags, ``requires_grad`` and train/eval mode on exit."""
    state = _state(model)
    try:
        yield model
    finally:
        _restore(state)


@contextlib.contextmanager
def frozen(model: nn.Module, eval_mode: bool = True):
    """Parameters frozen (no gradient is ever computed for a weight), eval mode; restored on exit.

    Used while an input is optimised or an input gradient is taken.
    """
    state = _state(model)
    try:
        mods, params = state
        for p, requires_grad in params:
            if requires_grad:
                p.requires_grad_(False)
        if eval_mode and any(training for _m, _d, training, _i, _h in mods):
            model.eval()
        yield model
    finally:
        _restore(state)


#: :func:`_in_eval_mode` walks at most this many entries before it takes the careful walk instead
_QUICK_WALK = 100_000


def _in_eval_mode(model: nn.Module) -> bool:
    """Whether every module of the model is in eval mode.

    Runs on every call of the methods that run the model under ``torch.no_grad()``, so it walks
    the ``_modules`` dicts without :func:`_modules_once`'s bookkeeping (half the time on a small
    network): a shared module is then looked at once per place it is registered, which does not
    change the answer. A walk that grows past :data:`_QUICK_WALK` entries (a module registered
    inside itself would never end) takes :func:`_modules_once`, which visits each module once."""
    todo = [model]
    for m in todo:                                  # the list grows while it is walked
        if m is None:                               # a child registered as None
            continue
        d = m.__dict__
        if d.get("training"):
            return False
        todo += d["_modules"].values()
        if len(todo) > _QUICK_WALK:
            return not any(m.__dict__.get("training") for m in _modules_once(model))
    return True


@contextlib.contextmanager
def evaluated(model: nn.Module):
    """Eval mode while it runs, for code that runs the model under ``torch.no_grad()`` and removes
    the hooks it adds itself (through their handles, in a ``finally``).

    Under ``torch.no_grad()`` no gradient reaches a weight whatever its ``requires_grad``, so the
    parameters need not be frozen; if every module already is in eval mode (the usual case) there
    is nothing to change and no snapshot is taken: on a small network at batch 1 the snapshot
    costs as much as a few of its layers. Otherwise this is :func:`frozen`.
    """
    if _in_eval_mode(model):
        yield model
    else:
        with frozen(model):
            yield model


# --------------------------------------------------------------------------- capture
@dataclass
class Capture:
    """What :func:`capture` records for one layer during a forward (and backward) pass."""

    name: str
    module: nn.Module
    activations: torch.Tensor | None = None
    gradients: torch.Tensor | None = None
    calls: int = 0
    _handles: list = field(default_factory=list, repr=False)

    def grad(self, outputs, grad_outputs=None, retain_graph: bool = False) -> torch.Tensor:
        """Gradient of ``outputs`` with respect to the captured activations (backward stops there)."""
        if self.activations is None:
            raise RuntimeError(f"layer {self.name!r} has not run yet: call the model inside the context first")
        if not self.activations.requires_grad:
            raise RuntimeError("the captured activations carry no graph: run the forward pass with "
                               "gradients enabled (not under torch.no_grad())")
        (g,) = torch.autograd.grad(outputs, self.activations, grad_outputs=grad_outputs,
                                   retain_graph=retain_graph)
        return g


class _StopForward(Exception):
    def __init__(self, output):
        self.output = output


def _enclosing(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else "the block that contains it"


def _shared_module_error(model: nn.Module, name: str) -> ValueError:
    return ValueError(
        f"layer {name!r} runs more than once in one forward pass of {models.info(model).name} "
        f"(a shared module, like ResNet's 'relu' that follows each conv of a block), so its output "
        f"is ambiguous; capture the enclosing block instead, e.g. {_enclosing(name)!r}")


#: per model: id(module) -> how many times it runs in one forward pass (found once, by a probe)
_CALLS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _check_runs_once(model: nn.Module, module: nn.Module, name: str) -> None:
    """A forward pass stopped right after the layer's first call cannot see a second one: a probe
    (once per model and layer) counts the calls, so ``stop=True`` refuses a shared module too."""
    counts = _CALLS.setdefault(model, {})
    n = counts.get(id(module))
    if n is None:
        try:
            n = len(models._probe(model, [module]).get(module, []))
        except Exception:      # a model the probe's black image does not fit: not probed again, and
            n = 0              # the stop's own checks remain
        counts[id(module)] = n
    if n > 1:
        raise _shared_module_error(model, name)


@contextlib.contextmanager
def capture(model: nn.Module, layer, stop: bool = False, leaf: bool = False):
    """Record a layer's output (``.activations``) and, after a backward, its gradient (``.gradients``).

    ``layer`` is a module or a dotted name. The recorded activations are kept out of reach of
    in-place operations that follow the layer (an in-place ReLU after a conv would otherwise
    overwrite them), so they are what the layer computed. ``cap.grad(score)`` computes the
    gradient of ``score`` with respect to the activations only: the backward pass stops at the
    layer. With ``leaf=True`` an output that carries no graph (the parameters frozen, the input
    not requiring grad) is recorded as a new leaf that requires grad, and the rest of the network
    runs on it: the autograd graph then starts at the layer, so nothing before it is recorded
    (Grad-CAM, chapter 11). With ``stop=True`` the forward pass stops right after the layer (use
    :func:`forward_to`). A module that runs more than once per forward pass (ResNet's shared
    ``relu``) raises ``ValueError``: capture the enclosing block instead.
    """
    module = models.layer(model, layer)
    with preserved(model):
        cap = _capture_hooks(model, module, stop=stop, leaf=leaf)
        try:
            yield cap
        finally:
            for h in cap._handles:
                h.remove()


def _capture_hooks(model: nn.Module, module: nn.Module, stop: bool = False, leaf: bool = False,
                   keep_gradients: bool = True, once: bool = False) -> Capture:
    """The hooks of :func:`capture`, without its snapshot of the model: for callers that already
    restore the model (inside :func:`frozen`). The caller removes ``cap._handles``.

    ``keep_gradients=False`` leaves ``.gradients`` unset: no hook on the activations, which would
    otherwise run (in Python) at every backward pass through them, for as long as they live.
    ``once=True``, for a caller that runs the model once while the hooks are on: the count of the
    layer's calls starts at zero here instead of at each forward pass (no hook on the model)."""
    name = models.layer_name(model, module)
    if stop:
        _check_runs_once(model, module, name)
    cap = Capture(name=name, module=module)

    def reset(_module, _inputs):
        cap.calls = 0

    def store_grad(g):
        cap.gradients = g.detach()

    def record(_module, _inputs, output):
        cap.calls += 1
        if cap.calls > 1:
            raise _shared_module_error(model, name)
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"layer {name!r} returns {type(output).__name__}, not a tensor; choose another layer")
        if leaf and not output.requires_grad and torch.is_grad_enabled():
            output = output.detach().requires_grad_(True)     # the graph starts here
        cap.activations = output
        if keep_gradients and output.requires_grad:
            output.register_hook(store_grad)
        if stop:
            raise _StopForward(output)
        return output.clone()  # later in-place ops change the clone, not the recorded tensor

    if not once:
        cap._handles.append(model.register_forward_pre_hook(reset))
    cap._handles.append(module.register_forward_hook(record))
    return cap


def forward_to(model: nn.Module, x: torch.Tensor, layer) -> torch.Tensor:
    """Run the model only up to ``layer`` and return that layer's output.

    The rest of the network is not computed (used when an input is optimised for a layer).
    """
    with capture(model, layer, stop=True) as cap:
        try:
            model(x)
        except _StopForward as s:
            return s.output
    raise ValueError(f"layer {cap.name!r} did not run in the forward pass")  # pragma: no cover


# --------------------------------------------------------------------------- ReLU rules
RULES = ("plain", "guided", "deconvnet")


class _DeconvnetReLU(torch.autograd.Function):
    """A ReLU whose backward pass ignores the forward pass: ``g * [g > 0]`` (Zeiler & Fergus 2014,
    the ReLU acts on the signal going down). Forward: ``max(x, 0)``, in place if asked."""

    @staticmethod
    def forward(ctx, x, inplace=False):
        if inplace:          # what the network asked for (ResNet's ReLU(inplace=True)): no new tensor
            ctx.mark_dirty(x)
            return x.clamp_(min=0)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        return g.clamp(min=0), None


_native_relu, _native_relu_ = torch._C._VariableFunctions.relu, torch._C._VariableFunctions.relu_
# The guided rule's gate on the signal from above, ``g * [g > 0]``, is a ReLU of the gradient. As the
# hook, torch's own (built-in) relu costs no Python frame per ReLU in the backward pass, which shows
# on a small network at batch 1; the patched torch.relu must not be used there.
_positive = _native_relu


class ReLURule:
    """Handle returned by :func:`relu_rule`: ``.calls`` counts the ReLUs that used the rule."""

    def __init__(self, rule):
        self.rule = rule
        self.calls = 0

    def relu(self, input, inplace=False):  # signature of F.relu
        """The ReLU under the rule. The forward pass is always ``max(x, 0)`` (in place where the
        caller asked for it, as the network's own ReLU; never on a leaf that requires grad).
        With ``g`` the signal arriving from above, the backward pass gives

        * plain:     ``g * [x > 0]``            the true gradient: torch's own ReLU
        * guided:    ``g * [x > 0] * [g > 0]``  torch's own ReLU, whose backward is given ``g * [g > 0]``
                                                by a hook on its output (Springenberg et al. 2015)
        * deconvnet: ``g * [g > 0]``            a backward of its own that ignores ``x`` (Zeiler & Fergus 2014)
        """
        self.calls += 1
        inplace = bool(inplace) and not (input.is_leaf and input.requires_grad)
        if self.rule == "deconvnet":
            return _DeconvnetReLU.apply(input, inplace)
        out = _native_relu_(input) if inplace else _native_relu(input)
        if self.rule == "guided" and out.requires_grad:
            out.register_hook(_positive)
        return out


@contextlib.contextmanager
def relu_rule(model: nn.Module, rule: str = "guided"):
    """Within the context, every ReLU passes gradients back by ``rule`` ("guided", "deconvnet", "plain").

    Covers ``nn.ReLU`` modules (ResNet, VGG, AlexNet) *and* the functional ``F.relu`` /
    ``torch.relu`` calls of torchvision's GoogLeNet and Inception v3, which have no ReLU modules
    at all: hooking ``nn.ReLU`` modules alone would silently give them the plain gradient.
    The forward pass is unchanged. The model (hooks, ``inplace`` flags, ``requires_grad``, mode)
    and the torch functions are restored on exit, also after an exception.
    """
    with preserved(model), relu_functions(rule) as handle:
        yield handle


@contextlib.contextmanager
def relu_functions(rule: str = "guided"):
    """The part of :func:`relu_rule` that does the work: ``F.relu``, ``torch.relu``, ``Tensor.relu``
    and their in-place forms follow ``rule`` inside the context and are put back on exit. It takes
    no snapshot of a model (the helpers call it inside :func:`frozen`, which takes one)."""
    if rule not in RULES:
        raise ValueError(f"unknown ReLU rule {rule!r}; valid rules: {', '.join(RULES)}")
    handle = ReLURule(rule)

    def method(self):
        return handle.relu(self)

    def method_(self):
        return handle.relu(self, inplace=True)

    patches = [(F, "relu", handle.relu), (F, "relu_", lambda input: handle.relu(input, inplace=True)),
               (torch, "relu", lambda input: handle.relu(input)),
               (torch, "relu_", lambda input: handle.relu(input, inplace=True)),
               (torch.Tensor, "relu", method), (torch.Tensor, "relu_", method_)]
    saved = [(obj, attr, obj.__dict__.get(attr, _MISSING)) for obj, attr, _ in patches]
    try:
        for obj, attr, fn in patches:
            setattr(obj, attr, fn)
        yield handle
    finally:
        for obj, attr, old in saved:
            if old is _MISSING:
                delattr(obj, attr)
            else:
                setattr(obj, attr, old)


_MISSING = object()
