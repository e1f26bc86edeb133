"""Metrics: can an attribution map be trusted?

Explained in chapter 24, Can we trust the maps?

* Localisation: the pointing game (Zhang et al. 2018) and the energy-based pointing game
  (Wang et al. 2020), against ground-truth masks: :func:`pointing_game`,
  :func:`energy_pointing_game`.
* Faithfulness: deletion and insertion curves and their areas (Petsiuk, Das & Saenko 2018):
  :func:`deletion`, :func:`insertion`.
* Sanity checks (Adebayo et al. 2018): cascading randomisation of the model's layers from the top
  (:func:`randomization_test`), and the data randomisation test with a model trained on shuffled
  labels (:func:`data_randomization_test`), both measured with the Spearman rank correlation
  (:func:`spearman`) and SSIM (:func:`ssim`) between maps.
* The leaderboard: every attribution method of the book (:func:`methods`) measured on the same
  images (:func:`leaderboard`); ``python -m helpers.metrics leaderboard --out data/leaderboard.json``
  computes the full one that the chapter ships.

Conventions: a *heatmap* is ``[N, H, W]``; an input-space map ``[N, 3, H, W]`` becomes one with
:func:`as_heatmap` (sum of the absolute values over the colour channels, as the figures of
Adebayo et al.). Every function that runs a model leaves it exactly as it was.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import inspect
import json
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, stats
from torch import nn

from . import hooks, models

__all__ = [
    "as_heatmap", "Pointing", "pointing_game", "energy_pointing_game", "Curve", "deletion", "insertion",
    "blur", "ssim", "spearman", "parameter_layers", "peak", "weights_digest", "agreement",
    "shapes_leaderboard", "COLUMNS", "SCENE_SEED", "randomize_layers", "Randomization", "randomization_test",
    "Similarity", "data_randomization_test", "METHODS", "methods", "Leaderboard", "leaderboard",
    "LEADERBOARD", "scene_seeds", "default_smoothgrad_noise",
]

#: Where ``python -m helpers.metrics leaderboard`` writes the shipped leaderboard by default.
LEADERBOARD = Path(__file__).resolve().parent.parent / "data" / "leaderboard.json"
#: Every attribution method of the book, in the order of the chapters.
METHODS = ("vanilla", "saliency", "guided", "deconvnet", "grad_x_image", "integrated_gradients",
           "smoothgrad", "lrp", "cam", "grad_cam", "guided_grad_cam", "grad_cam_pp", "score_cam",
           "layer_cam", "occlusion")
#: Held-out single-object scenes of the leaderboard: ``SCENE_SEED + i`` for scene i.
SCENE_SEED = 300_000
# A batch of perturbed images holds about this many pixels (x 3 channels) when batch_size=None:
# 64 images of 128 x 128, 20 of 224 x 224.
_AUTO_BATCH_PIXELS = 2 ** 20


# --------------------------------------------------------------------------- small tools
def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _check_x(x, fn: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{fn}: x must be a normalised batch [N, 3, H, W] with N >= 1 "
                         f"(images.to_tensor or shapes.batch), got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{fn}: x must be a float tensor (normalised pixels), got {x.dtype}")
    return x.detach()


def scene_seeds(n: int, start: int = SCENE_SEED) -> list:
    """The seeds of the leaderboard's first ``n`` held-out single-object scenes (``start + i``).

    Explained in chapter 24, Can we trust the maps?
    """
    return list(range(start, start + int(n)))


def as_heatmap(m, reduce: str = "sum", absolute: bool = True) -> torch.Tensor:
    """Any attribution -> ``[N, H, W]`` map, each divided by its largest absolute value.

    An input-space map ``[N, 3, H, W]`` is merged over the colour channels: with
    ``absolute=True`` (default) by the sum (``reduce="sum"``, as the figures of Adebayo et al.)
    or the maximum (``reduce="max"``, as Simonyan's saliency) of the absolute values, giving a
    map in [0, 1]; with ``absolute=False`` by the signed sum, giving a map in [-1, 1]. A heatmap
    ``[N, H, W]`` (CAMs, saliency; ``[H, W]`` is one map) keeps its values (absolute values if
    ``absolute``). A map that is zero everywhere stays zero.
    Explained in chapter 24, Can we trust the maps?
    """
    if reduce not in ("sum", "max"):
        raise ValueError(f"reduce must be 'sum' or 'max' (how colour channels are merged), got {reduce!r}")
    m = m.detach().float().cpu() if isinstance(m, torch.Tensor) else torch.as_tensor(np.asarray(m), dtype=torch.float32)
    if m.dim() == 2:
        m = m[None]
    if m.dim() == 4:
        if absolute:
            m = m.abs().sum(1) if reduce == "sum" else m.abs().amax(1)
        else:
            m = m.sum(1)
    elif m.dim() != 3:
        raise ValueError(f"a map must be [N, H, W], [H, W] or an input-space map [N, 3, H, W]; got {tuple(m.shape)}")
    elif absolute:
        m = m.abs()
    top = m.flatten(1).abs().amax(1).clamp(min=1e-30)[:, None, None]
    return m / top


def _pair(heatmaps, masks, fn):
    h, m = _np(as_heatmap(heatmaps)), _np(masks).astype(bool)
    if m.ndim == 2:
        m = m[None]
    if h.shape != m.shape:
        raise ValueError(f"{fn}: heatmaps {h.shape} and masks {m.shape} must have the same shape [N, H, W] "
                         f"(one mask of the target object per map)")
    return h, m


# --------------------------------------------------------------------------- localisation
@dataclass
class Pointing:
    """Result of a pointing game: the score and one value per map.

    ``hits``: one bool per map (pointing game) or the share of the energy on the object (energy
    pointing game); ``accuracy``: their mean, or with ``classes`` the mean over classes of the
    per-class means (the paper's "mean accuracy across categories"); ``points``: the ``(row,
    col)`` of each map's maximum (pointing game), ``-1`` where a map has no maximum;
    ``distances``: the distance in pixels from each maximum to the nearest object pixel (0 on
    the object, ``inf`` where a map has no maximum or a mask is empty), so that the hits at any
    tolerance ``t`` are ``distances <= t``.
    """

    accuracy: float
    hits: np.ndarray
    points: np.ndarray | None = None
    per_class: dict = field(default_factory=dict)
    distances: np.ndarray | None = None

    def __float__(self):
        return float(self.accuracy)


def _score(values: np.ndarray, classes):
    if len(values) == 0:
        return float("nan"), {}
    if classes is None:
        return float(np.mean(values)), {}
    classes = [int(c) for c in (classes.tolist() if isinstance(classes, torch.Tensor) else classes)]
    if len(classes) != len(values):
        raise ValueError(f"classes has {len(classes)} entries for {len(values)} maps; give one class per map")
    per = {c: float(np.mean([v for v, k in zip(values, classes) if k == c])) for c in sorted(set(classes))}
    return float(np.mean(list(per.values()))), per


def peak(heatmap) -> tuple:
    """``(row, col)`` of the maximum of one map ``[H, W]``; ``None`` when the map is constant.

    Where several pixels share the maximum (a plateau, as in occlusion maps) the tied pixel
    nearest to the centre of the tied set is taken, so a plateau is not scored by its corner.
    Explained in chapter 24, Can we trust the maps?
    """
    h = _np(heatmap).astype(np.float64)
    top, low = h.max(), h.min()
    if not top > low:
        return None
    tied = np.argwhere(h >= top - 1e-6 * max(abs(top), 1e-30))
    if len(tied) == 1:
        return tuple(int(v) for v in tied[0])
    centre = tied.mean(0)
    return tuple(int(v) for v in tied[np.argmin(((tied - centre) ** 2).sum(1))])


def pointing_game(heatmaps, masks, tolerance: int = 15, classes=None) -> Pointing:
    """Zhang et al. 2018: a hit when the map's maximum lies on the object, within ``tolerance`` pixels.

    ``heatmaps`` ``[N, H, W]`` (or input-space maps ``[N, 3, H, W]``, see :func:`as_heatmap`),
    ``masks`` bool ``[N, H, W]``: the pixels of the target object of each map. A hit when the
    distance from the maximum to the nearest object pixel is at most ``tolerance`` (the paper's
    15 pixels, set for PASCAL VOC and COCO images some 500 pixels wide; ``tolerance=0``: the
    maximum must lie on the object). A constant map (zero everywhere) points nowhere: a miss.
    ``classes`` (one per map): the score is the mean over classes of the per-class hit rates, as
    in the paper. Returns :class:`Pointing`.
    Explained in chapter 24, Can we trust the maps?
    """
    h, m = _pair(heatmaps, masks, "pointing_game")
    if tolerance < 0:
        raise ValueError(f"tolerance is a distance in pixels, >= 0; got {tolerance}")
    points = np.full((len(h), 2), -1, int)
    dist = np.full(len(h), np.inf)
    for i in range(len(h)):
        p = peak(h[i])
        if p is None:
            continue
        points[i] = p
        if m[i][p]:
            dist[i] = 0.0
        elif m[i].any():
            ys, xs = np.nonzero(m[i])
            dist[i] = float(np.sqrt(((ys - p[0]) ** 2 + (xs - p[1]) ** 2).min()))
    hits = dist <= tolerance
    acc, per = _score(hits, classes)
    return Pointing(acc, hits, points, per, dist)


def energy_pointing_game(heatmaps, masks, box: bool = False, classes=None) -> Pointing:
    """Wang et al. 2020 (Score-CAM): the share of the map's energy (its sum) that lies on the object.

    ``share = sum(L * mask) / sum(L)`` for each map ``L`` (absolute values, :func:`as_heatmap`).
    The paper uses the object's bounding box (``box=True``); with exact masks (default) the
    shapes world uses the object itself, which is stricter. ``hits`` holds the share of each
    map (a map that is zero everywhere has share 0), ``accuracy`` their mean (per class with
    ``classes``).
    Explained in chapter 24, Can we trust the maps?
    """
    h, m = _pair(heatmaps, masks, "energy_pointing_game")
    if box:
        boxed = np.zeros_like(m)
        for i in range(len(m)):
            ys, xs = np.nonzero(m[i])
            if len(ys):
                boxed[i, ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        m = boxed
    total = h.reshape(len(h), -1).sum(1)
    share = np.where(total > 0, (h * m).reshape(len(h), -1).sum(1) / np.maximum(total, 1e-30), 0.0)
    acc, per = _score(share, classes)
    return Pointing(acc, share, None, per)


# --------------------------------------------------------------------------- faithfulness
@dataclass
class Curve:
    """A deletion or insertion curve: the target's probability after each step, and its area.

    ``fractions`` ``[steps + 1]``: the share of pixels switched (0 to 1); ``scores``
    ``[N, steps + 1]``: the softmax probability of the target; ``auc`` ``[N]``: the area under
    each curve (trapezoid rule over ``fractions``); ``mode``: "deletion" or "insertion".
    """

    fractions: np.ndarray
    scores: np.ndarray
    auc: np.ndarray
    mode: str = ""

    @property
    def mean_auc(self) -> float:
        return float(self.auc.mean())


def blur(x: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """Insertion's start image: ``x`` ``[N, C, H, W]`` blurred by a Gaussian of ``sigma`` pixels.

    Separable, ``2 * round(3 sigma) + 1`` taps, borders mirrored (as ``scipy.ndimage``'s
    ``mode="mirror"``).
    Explained in chapter 24, Can we trust the maps?
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a width in pixels > 0, got {sigma!r}")
    r = max(1, min(int(round(3 * sigma)), x.shape[-1] - 1, x.shape[-2] - 1))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _ranks(h: torch.Tensor, seed: int) -> torch.Tensor:
    """Rank of every pixel of every map (0 = most important); ties are broken at random, reproducibly."""
    n, npx = h.shape[0], h[0].numel()
    perm = torch.randperm(npx, generator=torch.Generator().manual_seed(int(seed)))
    flat = h.reshape(n, npx)[:, perm]
    order = perm[flat.argsort(dim=1, descending=True, stable=True)]   # most important first
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(npx).expand(n, npx).contiguous())
    return ranks


def _causal_curve(model, x, target, heatmap, steps, batch_size, mode, substrate, sigma, progress, seed):
    fn = mode
    x = _check_x(x, fn)
    targets = models.check_target(model, target, x.shape[0])
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{fn}: steps must be an integer >= 1, got {steps!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"{fn}: batch_size must be a positive integer or None, got {batch_size!r}")
    h = as_heatmap(heatmap)
    if h.shape[0] != x.shape[0] or h.shape[1:] != x.shape[2:]:
        raise ValueError(f"{fn}: heatmap {tuple(h.shape)} must be [N, H, W] matching x {tuple(x.shape)}")
    dev = models.device(model)
    x = models.as_input(model, x)
    if isinstance(substrate, torch.Tensor):
        base = substrate.detach().to(device=dev, dtype=x.dtype).expand_as(x)
    elif substrate == "blur":
        base = blur(x, sigma)
    elif substrate == "zero":
        base = torch.zeros_like(x)  # 0 in the normalised space: the dataset's mean colour, a grey
    else:
        raise ValueError(f"{fn}: unknown substrate {substrate!r}; valid: 'zero', 'blur' or a tensor like x")
    n, _, hh, ww = x.shape
    npx = hh * ww
    ranks = _ranks(h, seed).to(dev)                                    # [N, H*W]
    counts = torch.tensor([round(npx * k / steps) for k in range(steps + 1)], device=dev)
    start, end = (x, base) if mode == "deletion" else (base, x)
    total = n * (steps + 1)
    bs = batch_size or max(1, _AUTO_BATCH_PIXELS // npx)
    scores = torch.zeros(total)
    tgt = torch.tensor(targets, device=dev)
    from tqdm.auto import tqdm

    with hooks.frozen(model), torch.no_grad():
        for s in tqdm(range(0, total, bs), disable=not progress, desc=mode, leave=False):
            j = torch.arange(s, min(s + bs, total), device=dev)
            i, k = j // (steps + 1), j % (steps + 1)                    # image and step of each copy
            switched = (ranks[i] < counts[k][:, None]).view(-1, 1, hh, ww).to(x.dtype)
            batch = start[i] * (1 - switched) + end[i] * switched       # the k most important pixels switched
            p = torch.softmax(models.scores(model(batch)).float(), dim=1)
            scores[s:s + len(j)] = p[torch.arange(len(j), device=dev), tgt[i]].cpu()
    fr = counts.cpu().numpy() / npx
    sc = scores.view(n, steps + 1).numpy()
    auc = ((sc[:, 1:] + sc[:, :-1]) / 2 * np.diff(fr)).sum(1)          # trapezoid rule
    return Curve(fr, sc, auc, mode)


def deletion(model: nn.Module, x: torch.Tensor, target, heatmap, steps: int = 16, batch_size: int | None = None,
             substrate="zero", progress: bool = False, seed: int = 0) -> Curve:
    """Petsiuk, Das & Saenko 2018, deletion: remove the most important pixels first; a faithful map
    makes the target's probability fall fast (a **low** area under the curve is good).

    At step ``k`` (``k = 0..steps``) the ``round(k / steps * H * W)`` pixels that ``heatmap``
    ranks highest (:func:`as_heatmap`; ties in random order, fixed by ``seed``) take the value of
    ``substrate``: ``"zero"`` (0 in the normalised space, the mean colour: the paper's code sets
    them to zero), ``"blur"`` or a tensor like ``x``. The softmax probability of ``target`` is
    recorded at each step. All ``N * (steps + 1)`` perturbed images run in batches of
    ``batch_size`` (``None``: about 64 images of 128 x 128) under ``torch.no_grad()``.
    Returns a :class:`Curve`.
    Explained in chapter 24, Can we trust the maps?
    """
    return _causal_curve(model, x, target, heatmap, steps, batch_size, "deletion", substrate, 5.0, progress, seed)


def insertion(model: nn.Module, x: torch.Tensor, target, heatmap, steps: int = 16, batch_size: int | None = None,
              substrate="blur", sigma: float = 5.0, progress: bool = False, seed: int = 0) -> Curve:
    """Petsiuk, Das & Saenko 2018, insertion: start from a blurred copy and put the most important
    pixels back first; a faithful map makes the probability rise fast (a **high** area is good).

    The start image is ``x`` blurred by a Gaussian of standard deviation ``sigma`` pixels
    (``substrate="blur"``; ``"zero"`` or a tensor also work). Otherwise as :func:`deletion`.
    Explained in chapter 24, Can we trust the maps?
    """
    return _causal_curve(model, x, target, heatmap, steps, batch_size, "insertion", substrate, sigma, progress, seed)


# --------------------------------------------------------------------------- similarity of maps
def _unit(m: np.ndarray) -> np.ndarray:
    """Each map (last two axes) min-max scaled to [0, 1]; a constant map becomes 0."""
    lo = m.min(axis=(-2, -1), keepdims=True)
    span = m.max(axis=(-2, -1), keepdims=True) - lo
    return np.where(span > 0, (m - lo) / np.where(span > 0, span, 1.0), 0.0)


def _maps(a, b, fn):
    a, b = _np(a).astype(np.float64), _np(b).astype(np.float64)
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ValueError(f"{fn}: two maps [H, W] or two batches [N, H, W] of the same shape, got {a.shape} and {b.shape}")
    return a, b


def ssim(a, b, sigma: float = 1.5):
    """Structural similarity (Wang et al. 2004) of two maps, each first min-max scaled to [0, 1].

    The mean over the map of ``(2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 +
    s_b^2 + C2))``, local statistics under a Gaussian window of ``sigma`` pixels, ``C1 = 0.01^2``,
    ``C2 = 0.03^2`` (data range 1). Two maps ``[H, W]`` -> a float; two batches ``[N, H, W]`` ->
    one value per pair.
    Explained in chapter 24, Can we trust the maps?
    """
    a, b = _maps(a, b, "ssim")
    a, b = _unit(a), _unit(b)
    s = (0, sigma, sigma) if a.ndim == 3 else sigma
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = ndimage.gaussian_filter(a, s), ndimage.gaussian_filter(b, s)
    saa = ndimage.gaussian_filter(a * a, s) - mu_a ** 2
    sbb = ndimage.gaussian_filter(b * b, s) - mu_b ** 2
    sab = ndimage.gaussian_filter(a * b, s) - mu_a * mu_b
    v = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    out = v.mean(axis=(-2, -1))
    return float(out) if a.ndim == 2 else out


def spearman(a, b):
    """Spearman rank correlation of two maps: the Pearson correlation of their ranks.

    ``rho = cov(rank(a), rank(b)) / (std(rank(a)) std(rank(b)))`` over all pixels, ties given
    their average rank. A constant map has no ranking: its correlation is 0. Two maps ``[H, W]``
    -> a float; two batches ``[N, H, W]`` -> one value per pair.
    Explained in chapter 24, Can we trust the maps?
    """
    a, b = _maps(a, b, "spearman")
    single = a.ndim == 2
    a, b = (a.reshape(1, -1), b.reshape(1, -1)) if single else (a.reshape(len(a), -1), b.reshape(len(b), -1))
    ra = stats.rankdata(a, axis=1)
    rb = stats.rankdata(b, axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    rho = np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1.0), 0.0)
    return float(rho[0]) if single else rho


# --------------------------------------------------------------------------- sanity checks
def parameter_layers(model: nn.Module) -> list:
    """Names of the layers with weights (conv, linear, batch norm), from the output to the input.

    ShapesNet: ``classifier, features.15, features.13, features.11, features.8, features.6,
    features.3, features.0``. The order of the cascade of :func:`randomization_test`.
    Explained in chapter 24, Can we trust the maps?
    """
    order = models._forward_order(model, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))
    return order[::-1]


def _reinit(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for pname, p in module.named_parameters(recurse=False):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(device=p.device, dtype=p.dtype)
            if p.dim() > 1:  # weights: He initialisation (normal, fan-in), as a freshly built layer
                p.copy_(noise * math.sqrt(2.0 / p[0].numel()))
            elif pname == "weight":  # batch-norm scale
                p.copy_(1.0 + 0.1 * noise)
            else:  # biases: small
                p.copy_(0.01 * noise)
    for name in ("running_mean", "running_var"):  # batch norm: the statistics of a fresh layer
        buf = getattr(module, name, None)
        if isinstance(buf, torch.Tensor):
            buf.fill_(0.0 if name == "running_mean" else 1.0)


def _layer_generator(name: str, seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(name.encode()))


def randomize_layers(model: nn.Module, layers, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose ``layers`` (names or modules) have new random weights.

    Each layer gets He-initialised weights (``N(0, 2 / fan_in)``), small random biases, and
    batch norms a fresh state; the random numbers of a layer depend only on its name and
    ``seed``, so randomising layers one by one (the cascade) or all at once gives the same
    weights. A block (``"features"``, ``"layer4"``) randomises every layer inside it, each as
    if named alone; a layer without weights (a ReLU, a pooling) raises ``ValueError``.
    The caller's model is not changed.
    Explained in chapter 24, Can we trust the maps?
    """
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    names = [models.layer_name(model, models.layer(model, name)) for name in layers]
    for name in names:
        if next(models.layer(model, name).parameters(), None) is None:
            raise ValueError(f"layer {name!r} has no weights to randomise; choose one of "
                             f"{', '.join(parameter_layers(model))} or a block that holds them")
    rnd = copy.deepcopy(model)
    for name in names:
        for sub, module in models.layer(rnd, name).named_modules():
            full = f"{name}.{sub}" if sub else name
            _reinit(module, _layer_generator(full, seed))
    return rnd.eval() if not model.training else rnd


@dataclass
class Randomization:
    """Cascading (or independent) randomisation: how similar the maps stay, step by step.

    ``layers[s]`` is the layer randomised at step ``s`` (cumulatively from the top when
    cascading). ``spearman`` ``[steps, N]``: rank correlation of the absolute maps with the
    original ones; ``spearman_signed``: the same on signed maps (channels summed, no absolute
    value); ``ssim`` ``[steps, N]`` on the absolute maps. ``maps``: the absolute heatmaps
    ``[N, H, W]``, first the original, then one per step.
    """

    layers: list
    spearman: np.ndarray
    spearman_signed: np.ndarray
    ssim: np.ndarray
    maps: list
    cascading: bool = True

    @property
    def sensitivity(self) -> float:
        """``1 - mean Spearman`` over every step and image: one minus the area under the
        Spearman-versus-depth curve (chapter 24's definition, the leaderboard's ``sensitivity``).
        0: the maps never change; 1: unrelated from the first step; above 1: anti-correlated. The
        last step alone (every layer random, when cascading) is ``spearman[-1]``, the
        leaderboard's ``spearman_all``."""
        return float(1.0 - self.spearman.mean())


def _compare(a_raw, b_raw):
    a, b = as_heatmap(a_raw), as_heatmap(b_raw)
    sa, sb = as_heatmap(a_raw, absolute=False), as_heatmap(b_raw, absolute=False)
    return a, b, spearman(a, b), spearman(sa, sb), ssim(a, b)


def randomization_test(model: nn.Module, method, x: torch.Tensor, target, layers=None, seed: int = 0,
                       cascading: bool = True, reference=None, progress: bool = False, **kwargs) -> Randomization:
    """Adebayo et al. 2018, model parameter randomisation: do the maps depend on the weights?

    Cascading (default): re-initialise the layers from the top (``layers``, default
    :func:`parameter_layers`: every layer with weights, output first), one more at each step, and
    compare the method's maps with the original ones (:func:`spearman` of absolute and of signed
    maps, :func:`ssim`). ``cascading=False``: the paper's independent randomisation, one layer at
    a time, the others trained. ``method(model, x, target, **kwargs)`` is any attribution of the
    book (:func:`methods` has them all). A method whose maps stay similar while the weights that
    made the decision are destroyed is not explaining the decision. ``reference``: the method's
    maps of ``model`` on ``x`` when they are already at hand (they are not computed again). The
    caller's model is never changed (copies are randomised, :func:`randomize_layers`).
    Explained in chapter 24, Can we trust the maps?
    """
    from tqdm.auto import tqdm

    x = _check_x(x, "randomization_test")
    if not callable(method):
        raise ValueError(f"method must be a function method(model, x, target), got {method!r}")
    layers = list(layers) if layers is not None else parameter_layers(model)
    if not layers:
        raise ValueError("layers is empty: give the layers to randomise, top first")
    layers = [models.layer_name(model, models.layer(model, name)) for name in layers]
    if reference is None:
        with hooks.preserved(model):
            raw = method(model, x, target, **kwargs)
    else:
        raw = reference
    original = as_heatmap(raw)
    sp, sps, ss, maps = [], [], [], [original]
    for s in tqdm(range(len(layers)), disable=not progress, desc="randomising", leave=False):
        chosen = layers[:s + 1] if cascading else [layers[s]]
        rnd = randomize_layers(model, chosen, seed)
        other = method(rnd, x, target, **kwargs)
        _, b, r, r_signed, sim = _compare(raw, other)
        maps.append(b)
        sp.append(r)
        sps.append(r_signed)
        ss.append(sim)
        del rnd
    return Randomization(layers, np.array(sp), np.array(sps), np.array(ss), maps, cascading)


@dataclass
class Similarity:
    """Maps of two models on the same images, and how similar they are (one value per image)."""

    spearman: np.ndarray
    spearman_signed: np.ndarray
    ssim: np.ndarray
    maps: torch.Tensor
    other_maps: torch.Tensor


def data_randomization_test(model: nn.Module, other: nn.Module, method, x: torch.Tensor, target,
                            **kwargs) -> Similarity:
    """Adebayo et al. 2018, data randomisation: the maps of ``model`` against those of ``other``, the
    same architecture trained on shuffled labels (``models.load("shapesnet-shuffled")``).

    Both explain the same ``target`` on the same images. The labels of ``other`` carried no
    information about the images, so a method that explains the *model* must give different
    maps (low :func:`spearman` and :func:`ssim`); a method that gives the same maps shows the
    image, not what the network learnt.
    Explained in chapter 24, Can we trust the maps?
    """
    x = _check_x(x, "data_randomization_test")
    a_raw = method(model, x, target, **kwargs)
    b_raw = method(other, x, target, **kwargs)
    a, b, r, r_signed, sim = _compare(a_raw, b_raw)
    return Similarity(np.atleast_1d(r), np.atleast_1d(r_signed), np.atleast_1d(sim), a, b)


# --------------------------------------------------------------------------- every method of the book
def default_smoothgrad_noise(model) -> float:
    """The leaderboard's SmoothGrad noise level for ``model``: chapter 08's choice.

    The paper's 15 % of the input range on the ImageNet networks; 3 % on ShapesNet, which keeps
    its answer on copies with that much noise but not at the paper's levels (chapter 08, "How
    much noise?"): averaging the gradients of copies the network no longer recognises would not
    explain its decision on the image.
    """
    return 0.15 if models.info(model).world == "imagenet" else 0.03


def methods(ig_steps: int = 16, smoothgrad_samples: int = 16, smoothgrad_noise: float | None = None,
            occlusion_size: int | None = None, occlusion_stride: int | None = None,
            lrp_rule: str = "epsilon", seed: int = 0, names=None) -> dict:
    """Every attribution method of the book as ``fn(model, x, target) -> map``, in chapter order.

    The maps are what the helpers return (input-space maps ``[N, 3, H, W]`` or heatmaps
    ``[N, H, W]``), except occlusion: its map is turned into the *drop* of the target's
    probability, ``max(0, p(x) - p(x occluded))``, so that high means important, as for the
    others. The settings are those of the leaderboard: integrated gradients with ``ig_steps``
    (black baseline), SmoothGrad of the gradient with ``smoothgrad_samples`` noisy copies at
    noise level ``smoothgrad_noise`` (default: :func:`default_smoothgrad_noise` of the model: the paper's
    15 % on ImageNet models, 3 % on ShapesNet, which loses its answer at the paper's levels, chapter 08;
    the noise drawn from a generator seeded with ``seed`` at each call, so that two models see the
    same noise), LRP with ``lrp_rule``, the CAMs at ``models.last_conv_layer``, occlusion with
    squares of ``occlusion_size`` pixels (default: a quarter of the side) every
    ``occlusion_stride`` pixels (default: half the size). ``names`` picks some of :data:`METHODS`.
    Explained in chapter 24, Can we trust the maps?
    """
    from . import cam, deconvnet, gradients

    def smooth(model, x, target):
        noise = smoothgrad_noise if smoothgrad_noise is not None else default_smoothgrad_noise(model)
        return gradients.smoothgrad(model, x, target, samples=smoothgrad_samples, noise=noise,
                                    progress=False, generator=torch.Generator().manual_seed(seed))

    def occl(model, x, target):
        p = deconvnet.occlusion(model, x, target, size=occlusion_size, stride=occlusion_stride, progress=False)
        t = torch.tensor(models.check_target(model, target, x.shape[0]))
        with hooks.frozen(model), torch.no_grad():
            clean = torch.softmax(models.scores(model(models.as_input(model, x))).float(), 1).cpu()
        return (clean[torch.arange(len(t)), t][:, None, None] - p).clamp(min=0)

    table = {
        "vanilla": lambda model, x, target: gradients.vanilla(model, x, target),
        "saliency": lambda model, x, target: gradients.saliency(model, x, target),
        "guided": lambda model, x, target: gradients.guided(model, x, target),
        "deconvnet": lambda model, x, target: gradients.deconvnet(model, x, target),
        "grad_x_image": lambda model, x, target: gradients.grad_x_image(model, x, target),
        "integrated_gradients": lambda model, x, target: gradients.integrated_gradients(
            model, x, target, steps=ig_steps, progress=False),
        "smoothgrad": smooth,
        "lrp": lambda model, x, target: gradients.lrp(model, x, target, rule=lrp_rule),
        "cam": lambda model, x, target: cam.cam(model, x, target),
        "grad_cam": lambda model, x, target: cam.grad_cam(model, x, target),
        "guided_grad_cam": lambda model, x, target: cam.guided_grad_cam(model, x, target),
        "grad_cam_pp": lambda model, x, target: cam.grad_cam_pp(model, x, target),
        "score_cam": lambda model, x, target: cam.score_cam(model, x, target, progress=False),
        "layer_cam": lambda model, x, target: cam.layer_cam(model, x, target),
        "occlusion": occl,
    }
    assert tuple(table) == METHODS
    if names is None:
        return table
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(METHODS)}")
    return {n: table[n] for n in names}


# --------------------------------------------------------------------------- the leaderboard
#: The columns of the leaderboard: (key, title, format, True when higher is better, False when lower
#: is better, None when neither: the shuffled model's pointing game is information, not a score).
COLUMNS = (
    ("pointing", "pointing", "{:.2f}", True),
    ("pointing_15", "pointing 15px", "{:.2f}", True),
    ("energy", "energy", "{:.2f}", True),
    ("deletion", "deletion AUC", "{:.3f}", False),
    ("insertion", "insertion AUC", "{:.3f}", True),
    ("sensitivity", "rand. sensitivity", "{:.2f}", True),
    ("spearman_all", "Spearman all random", "{:.2f}", False),
    ("data_sensitivity", "data sensitivity", "{:.2f}", True),
    ("shuffled_pointing", "shuffled pointing 15px", "{:.2f}", None),
    ("time", "time / forward", "{:.1f}", False),
)


@dataclass
class Leaderboard:
    """All methods x all metrics, with the per-image values behind every number.

    ``rows[method][column]`` is a float (``nan`` where the column does not apply or the method
    does not support the model); ``per_image[method][column]`` the list of per-image values;
    ``curves[method]`` the mean deletion and insertion curves; ``cascade[method]`` the mean
    Spearman correlation after each step of the cascading randomisation (when computed);
    ``settings`` how it was computed; ``skipped[method]`` why a method did not run.
    """

    rows: dict
    per_image: dict
    curves: dict
    settings: dict
    cascade: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    maps: dict = field(default_factory=dict, repr=False)

    @property
    def methods(self) -> list:
        return list(self.rows)

    #: settings that must be equal for two leaderboards' rows to be comparable
    SAME = ("model", "world", "images", "targets", "seeds", "n_faithfulness", "n_randomization", "n_data",
            "steps", "seed", "weights", "weights_shuffled")

    def merged(self, redo: "Leaderboard", note: str = "") -> "Leaderboard":
        """This leaderboard with the methods of ``redo`` replaced (or added) by ``redo``'s rows.

        Both must have been computed on the same scenes with the same settings (:attr:`SAME`),
        otherwise ``ValueError``. The method settings of ``redo`` are taken over, and
        ``settings["recomputed"][method]`` records the redo (its command, time, and the row it
        replaced; an earlier redo of the same method is kept under its ``"earlier"``). Used by
        ``python -m helpers.metrics leaderboard --methods ...`` on an existing file.
        """
        differ = [k for k in self.SAME if self.settings.get(k) != redo.settings.get(k)]
        if differ:
            raise ValueError(f"the two leaderboards were computed differently ({', '.join(differ)}); "
                             f"make the whole leaderboard again instead")
        out = Leaderboard(rows=dict(self.rows), per_image=dict(self.per_image), curves=dict(self.curves),
                          settings=json.loads(json.dumps(self.settings)), cascade=dict(self.cascade),
                          skipped=dict(self.skipped))
        recomputed = out.settings.setdefault("recomputed", {})
        for m in redo.methods:
            previous = self.rows.get(m)
            for part in ("rows", "per_image", "curves", "cascade", "skipped"):
                mine, theirs = getattr(out, part), getattr(redo, part)
                mine.pop(m, None)
                if m in theirs:
                    mine[m] = theirs[m]
            earlier = recomputed.get(m)
            recomputed[m] = {"command": redo.settings.get("command", ""), "seconds": redo.settings.get("seconds"),
                             "forward_seconds": redo.settings.get("forward_seconds"),
                             "torch": redo.settings.get("torch", ""), "why": note,
                             "previous": {"methods": self.settings.get("methods", {}), "row": previous}}
            if earlier is not None:
                recomputed[m]["earlier"] = earlier
        out.settings["methods"] = {**self.settings.get("methods", {}), **redo.settings.get("methods", {})}
        order = [m for m in METHODS if m in out.rows] + [m for m in out.rows if m not in METHODS]
        for part in ("rows", "per_image", "curves", "cascade"):
            d = getattr(out, part)
            setattr(out, part, {m: d[m] for m in order if m in d})
        return out

    def column(self, key: str) -> np.ndarray:
        return np.array([self.rows[m].get(key, float("nan")) for m in self.rows])

    def table(self, columns=None) -> str:
        """The leaderboard as aligned text, one row per method (``-``: does not apply)."""
        cols = [c for c in COLUMNS if columns is None or c[0] in columns]
        cols = [c for c in cols if np.isfinite(self.column(c[0])).any()]
        head = ["method"] + [c[1] + {True: " ^", False: " v", None: ""}[c[3]] for c in cols]
        lines = []
        for m, row in self.rows.items():
            cells = [m]
            for key, _, fmt, _ in cols:
                v = row.get(key, float("nan"))
                cells.append(fmt.format(v) if np.isfinite(v) else "-")
            lines.append(cells)
        widths = [max(len(r[i]) for r in [head] + lines) for i in range(len(head))]
        out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
        out.append("  ".join("-" * w for w in widths))
        for r in lines:
            out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        for m, why in self.skipped.items():
            out.append(f"{m}: not run ({why})")
        out.append("^ higher is better, v lower is better")
        return "\n".join(out)

    def to_json(self, path) -> None:
        """Write everything but the maps to ``path`` (JSON)."""
        def clean(v):
            if isinstance(v, dict):
                return {str(k): clean(u) for k, u in v.items()}
            if isinstance(v, (list, tuple, np.ndarray)):
                return [clean(u) for u in (v.tolist() if isinstance(v, np.ndarray) else v)]
            if isinstance(v, (float, np.floating)):
                return None if not np.isfinite(v) else round(float(v), 6)
            if isinstance(v, (np.integer, np.bool_)):
                return v.item()
            return v

        data = {"rows": self.rows, "per_image": self.per_image, "curves": self.curves,
                "cascade": self.cascade, "settings": self.settings, "skipped": self.skipped}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(clean(data), indent=1) + "\n")

    @classmethod
    def from_json(cls, path=None) -> "Leaderboard":
        """Read a leaderboard written by :meth:`to_json` (default: the shipped :data:`LEADERBOARD`)."""
        path = Path(path) if path is not None else LEADERBOARD
        if not path.exists():
            raise FileNotFoundError(f"no leaderboard at {path}; make it with: python -m helpers.metrics "
                                    f"leaderboard --out {path}")
        d = json.loads(path.read_text())

        def nan(v):
            if isinstance(v, dict):
                return {k: nan(u) for k, u in v.items()}
            if isinstance(v, list):
                return [nan(u) for u in v]
            return float("nan") if v is None else v

        return cls(nan(d["rows"]), nan(d["per_image"]), nan(d["curves"]), d["settings"], nan(d.get("cascade", {})),
                   d.get("skipped", {}))


def _clock(dev: torch.device) -> float:
    """Seconds for timing: the process's CPU time on the CPU (other programs sharing the machine do not
    count, only the work done), wall time after a synchronisation on a GPU."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        return time.perf_counter()
    return time.process_time()


def _median_time(fn, repeats: int, dev: torch.device) -> float:
    times = []
    for _ in range(repeats):
        t0 = _clock(dev)
        fn()
        times.append(_clock(dev) - t0)
    return float(np.median(times))


def weights_digest(name: str = "shapesnet") -> str:
    """The first 16 hex digits of the SHA-256 of a shipped ShapesNet's weights file (``""`` if absent).

    Explained in chapter 24, Can we trust the maps?
    """
    from . import shapes

    path = shapes.MODELS_DIR / f"{name}.pt"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else ""


def leaderboard(model: nn.Module, x: torch.Tensor, target, masks=None, attributions=None, n_faithfulness: int = 8,
                n_randomization: int = 2, steps: int = 16, shuffled: nn.Module | None = None,
                n_data: int | None = None, layers=None, randomize=None, seed: int = 0, keep_maps: bool = False,
                progress: bool = False, settings: dict | None = None) -> Leaderboard:
    """Every method measured on the same images: the book's leaderboard.

    ``x`` ``[N, 3, H, W]`` and ``target`` (one class per image); ``masks`` bool ``[N, H, W]`` of
    the target objects, or ``None`` (then there are no localisation columns). ``attributions``: a
    dict ``name -> fn(model, x, target)`` (default :func:`methods`). For each method:

    * its maps of all N images, timed: ``time`` = that time / the time of one forward pass of the
      same batch (median of 5), both as CPU time of this process on the CPU (so that other programs
      on a shared machine do not count) and as wall time on a GPU;
    * ``pointing`` (tolerance 0), ``pointing_15`` (the paper's 15 px) and ``energy`` against ``masks``,
      and per image the ``distance`` from the map's peak to the object (the hit at any tolerance);
    * ``deletion`` and ``insertion``: mean areas on the first ``n_faithfulness`` images with
      ``steps`` steps (the maps above are reused);
    * the cascading randomisation (:func:`randomization_test`) on the first ``n_randomization``
      images: ``sensitivity = 1 - mean Spearman`` over the steps of the cascade and the images
      (1 minus the area under the Spearman-vs-depth curve; 0: the maps never change, 1: they
      are unrelated at once, above 1: anti-correlated), ``spearman_all`` the mean Spearman once
      every layer is random (``layers``: the cascade's layers, top first; default every layer
      with weights, :func:`parameter_layers`; ``randomize``: the methods whose cascade is run,
      default all);
    * with ``shuffled`` (the model trained on shuffled labels), on the first ``n_data`` images
      (default ``n_randomization``): ``data_sensitivity = 1 - Spearman`` between the two
      models' maps, and ``shuffled_pointing``, the pointing game (15 px) of the shuffled model's maps.

    ``per_image`` keeps every per-image value (the cascade's as ``[steps, images]``), so that a
    smaller run on the same images can be checked against a larger one (:func:`agreement`). A
    method that does not support the model (CAM on VGG16, LRP on ResNet50: ``ValueError``) is
    skipped, with the reason in ``.skipped``. ``keep_maps``: ``.maps[name]`` holds the heatmaps,
    ``.maps[name + "/cascade"]`` the :class:`Randomization`, ``.maps[name + "/shuffled"]`` the
    shuffled model's maps.
    Explained in chapter 24, Can we trust the maps?
    """
    from tqdm.auto import tqdm

    x = _check_x(x, "leaderboard")
    n = x.shape[0]
    targets = models.check_target(model, target, n)
    table = attributions if attributions is not None else methods(seed=seed)
    nf, nr = min(n_faithfulness, n), min(n_randomization, n)
    nd = min(n_data if n_data is not None else n_randomization, n)
    if masks is not None:
        masks = _np(masks).astype(bool)
        if masks.shape != (n, *x.shape[2:]):
            raise ValueError(f"masks must be [N, H, W] = {(n, *x.shape[2:])}, got {masks.shape}")
    dev = models.device(model)
    xd = models.as_input(model, x)
    with hooks.frozen(model), torch.no_grad():
        models.scores(model(xd[:1]))  # warm-up
        t_forward = _median_time(lambda: model(xd), 5, dev)
    rows, per, curves, casc, skipped, kept = {}, {}, {}, {}, {}, {}
    bar = tqdm(list(table.items()), disable=not progress, desc="leaderboard", leave=False)
    for name, fn in bar:
        bar.set_postfix_str(name)
        try:
            t0 = _clock(dev)
            raw = fn(model, xd, targets)
            t_method = _clock(dev) - t0
        except ValueError as e:
            skipped[name] = str(e).split(";")[0][:200]
            continue
        heat = as_heatmap(raw)
        row, pi = {"time": t_method / t_forward}, {}
        if masks is not None:
            pg, pg15, en = (pointing_game(heat, masks, 0), pointing_game(heat, masks, 15),
                            energy_pointing_game(heat, masks))
            row.update(pointing=pg.accuracy, pointing_15=pg15.accuracy, energy=en.accuracy)
            pi.update(pointing=pg.hits.astype(float), pointing_15=pg15.hits.astype(float), energy=en.hits,
                      distance=pg.distances)
        if nf:
            d = deletion(model, xd[:nf], targets[:nf], heat[:nf], steps=steps, seed=seed)
            ins = insertion(model, xd[:nf], targets[:nf], heat[:nf], steps=steps, seed=seed)
            row.update(deletion=d.mean_auc, insertion=ins.mean_auc)
            pi.update(deletion=d.auc, insertion=ins.auc)
            curves[name] = {"fractions": d.fractions, "deletion": d.scores.mean(0), "insertion": ins.scores.mean(0)}
        if nr and (randomize is None or name in randomize):
            rt = randomization_test(model, fn, xd[:nr], targets[:nr], layers=layers, seed=seed, reference=raw[:nr])
            row.update(sensitivity=rt.sensitivity, spearman_all=float(rt.spearman[-1].mean()))
            pi.update(random_spearman=rt.spearman, random_spearman_signed=rt.spearman_signed, random_ssim=rt.ssim)
            casc[name] = {"layers": rt.layers, "spearman": rt.spearman.mean(1),
                          "spearman_signed": rt.spearman_signed.mean(1), "ssim": rt.ssim.mean(1)}
            if keep_maps:
                kept[f"{name}/cascade"] = rt
        if shuffled is not None and nd:
            s_raw = fn(shuffled, xd[:nd], targets[:nd])
            _, smap, r2, r2_signed, sim2 = _compare(raw[:nd], s_raw)
            row["data_sensitivity"] = float(1 - np.mean(r2))
            pi.update(data_spearman=r2, data_spearman_signed=r2_signed, data_ssim=sim2)
            if masks is not None:
                sp = pointing_game(smap, masks[:nd], 15)
                row["shuffled_pointing"] = sp.accuracy
                pi["shuffled_pointing"] = sp.hits.astype(float)
            if keep_maps:
                kept[f"{name}/shuffled"] = smap
        if keep_maps:
            kept[name] = heat
        rows[name] = row
        per[name] = {k: np.asarray(v, float) for k, v in pi.items()}
    info = models.info(model)
    meta = {"model": info.name, "world": info.world, "images": n, "targets": targets, "n_faithfulness": nf,
            "n_randomization": nr,
            "n_data": nd if shuffled is not None else 0, "steps": steps, "seed": seed,
            "forward_seconds": t_forward, "input": list(x.shape)}
    meta.update(settings or {})
    return Leaderboard(rows, per, curves, meta, casc, skipped, kept)


def shapes_leaderboard(n_scenes: int = 8, n_faithfulness: int = 4, n_randomization: int = 1, steps: int = 16,
                       n_data: int | None = None, shuffled=True, names=None, randomize=None,
                       keep_maps: bool = False, progress: bool = False, device=None, model: nn.Module | None = None,
                       **method_settings) -> Leaderboard:
    """The leaderboard in the shapes world: ShapesNet on the first ``n_scenes`` held-out single-object
    scenes of :func:`scene_seeds` with their ground-truth masks, and ShapesNet trained on shuffled
    labels for the data randomisation test.

    ``model``: the ShapesNet to measure (default: the shipped one, loaded on ``device``); pass the
    caller's own to check afterwards that no metric changed it. ``shuffled``: ``True`` loads the
    shipped ``shapesnet-shuffled``, a model is used as it is, ``False`` skips the data randomisation.
    ``settings["weights"]`` (and ``"weights_shuffled"``) is :func:`weights_digest` of the shipped
    file when the model's weights are the file's, and ``"not the shipped weights"`` otherwise, so
    that a comparison with the shipped leaderboard can tell.
    The other arguments go to :func:`leaderboard`; ``names`` and ``method_settings`` to
    :func:`methods`. The shipped leaderboard is this function with more scenes (``python -m
    helpers.metrics leaderboard``); the chapter runs it small and checks, scene by scene, that its
    numbers are the shipped ones (:func:`agreement`).
    Explained in chapter 24, Can we trust the maps?
    """
    from . import shapes

    if model is None:
        model = models.load("shapesnet", device=device)
    if shuffled is True:
        other = models.load("shapesnet-shuffled", device=device)
    elif shuffled is False or shuffled is None:
        other = None
    elif isinstance(shuffled, nn.Module):
        other = shuffled
    else:
        raise ValueError(f"shuffled must be True, False or a model, got {shuffled!r}")
    seeds = scene_seeds(n_scenes)
    scenes = shapes.scenes(seeds)
    x, y = shapes.batch(seeds)
    masks = np.stack([s.masks[0] for s in scenes])
    table = methods(names=names, **method_settings)
    defaults = {k: v.default for k, v in inspect.signature(methods).parameters.items() if k != "names"}
    settings = {"seeds": [seeds[0], seeds[-1]], "weights": _shipped_digest(model, "shapesnet"),
                "weights_shuffled": _shipped_digest(other, "shapesnet-shuffled") if other is not None else "",
                "methods": {**defaults, **method_settings}}
    if settings["methods"]["smoothgrad_noise"] is None:
        settings["methods"]["smoothgrad_noise"] = default_smoothgrad_noise(model)
    return leaderboard(model, x, y.tolist(), masks, table, n_faithfulness, n_randomization, steps, other, n_data,
                       randomize=randomize, keep_maps=keep_maps, progress=progress, settings=settings)


def _shipped_digest(model: nn.Module, name: str) -> str:
    """:func:`weights_digest` of the shipped ``name`` when ``model`` holds exactly its weights."""
    from . import shapes

    path = shapes.MODELS_DIR / f"{name}.pt"
    if not path.exists():
        return ""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    mine = model.state_dict()
    if saved.keys() != mine.keys():
        return "not the shipped weights"
    same = all(torch.equal(mine[k].detach().cpu(), torch.as_tensor(saved[k])) for k in mine)
    return weights_digest(name) if same else "not the shipped weights"


def agreement(live: Leaderboard, shipped: Leaderboard) -> dict:
    """Compare a small live leaderboard with the shipped one, image by image, on the images they share.

    Both run the same scenes in the same order (:func:`scene_seeds`), so the live per-image
    values must equal the first ones of the shipped leaderboard. Returns, per method and column
    of ``live``, the largest absolute difference, and for the pointing games the share of images
    whose hit differs (a map with two near-equal maxima can flip between machines), for
    ``distance`` the share of images whose peak moved by more than half a pixel.

    Nothing is skipped: ``ValueError`` when a live method or column is missing from ``shipped``,
    when a column is empty, or when the shapes cannot be compared (another number of dimensions or
    of cascade steps, or fewer shipped images than live ones). A column that ``live`` did not
    compute is not in the result: the caller checks that the columns it relies on are there.
    Explained in chapter 24, Can we trust the maps?
    """
    out = {}
    for m, cols in live.per_image.items():
        if m not in shipped.per_image:
            raise ValueError(f"{m!r} is in the live leaderboard but not in the shipped one")
        out[m] = {}
        for k, v in cols.items():
            w = shipped.per_image[m].get(k)
            if w is None:
                raise ValueError(f"{m}: column {k!r} is in the live leaderboard but not in the shipped one")
            v, w = np.asarray(v, float), np.asarray(w, float)
            if v.size == 0:
                raise ValueError(f"{m}: column {k!r} of the live leaderboard is empty")
            if w.ndim != v.ndim or w.shape[:-1] != v.shape[:-1] or w.shape[-1] < v.shape[-1]:
                raise ValueError(f"{m}: column {k!r} has shape {v.shape} live and {w.shape} shipped; the images "
                                 f"are the last axis, the shipped file must have at least as many")
            w = w[..., :v.shape[-1]]
            if k == "distance":   # inf (no peak) is stored as null in JSON, read back as nan
                v, w = np.where(np.isfinite(v), v, -1.0), np.where(np.isfinite(w), w, -1.0)
            # nan on both sides (a blank map's correlation) agrees; nan on one side only does not
            diff = np.where(np.isnan(v) & np.isnan(w), 0.0, np.abs(v - w))
            diff = np.where(np.isnan(diff), np.inf, diff)
            if "pointing" in k or k == "distance":
                out[m][k] = float(np.mean(diff > 0.5))
            else:
                out[m][k] = float(diff.max())
    return out


# --------------------------------------------------------------------------- command line
def _main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.metrics",
                                description="The leaderboard of chapter 24: every attribution method of the book "
                                            "on held-out shapes scenes (ShapesNet, and ShapesNet trained on "
                                            "shuffled labels).")
    sub = p.add_subparsers(dest="command", required=True)
    lb = sub.add_parser("leaderboard", help="compute the full leaderboard and write it as JSON")
    lb.add_argument("--out", type=Path, default=LEADERBOARD, help=f"output file ({LEADERBOARD})")
    lb.add_argument("--scenes", type=int, default=200, help="scenes for localisation and timing (200)")
    lb.add_argument("--faithfulness", type=int, default=48, help="scenes for deletion and insertion (48)")
    lb.add_argument("--randomization", type=int, default=16, help="scenes for the cascading randomisation (16)")
    lb.add_argument("--data", type=int, default=48, help="scenes for the data randomisation test (48)")
    lb.add_argument("--steps", type=int, default=16, help="deletion and insertion steps (16)")
    lb.add_argument("--methods", nargs="*", default=None,
                    help=f"some of: {' '.join(METHODS)} (default: all); with an existing --out file, only these "
                         f"rows are redone and merged into it")
    lb.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    lb.add_argument("--why", default="", help="with --methods on an existing file: why the rows were redone "
                                              "(kept in its settings)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    board = shapes_leaderboard(args.scenes, args.faithfulness, args.randomization, args.steps, n_data=args.data,
                               names=args.methods, progress=True)
    board.settings["seconds"] = round(time.perf_counter() - t0, 1)
    board.settings["command"] = " ".join(["python -m helpers.metrics leaderboard", f"--scenes {args.scenes}",
                                          f"--faithfulness {args.faithfulness}", f"--randomization {args.randomization}",
                                          f"--data {args.data}", f"--steps {args.steps}"]
                                         + (["--methods", *args.methods] if args.methods else []))
    board.settings["torch"] = torch.__version__
    if args.methods and Path(args.out).exists():   # redo some rows of an existing leaderboard, keep the others
        board = Leaderboard.from_json(args.out).merged(board, note=args.why)
        print(f"merged into {args.out}: {', '.join(args.methods)} redone, the other rows kept")
    board.to_json(args.out)
    print(board.table())
    print(f"written {args.out} in {board.settings['seconds']} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
