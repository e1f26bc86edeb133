"""Layer-wise relevance propagation (LRP): the class score redistributed, layer by layer, to the pixels.

Explained in chapter 09, Layer-wise relevance propagation (Bach et al. 2015; the rules of
Montavon et al. 2019, "Layer-wise relevance propagation: an overview").

The relevance ``R_k`` of the neurons of one layer is passed to the neurons ``j`` of the layer
below in proportion to their contributions ``a_j w_jk``:

* LRP-0:  ``R_j = sum_k a_j w_jk / (b_k + sum_j a_j w_jk) * R_k``
* LRP-ε:  the same with ``ε sign(z_k)`` added to the denominator (``z_k`` = the layer's output):
  weak or contradictory contributions are absorbed;
* LRP-γ:  ``w -> w + γ w⁺`` and ``b -> b + γ b⁺``: positive contributions are favoured;
* z^B (first layer, pixels bounded by ``l <= x <= h``):
  ``R_i = sum_j (x_i w_ij - l_i w⁺_ij - h_i w⁻_ij) / sum_i (x_i w_ij - l_i w⁺_ij - h_i w⁻_ij) * R_j``.

Every rule is computed with the same four steps (the "gradient x input" trick):
``z = layer(a)`` with the modified weights, ``s = R / z``, ``c = d(z . s)/da`` (a gradient,
which for a conv layer is the transposed convolution of ``s``), ``R_j = a_j c_j``.
Max-pooling passes relevance to the winner of each window (winner-take-all, Bach et al. 2015),
ReLU and dropout pass it unchanged, and average pooling is a linear layer with weights
``1 / window size``. Because every propagation step is written down, the relevance that each
layer receives, gives and absorbs (in its bias and in ε) is recorded: relevance is conserved
exactly up to those absorbed terms.

LRP here supports *sequential* conv nets, whose forward pass is ``features`` (an
``nn.Sequential``) -> ``avgpool`` -> flatten -> ``classifier``: VGG16, VGG19, AlexNet, ShapesNet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import hooks, models

__all__ = ["RULES", "LayerRelevance", "LRPResult", "sequential_layers", "layer_rules", "propagate",
           "linear_epsilon", "relevance_trace", "lrp", "relevance_image", "mask_share"]

#: The rules accepted by :func:`lrp` (``"0"`` and ``"lrp-0"`` are accepted for ``"zero"``).
RULES = ("zero", "epsilon", "gamma", "composite")
#: Names of the per-layer rules (what :func:`layer_rules` returns and the tables print).
LAYER_RULES = ("LRP-0", "LRP-eps", "LRP-gamma", "zB", "winner-take-all", "pass")
_PASS = (nn.ReLU, nn.Dropout)
_LINEAR = (nn.Conv2d, nn.Linear, nn.AdaptiveAvgPool2d, nn.AvgPool2d)
_KNOWN = ("VGG", "AlexNet", "ShapesNet")


class _Flatten(nn.Module):
    """Marks the ``torch.flatten(x, 1)`` between ``avgpool`` and ``classifier`` in the forward pass."""

    def forward(self, x):
        return torch.flatten(x, 1)


_FLATTEN = _Flatten()


# --------------------------------------------------------------------------- the layers, in order
def sequential_layers(model: nn.Module) -> list:
    """``(name, module)`` of every layer in forward order: features, avgpool, flatten, classifier.

    Raises ``ValueError`` for networks that are not a chain of layers (ResNet's skip connections,
    GoogLeNet's and Inception's parallel branches) and for layers LRP here has no rule for.
    Explained in chapter 09, Layer-wise relevance propagation.
    """
    name = models.info(model).name
    kind = type(model).__name__
    feats, head = getattr(model, "features", None), getattr(model, "classifier", None)
    if not isinstance(feats, nn.Sequential) or not isinstance(head, (nn.Sequential, nn.Linear)):
        raise ValueError(
            f"LRP here supports sequential conv nets: 'features' (nn.Sequential) -> 'avgpool' -> "
            f"'classifier', as VGG16, VGG19, AlexNet and ShapesNet; {name} ({kind}) is not one "
            f"(ResNet adds skip connections, GoogLeNet and Inception v3 concatenate parallel branches, "
            f"which need rules of their own). The book's LRP chapter uses VGG16.")
    out = [(f"features.{i}", m) for i, m in enumerate(feats)]
    pool = getattr(model, "avgpool", None)
    if pool is not None:
        out.append(("avgpool", pool))
    out.append(("flatten", _FLATTEN))
    if isinstance(head, nn.Linear):
        out.append(("classifier", head))
    else:
        out += [(f"classifier.{i}", m) for i, m in enumerate(head)]
    bad = [f"{n} ({type(m).__name__})" for n, m in out
           if not isinstance(m, _LINEAR + _PASS + (nn.MaxPool2d, _Flatten))]
    if bad:
        raise ValueError(f"LRP here has rules for Conv2d, Linear, ReLU, MaxPool2d, average pooling and "
                         f"Dropout; {name} has {', '.join(bad)}")
    return out


def _check_rule(rule) -> str:
    key = str(rule).strip().lower().replace("lrp-", "").replace("lrp_", "")
    key = {"0": "zero", "eps": "epsilon", "ε": "epsilon", "γ": "gamma"}.get(key, key)
    if key not in RULES:
        raise ValueError(f"unknown LRP rule {rule!r}; valid rules: {', '.join(RULES)} "
                         f"(composite: LRP-0 in the dense layers, LRP-eps in the upper and LRP-gamma in "
                         f"the lower half of the conv layers, zB at the pixels)")
    return key


def layer_rules(model: nn.Module, rule: str = "composite") -> list:
    """``(name, module, rule)`` for every layer: which rule :func:`lrp` applies where.

    ``"zero"``, ``"epsilon"``, ``"gamma"``: that rule at every conv, linear and average-pooling
    layer. ``"composite"`` (as recommended by Montavon et al. 2019): LRP-0 in the dense layers at the top
    (and the average pooling before them), LRP-ε in the upper half of the conv layers, LRP-γ in
    the lower half, zB at the first conv (the pixels). For VGG16 that is LRP-γ in blocks 1-3,
    LRP-ε in blocks 4-5. Max-pooling: winner-take-all; ReLU, dropout, flatten: pass.
    Explained in chapter 09, Layer-wise relevance propagation.
    """
    rule = _check_rule(rule)
    layers = sequential_layers(model)
    convs = [n for n, m in layers if isinstance(m, nn.Conv2d)]
    lower = set(convs[:math.ceil(len(convs) / 2)])
    uniform = {"zero": "LRP-0", "epsilon": "LRP-eps", "gamma": "LRP-gamma"}
    out = []
    for n, m in layers:
        if isinstance(m, nn.MaxPool2d):
            r = "winner-take-all"
        elif not isinstance(m, _LINEAR):
            r = "pass"
        elif rule != "composite":
            r = uniform[rule]
        elif isinstance(m, nn.Conv2d):
            r = "zB" if convs and n == convs[0] else ("LRP-gamma" if n in lower else "LRP-eps")
        else:  # dense layers and the pooling that feeds them
            r = "LRP-0"
        out.append((n, m, r))
    return out


# --------------------------------------------------------------------------- one layer
def _apply(module: nn.Module, a: torch.Tensor, weight=None, bias=None) -> torch.Tensor:
    """The layer's linear map on ``a`` with (possibly modified) weights and bias."""
    if isinstance(module, nn.Conv2d):
        return F.conv2d(a, weight, bias, module.stride, module.padding, module.dilation, module.groups)
    if isinstance(module, nn.Linear):
        return F.linear(a, weight, bias)
    return module(a)  # average pooling: fixed positive weights


def _sign(z: torch.Tensor) -> torch.Tensor:
    return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _divide(R: torch.Tensor, z: torch.Tensor, epsilon: float = 0.0):
    """Step 2 of every rule: ``s = R / (z + ε rms(z) sign(z))``, with 0/0 kept away.

    The stabiliser is ``epsilon`` times the root mean square of ``z`` (per image), so that one
    ``epsilon`` fits layers of any scale. Where the denominator is exactly zero, ``s = 0``: that
    relevance is dropped (and counted). Returns ``s`` and, per image, the relevance absorbed by
    the stabiliser (``sum s * stabiliser`` plus what was dropped).
    """
    z = z.detach()
    stab = torch.zeros_like(z)
    if epsilon:
        rms = z.pow(2).flatten(1).mean(1).sqrt()
        stab = epsilon * rms.view(-1, *([1] * (z.ndim - 1))) * _sign(z)
    den = z + stab
    dead = den == 0
    s = torch.where(dead, torch.zeros_like(R), R / torch.where(dead, torch.ones_like(den), den))
    return s, _per_image(s * stab) + _per_image(R * dead)


def _per_image(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def _view(b: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return b.view(1, -1, *([1] * (z.ndim - 2)))


def propagate(module: nn.Module, a: torch.Tensor, R: torch.Tensor, rule: str, epsilon: float = 0.25,
              gamma: float = 0.25, bounds=None):
    """Relevance through one layer: ``R`` at its output -> relevance at its input ``a``.

    ``rule`` is one of :data:`LAYER_RULES`. Returns ``(R_in, bias, stabilizer)``: the relevance
    of the inputs, and per image the relevance absorbed by the bias and by the stabiliser
    (for LRP-ε, whose stabiliser is ``epsilon * rms(z) * sign(z)``, with ``rms(z)`` the root mean
    square of the layer's pre-activations of that image, so that one ``epsilon`` fits every
    depth; the other rules have no stabiliser, only outputs with ``z = 0`` pass nothing on), so that
    ``R.sum() == R_in.sum() + bias + stabilizer`` exactly. ``bounds = (l, h)``: the lowest and highest input values
    (zB). Explained in chapter 09, Layer-wise relevance propagation.
    """
    zero = torch.zeros(a.shape[0], device=a.device, dtype=a.dtype)
    if rule == "pass":
        return R.reshape(a.shape), zero, zero
    with torch.enable_grad():
        a = a.detach().requires_grad_(True)
        if rule == "winner-take-all":  # the gradient of max-pooling routes R to each window's winner
            z = F.max_pool2d(a, module.kernel_size, module.stride, module.padding, module.dilation,
                             ceil_mode=module.ceil_mode)
            (c,) = torch.autograd.grad(z, a, R)
            return c, zero, zero
        has_w = isinstance(module, (nn.Conv2d, nn.Linear))
        w = module.weight.detach() if has_w else None
        b = module.bias.detach() if has_w and module.bias is not None else None
        if rule == "zB":
            if bounds is None:
                raise ValueError("the zB rule needs the input bounds (l, h)")
            low = torch.as_tensor(bounds[0], dtype=a.dtype, device=a.device).expand_as(a).clone()
            high = torch.as_tensor(bounds[1], dtype=a.dtype, device=a.device).expand_as(a).clone()
            low.requires_grad_(True)
            high.requires_grad_(True)
            z = _apply(module, a, w) - _apply(module, low, w.clamp(min=0)) - _apply(module, high, w.clamp(max=0))
            s, absorbed = _divide(R, z)
            ca, cl, ch = torch.autograd.grad(z, (a, low, high), s)
            R_in = a * ca + low * cl + high * ch  # z already holds the minus signs
            return R_in.detach(), zero, absorbed
        if rule == "LRP-gamma" and has_w:
            w = w + gamma * w.clamp(min=0)
            b = b + gamma * b.clamp(min=0) if b is not None else None
        elif rule not in ("LRP-0", "LRP-eps", "LRP-gamma"):
            raise ValueError(f"unknown layer rule {rule!r}; valid: {', '.join(LAYER_RULES)}")
        z = _apply(module, a, w, b)
        s, absorbed = _divide(R, z, epsilon if rule == "LRP-eps" else 0.0)
        (c,) = torch.autograd.grad(z, a, s)
    R_in = (a * c).detach()
    bias = _per_image(s * _view(b, z)) if b is not None else zero
    return R_in, bias, absorbed


def linear_epsilon(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, R: torch.Tensor,
                   epsilon: float) -> torch.Tensor:
    """The LRP-ε rule of one linear layer written as matrix products (no autograd).

    ``a`` ``[N, in]``, ``weight`` ``[out, in]``, ``bias`` ``[out]`` or None, ``R`` ``[N, out]``;
    ``epsilon`` is absolute here. ``z = a W^T + b``; ``R_j = a_j sum_k w_kj R_k / (z_k + ε sign z_k)``.
    Explained in chapter 09, Layer-wise relevance propagation.
    """
    z = a @ weight.T + (bias if bias is not None else 0)
    s = R / (z + epsilon * _sign(z))
    return a * (s @ weight)


# --------------------------------------------------------------------------- the whole network
@dataclass
class LayerRelevance:
    """Relevance at one layer (see :func:`relevance_trace`): sums are per image, ``[N]``."""

    name: str
    kind: str
    rule: str
    above: torch.Tensor        # sum of the relevance at the layer's output
    below: torch.Tensor        # sum of the relevance passed to the layer's input
    bias: torch.Tensor         # absorbed by the bias
    stabilizer: torch.Tensor   # absorbed by ε (or the tiny stabiliser)
    map: torch.Tensor | None = field(default=None, repr=False)  # [N, h, w] input relevance summed over channels

    @property
    def residual(self) -> torch.Tensor:
        """``above - below - bias - stabilizer``: zero (up to rounding) when the rule is implemented right."""
        return self.above - self.below - self.bias - self.stabilizer


@dataclass
class LRPResult:
    """What :func:`relevance_trace` returns: the input relevance and every layer's bookkeeping."""

    relevance: torch.Tensor   # [N, 3, H, W] on the CPU
    score: torch.Tensor       # [N] the target logit (the relevance put at the top)
    layers: list              # LayerRelevance, from the top (output) to the bottom (pixels)

    def table(self, image: int = 0, every_layer: bool = False) -> str:
        """A text table of one image: layer, rule, relevance above/below, absorbed, residual.

        Layers that pass relevance on unchanged (ReLU, dropout, flatten) are left out unless
        ``every_layer``.
        """
        head = (f"{'layer':<14}{'type':<19}{'rule':<16}{'sum R above':>13}{'sum R below':>13}"
                f"{'bias':>11}{'eps/stab':>11}{'residual':>11}")
        lines = [head, "-" * len(head), f"{'(output)':<14}{'target logit':<19}{'':<16}"
                 f"{float(self.score[image]):>13.4f}"]
        for L in self.layers:
            if L.rule == "pass" and not every_layer:
                continue
            lines.append(f"{L.name:<14}{L.kind:<19}{L.rule:<16}{float(L.above[image]):>13.4f}"
                         f"{float(L.below[image]):>13.4f}{float(L.bias[image]):>11.4f}"
                         f"{float(L.stabilizer[image]):>11.4f}{float(L.residual[image]):>11.1e}")
        lines.append(f"{'(pixels)':<14}{'input':<19}{'':<16}{'':>13}{float(self.relevance[image].sum()):>13.4f}")
        return "\n".join(lines)


def _bounds(model: nn.Module, device, dtype):
    info = models.info(model)
    mean = torch.tensor(info.mean, device=device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(info.std, device=device, dtype=dtype).view(1, 3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def _check_params(epsilon, gamma):
    for name, v in (("epsilon", epsilon), ("gamma", gamma)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")


def _trace_batch(model, x, targets, plan, epsilon, gamma):
    acts, h = [], x
    with torch.no_grad():
        for _, m, _ in plan:  # forward pass: keep the input of every layer
            acts.append(h)
            h = m(h) if not isinstance(m, nn.ReLU) else F.relu(h)  # never in place
    logits = h
    # None: the class the model predicts, from this forward pass
    t = logits.argmax(1) if targets is None else torch.tensor(targets, device=x.device)
    score = logits.gather(1, t.view(-1, 1))[:, 0]
    R = torch.zeros_like(logits).scatter_(1, t.view(-1, 1), score.view(-1, 1))
    bounds = _bounds(model, x.device, x.dtype)
    records = []
    for (name, m, r), a in zip(reversed(plan), reversed(acts)):
        above = _per_image(R)
        R, bias, stab = propagate(m, a, R, r, epsilon, gamma, bounds)
        records.append(LayerRelevance(
            name, "flatten" if m is _FLATTEN else type(m).__name__, r, above.cpu(), _per_image(R).cpu(),
            bias.cpu(), stab.cpu(), R.sum(1).cpu() if R.ndim == 4 else None))
    return R.cpu(), score.cpu(), records


def relevance_trace(model: nn.Module, x: torch.Tensor, target, rule: str = "epsilon", epsilon: float = 0.25,
                    gamma: float = 0.25, batch_size: int = 16) -> LRPResult:
    """LRP with the bookkeeping of every layer (what :func:`lrp` computes, and more).

    Returns an :class:`LRPResult`: ``.relevance`` ``[N, 3, H, W]`` (CPU), ``.score`` (the target
    logits, the relevance put on the top), ``.layers`` (one :class:`LayerRelevance` per layer,
    top to bottom: relevance sums above and below, the parts absorbed by the bias and by ε, the
    residual, and the relevance map at the layer's input), ``.table(image)``.
    Explained in chapter 09, Layer-wise relevance propagation.
    """
    rule = _check_rule(rule)
    _check_params(epsilon, gamma)
    plan = layer_rules(model, rule)
    x = models.check_batch(model, x)
    targets = None if target is None else models.check_target(model, target, len(x))
    batch_size = models.positive_int(batch_size, "batch_size")
    parts = []
    with hooks.frozen(model):
        if not any(k in type(model).__name__ for k in _KNOWN):  # an unknown model: check the chain
            with torch.no_grad():
                h = x[:1]
                for _, m, _ in plan:
                    h = m(h) if not isinstance(m, nn.ReLU) else F.relu(h)
                if not torch.allclose(h, model(x[:1]), rtol=1e-4, atol=1e-5):
                    raise ValueError(f"{type(model).__name__}'s forward pass is not features -> avgpool -> "
                                     f"flatten -> classifier; LRP here supports sequential conv nets only")
        for s in range(0, len(x), batch_size):
            part = None if targets is None else targets[s:s + batch_size]
            parts.append(_trace_batch(model, x[s:s + batch_size], part, plan, epsilon, gamma))
    cat = lambda ts: torch.cat(ts) if ts[0] is not None else None  # noqa: E731
    layers = [LayerRelevance(*(getattr(recs[0], f) for f in ("name", "kind", "rule")),
                             *(cat([getattr(r, f) for r in recs]) for f in ("above", "below", "bias", "stabilizer", "map")))
              for recs in zip(*[p[2] for p in parts])]
    return LRPResult(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), layers)


def lrp(model: nn.Module, x: torch.Tensor, target, rule: str = "epsilon", epsilon: float = 0.25,
        gamma: float = 0.25, batch_size: int = 16) -> torch.Tensor:
    """Layer-wise relevance propagation of the target's logit down to the pixels.

    Explained in chapter 09, Layer-wise relevance propagation.

    ``x`` a normalised batch ``[N, 3, H, W]``, ``target`` a class index, one per image, or
    ``None`` for the class the model predicts.
    ``rule``: ``"zero"`` (LRP-0; equals gradient x input on these ReLU networks), ``"epsilon"``
    (LRP-ε, stabiliser ``epsilon * rms(z)`` per layer), ``"gamma"`` (LRP-γ with ``gamma``), or
    ``"composite"`` (LRP-0 in the dense layers, LRP-ε in the upper conv layers, LRP-γ in the lower
    ones, zB with the pixel bounds of the normalisation at the first layer, as recommended by
    Montavon et al. 2019). Max-pooling: winner-take-all. Returns ``[N, 3, H, W]`` on the CPU,
    signed; its sum is the target logit minus what biases and ε absorbed (see
    :func:`relevance_trace` for the layer-by-layer bookkeeping). Works for VGG16/19, AlexNet and
    ShapesNet; other architectures raise ``ValueError``. The model is not changed.
    """
    return relevance_trace(model, x, target, rule, epsilon, gamma, batch_size).relevance


# --------------------------------------------------------------------------- pictures and checks
def relevance_image(R, percentile: float = 99.5) -> np.ndarray:
    """Signed relevance ``[3, H, W]`` or ``[H, W]`` -> RGB ``[H, W, 3]`` in [0, 1]: red positive,
    blue negative, white zero, one symmetric scale (the ``percentile`` of ``|R|``).

    Explained in chapter 09, Layer-wise relevance propagation.
    """
    import matplotlib

    r = R.detach().float().cpu().numpy() if isinstance(R, torch.Tensor) else np.asarray(R, dtype=float)
    if r.ndim == 4 and r.shape[0] == 1:
        r = r[0]
    if r.ndim == 3:
        r = r.sum(0)
    if r.ndim != 2:
        raise ValueError(f"relevance_image draws one image's relevance [3, H, W] or [H, W], got shape "
                         f"{r.shape}; index a batch first (R[0])")
    scale = np.percentile(np.abs(r), percentile)
    v = np.clip(r / scale, -1, 1) if scale > 0 else np.zeros_like(r)
    return matplotlib.colormaps["bwr"](0.5 + 0.5 * v)[..., :3]


def mask_share(R, mask) -> float:
    """The share of the positive relevance that lies inside ``mask`` (bool ``[H, W]``).

    Compare with the mask's area fraction: a map that points at the object has a larger share.
    Explained in chapter 09, Layer-wise relevance propagation.
    """
    r = R.detach().cpu().sum(0) if isinstance(R, torch.Tensor) and R.ndim == 3 else torch.as_tensor(R)
    m = torch.as_tensor(mask, dtype=torch.bool)
    if r.ndim != 2 or m.shape != r.shape:
        raise ValueError(f"mask_share takes one image's relevance [3, H, W] or [H, W] and its mask [H, W]; "
                         f"got relevance {tuple(R.shape)} and mask {tuple(m.shape)} (index a batch first: R[0])")
    pos = r.clamp(min=0)
    total = float(pos.sum())
    return float(pos[m.to(pos.device)].sum()) / total if total > 0 else 0.0
