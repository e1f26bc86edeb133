"""The offline world: synthetic scenes of coloured shapes, and ShapesNet, the CNN that classifies them.

A *scene* is a 128 x 128 RGB image with one or a few flat-coloured shapes on a cluttered,
textured background, together with the exact mask of every shape. Colour, size, rotation and
position are random, so only the *shape* tells the class. Because the masks are known, a chapter
can measure whether a saliency map or a CAM points at the object.

ShapesNet is a small VGG-style network (convolutions, ReLUs and max-pools, global average pooling
and one linear layer), trained by this project on generated scenes. Its weights ship in
``data/models/shapesnet.pt``; ``python -m helpers.shapes train`` makes them again (deterministic,
under 10 minutes on 2 CPU cores). ``python -m helpers.shapes train --shuffle-labels`` trains the same
network on randomly permuted labels, for the data-randomisation sanity check of Adebayo et al.

Explained in chapter 00, Models and images.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from . import models

__all__ = [
    "CLASSES", "SIZE", "MEAN", "STD", "DATA", "MODELS_DIR", "TRAIN_SEED_START", "HELD_OUT_SEEDS",
    "Scene", "scene", "scenes", "batch", "ShapesNet", "train", "load_model", "metadata",
    "evaluate",
]

DATA = Path(__file__).resolve().parent.parent / "data"
MODELS_DIR = DATA / "models"

#: The class names; a class index is a position in this list.
CLASSES = ["circle", "square", "triangle", "star", "cross", "heart", "arrow", "crescent", "ring"]
#: Side of a scene in pixels.
SIZE = 128
#: Per-channel mean and standard deviation of scene pixels in [0, 1] (measured on 5000
#: single-object scenes, seeds 0..4999, and written here once).
MEAN = (0.5031, 0.5028, 0.4939)
STD = (0.2590, 0.2584, 0.2586)

#: Channels of ShapesNet's four blocks.
WIDTHS = (8, 16, 32, 96)
# fraction of training scenes with one, two and three objects; several objects per scene teach
# the network to find every object of the scene, which class-discriminative maps rely on
OBJECT_MIX = (0.6, 0.25, 0.15)
#: Training scenes use seeds from here upward; seeds below it are never trained on (held out).
TRAIN_SEED_START = 1_000_000
#: Held-out scenes: every seed in ``range(HELD_OUT_SEEDS)`` is free for evaluation.
HELD_OUT_SEEDS = TRAIN_SEED_START

_GAP = 3            # pixels kept free between two objects
_MARGIN = 2         # pixels kept free between an object and the border
_MIN_CONTRAST = 90  # least RGB distance between an object's colour and the background under it
# uniform noise in [-9, 9], a fixed bank that scenes cut their noise from (drawing fresh noise
# for every pixel would be the slowest step of making a scene)
_MAX_SIZE = 512
_NOISE = ((np.random.default_rng(12345).random((_MAX_SIZE, _MAX_SIZE, 3), dtype=np.float32) - 0.5)
          * np.float32(18))


# ----------------------------------------------------------------------------------------------
# Shapes, as polygons in unit coordinates (the shape fits in the circle of radius 1)
# ----------------------------------------------------------------------------------------------

def _circle(n=64, r=1.0, cx=0.0, cy=0.0):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _regular(n, r=1.0, phase=-np.pi / 2):
    t = phase + np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _star(points=5, outer=1.0, inner=0.42):
    t = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _cross(w=0.32):
    return np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1],
                     [-w, w], [-1, w], [-1, -w], [-w, -w]], float)


def _heart(n=64):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y + 2.5], 1) / 16.5
    return pts


def _arrow():
    return np.array([[-1, -0.22], [0.15, -0.22], [0.15, -0.62], [1, 0], [0.15, 0.62],
                     [0.15, 0.22], [-1, 0.22]], float)


# Each class: a list of (polygon, add) pairs; polygons with add=False are cut out.
_SHAPES = {
    "circle": [(_circle(), True)],
    "square": [(np.array([[-0.75, -0.75], [0.75, -0.75], [0.75, 0.75], [-0.75, 0.75]]), True)],
    "triangle": [(_regular(3, 1.0), True)],
    "star": [(_star(), True)],
    "cross": [(_cross(), True)],
    "heart": [(_heart(), True)],
    "arrow": [(_arrow(), True)],
    "crescent": [(_circle(), True), (_circle(r=0.8, cx=0.42), False)],
    "ring": [(_circle(), True), (_circle(r=0.55), False)],
}
assert list(_SHAPES) == CLASSES


@dataclass
class Scene:
    """A synthetic scene: the image, the class of each object and the exact mask of each object.

    ``image`` is ``uint8 [H, W, 3]``; ``labels`` holds one class index per object (all different);
    ``masks`` is ``bool [n_objects, H, W]``, the pixels of each object (objects never overlap);
    ``seed`` makes the scene again with :func:`scene`.

    Explained in chapter 00, Models and images.
    """

    image: np.ndarray
    labels: list
    masks: np.ndarray
    seed: int
    colors: list = field(default_factory=list, repr=False)

    @property
    def names(self) -> list:
        """The class names of the objects, in the order of ``labels``."""
        return [CLASSES[i] for i in self.labels]

    def __repr__(self) -> str:
        return (f"Scene(seed={self.seed}, labels={self.labels} {self.names}, "
                f"image={tuple(self.image.shape)})")


def _shape_mask(cls: int, center, radius: float, angle: float, size: int) -> np.ndarray:
    """The mask (uint8 0/1, [size, size]) of one shape; 1/16-pixel precision, no anti-aliasing."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    mask = np.zeros((size, size), np.uint8)
    for poly, add in _SHAPES[CLASSES[cls]]:
        pts = poly @ rot.T * radius + np.asarray(center)
        pts = np.round(pts * 16).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1 if add else 0, lineType=cv2.LINE_8, shift=4)
    return mask


def _background(rng: np.random.Generator, size: int, clutter: float = 1.0) -> np.ndarray:
    """A cluttered float32 background: a colour gradient, blotches, thin lines, squiggles, dots.

    ``clutter`` in [0, 1] scales the blotches and the number of lines, squiggles and dots.
    """
    # a colour gradient plus low-frequency blotches, made at 1/4 resolution and enlarged
    # (bilinear enlargement keeps a linear gradient exact, and it is fast)
    small = max(8, size // 4)
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-0.5, 0.5, small)
    t = np.cos(theta) * ramp[None, :] + np.sin(theta) * ramp[:, None] + 0.5
    k = int(rng.integers(3, 7))
    blotch = rng.normal(0, 28, (k, k, 3)).astype(np.float32)
    low = (c1 + t[..., None] * (c2 - c1)).astype(np.float32)
    low += cv2.resize(blotch, (small, small), interpolation=cv2.INTER_CUBIC) * np.float32(clutter)
    bg = cv2.resize(low, (size, size), interpolation=cv2.INTER_LINEAR)
    # thin straight lines, then squiggles (short random walks), then small thin dots; all
    # random numbers are drawn at once (one call per kind), which keeps a scene fast
    n_lines, n_squiggles, n_dots = (int(v) for v in rng.integers((2, 1, 3), (7, 5, 15)))
    if clutter < 1:
        n_lines, n_squiggles, n_dots = (int(round(n * clutter))
                                        for n in (n_lines, n_squiggles, n_dots))
    colors = rng.uniform(0, 255, (n_lines + n_squiggles + n_dots, 3)).tolist()
    ends = rng.integers(-size // 4, size + size // 4, (n_lines, 4)).tolist()
    widths = rng.integers(1, 3, n_lines).tolist()
    for (x0, y0, x1, y1), w, color in zip(ends, widths, colors):
        cv2.line(bg, (x0, y0), (x1, y1), color, w, cv2.LINE_8)
    starts = rng.uniform(0, size, (n_squiggles, 1, 2))
    walks = np.round(starts + np.cumsum(rng.normal(0, size / 12, (n_squiggles, 6, 2)), 1))
    for walk, color in zip(walks.astype(np.int32), colors[n_lines:]):
        cv2.polylines(bg, [walk], False, color, 1, cv2.LINE_8)
    dots = rng.integers(0, size, (n_dots, 2)).tolist()
    axes = rng.integers((1, 0), (4, 2), (n_dots, 2)).tolist()
    angles = rng.uniform(0, 180, n_dots).tolist()
    for c, ax, ang, color in zip(dots, axes, angles, colors[n_lines + n_squiggles:]):
        cv2.ellipse(bg, tuple(c), tuple(ax), ang, 0, 360, color, -1, cv2.LINE_8)
    return bg


def _pick_color(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour that stands out from ``under`` (the mean background colour below it)."""
    best, best_d = None, -1.0
    for _ in range(30):
        color = rng.uniform(0, 255, 3)
        d = float(np.linalg.norm(color - under))
        if d >= _MIN_CONTRAST:
            return color
        if d > best_d:
            best, best_d = color, d
    # fall back to the most distant corner of the colour cube
    return np.where(under < 128, 235.0, 20.0) if best_d < _MIN_CONTRAST / 2 else best


def scene(seed: int, n_objects: int = 1, size: int = SIZE, clutter: float = 1.0) -> Scene:
    """Make the scene of a seed: ``n_objects`` shapes of different classes on a cluttered background.

    The same ``(seed, n_objects, size)`` always gives the same scene. Single objects span about
    25-50 % of the side; several objects are smaller and kept apart by a small gap, so each mask
    holds exactly the visible pixels of its object. Colour, rotation and position are random.
    ``clutter`` (0 to 1, default 1) scales the background's clutter and the pixel noise; 0 gives
    a plain colour gradient.

    Explained in chapter 00, Models and images.
    """
    n_objects = int(n_objects)
    if not 1 <= n_objects <= len(CLASSES):
        raise ValueError(f"n_objects must be between 1 and {len(CLASSES)} (one per class), "
                         f"got {n_objects}")
    if not 32 <= size <= _MAX_SIZE:
        raise ValueError(f"size must be between 32 and {_MAX_SIZE} pixels, got {size}")
    rng = np.random.default_rng(int(seed))
    labels = [int(c) for c in rng.choice(len(CLASSES), n_objects, replace=False)]
    clutter = float(np.clip(clutter, 0.0, 1.0))
    bg = _background(rng, size, clutter)

    if n_objects == 1:
        r_lo, r_hi = 0.125 * size, 0.25 * size
    else:  # smaller objects when several share the scene
        scale = min(1.0, 2.2 / np.sqrt(n_objects + 1))
        r_lo, r_hi = 0.075 * size * scale + 4, 0.15 * size * scale + 6
    occupied = np.zeros((size, size), np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * _GAP + 1, 2 * _GAP + 1))
    masks = []
    for cls in labels:
        radius = rng.uniform(r_lo, r_hi)
        for attempt in range(400):
            if attempt and attempt % 50 == 0:
                radius *= 0.85  # crowded: try smaller
            angle = rng.uniform(0, 2 * np.pi)
            lo, hi = radius + _MARGIN, size - radius - _MARGIN
            center = rng.uniform(lo, hi, 2) if hi > lo else np.full(2, size / 2)
            m = _shape_mask(cls, center, radius, angle, size)
            if not occupied.any() or not (m & occupied).any():
                break
        else:  # pragma: no cover - only for absurdly crowded scenes
            raise RuntimeError(f"could not place {n_objects} objects in a {size}px scene")
        occupied |= cv2.dilate(m, kernel)
        masks.append(m.astype(bool))

    image = bg
    colors = []
    for m in masks:
        m8 = m.view(np.uint8)
        under = np.array(cv2.mean(image, m8)[:3])
        color = _pick_color(rng, under)
        # a gentle shading across the object, so that it is not perfectly flat
        shade = rng.uniform(-18, 18, 3).astype(np.float32)
        x, y, w, h = cv2.boundingRect(m8)
        ramp = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :, None]
        paint = (color.astype(np.float32) + ramp * shade) * np.ones((h, 1, 1), np.float32)
        np.copyto(image[y:y + h, x:x + w], paint, where=m[y:y + h, x:x + w, None])
        colors.append(tuple(int(v) for v in np.clip(color, 0, 255)))
    # pixel noise of a random strength, cut at a random place from a fixed bank of noise
    amp = rng.uniform(0.3, 1.0) * clutter
    oy, ox = (int(v) for v in rng.integers(0, _NOISE.shape[0] - size + 1, 2))
    image = cv2.scaleAdd(_NOISE[oy:oy + size, ox:ox + size], amp, image)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return Scene(image=image, labels=labels, masks=np.stack(masks), seed=int(seed), colors=colors)


def scenes(seeds, n_objects: int = 1, size: int = SIZE) -> list:
    """The scenes of several seeds (a list of :class:`Scene`).

    Explained in chapter 00, Models and images.
    """
    if isinstance(seeds, (int, str)) or not hasattr(seeds, "__iter__"):
        raise TypeError(f"seeds must be several ints, e.g. range(8) or [0, 5], got {seeds!r}")
    return [scene(int(s), n_objects, size) for s in seeds]


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def batch(seeds, n_objects: int = 1, size: int = SIZE):
    """Normalised images and labels of the scenes of ``seeds``, ready for ShapesNet.

    Returns ``(x, y)``: ``x`` float ``[N, 3, H, W]`` normalised with :data:`MEAN` and :data:`STD`;
    ``y`` long ``[N]`` for single objects, ``[N, n_objects]`` when there are several.

    Explained in chapter 00, Models and images.
    """
    ss = scenes(seeds, n_objects, size)
    if not ss:
        raise ValueError("batch needs at least one seed")
    x = _to_tensor(np.stack([s.image for s in ss]))
    y = torch.tensor([s.labels for s in ss], dtype=torch.long)
    return x, (y[:, 0] if n_objects == 1 else y)


# ----------------------------------------------------------------------------------------------
# ShapesNet
# ----------------------------------------------------------------------------------------------

class ShapesNet(nn.Module):
    """A small VGG-style CNN for the shapes world.

    ``features`` holds only ``Conv2d``, ``ReLU`` and ``MaxPool2d`` modules (no batch norm, no
    dropout), so CAM, guided backpropagation and LRP apply in their textbook form. A 128 x 128
    scene gives a 16 x 16 map at the last convolution; global average pooling (``avgpool``) and
    one linear layer (``classifier``) make the class scores, exactly the structure CAM needs.

    Explained in chapter 00, Models and images.
    """

    def __init__(self, num_classes: int = len(CLASSES), widths=None):
        super().__init__()
        widths = tuple(widths or WIDTHS)
        c1, c2, c3, c4 = widths
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(),             # 128
            nn.MaxPool2d(2),                                       # -> 64
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),                                       # -> 32
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c3, c3, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),                                       # -> 16
            nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c4, c4, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c4, c4, 3, padding=1), nn.ReLU(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c4, num_classes)
        for m in self.modules():  # He initialisation, as for VGG in torchvision
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _paths(name: str, models_dir=None):
    d = Path(models_dir) if models_dir is not None else MODELS_DIR
    return d / f"{name}.pt", d / f"{name}.json"


def _make_command(name: str) -> str:
    if name == "shapesnet":
        return "python -m helpers.shapes train"
    if name == "shapesnet-shuffled":
        return "python -m helpers.shapes train --shuffle-labels"
    return f"python -m helpers.shapes train --name {name}"


def metadata(name: str = "shapesnet", models_dir=None) -> dict:
    """The training record of a shipped model (classes, normalisation, accuracy, ...) as a dict.

    Explained in chapter 00, Models and images.
    """
    _, path = _paths(name, models_dir)
    if not path.exists():
        raise FileNotFoundError(f"no metadata for model {name!r} at {path}; "
                                f"make it with: {_make_command(name)}")
    return json.loads(path.read_text())


def load_model(name: str = "shapesnet", device=None, models_dir=None) -> ShapesNet:
    """ShapesNet with its trained weights, in eval mode, on ``device`` (default CPU).

    ``name`` is ``"shapesnet"`` or ``"shapesnet-shuffled"`` (trained on permuted labels).
    Weights are read with ``torch.load(..., weights_only=True)``.

    Explained in chapter 00, Models and images.
    """
    path, _ = _paths(name, models_dir)
    if not path.exists():
        raise FileNotFoundError(f"weights of {name!r} not found at {path}; "
                                f"make them with: {_make_command(name)}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["classifier.weight"].shape[0] != len(CLASSES):
        raise ValueError(f"the weights at {path} have {state['classifier.weight'].shape[0]} "
                         f"classes but CLASSES has {len(CLASSES)}; make them again with: "
                         f"{_make_command(name)}")
    convs = [v.shape[0] for k, v in state.items() if k.startswith("features.") and v.ndim == 4]
    model = ShapesNet(num_classes=len(CLASSES),
                      widths=(convs[0], convs[1], convs[2], convs[-1]))
    model.load_state_dict(state)
    model.eval()
    if device is not None:
        model.to(device)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, seeds, n_objects: int = 1, batch_size: int = 200) -> float:
    """Accuracy of ``model`` on the scenes of ``seeds``.

    With one object per scene, the usual top-1 accuracy; with several, the fraction of objects
    whose class is among the model's ``n_objects`` highest scores. The model runs in eval mode
    and every module's own train/eval mode is left as it was.

    Explained in chapter 00, Models and images.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("evaluate needs at least one seed")
    from . import hooks

    correct = 0
    with hooks.evaluated(model):
        for i in range(0, len(seeds), batch_size):
            x, y = batch(seeds[i:i + batch_size], n_objects)
            logits = model(models.as_input(model, x)).float().cpu()
            if n_objects == 1:
                correct += int((logits.argmax(1) == y).sum())
            else:
                top = logits.topk(n_objects, 1).indices
                correct += int((top[:, :, None] == y[:, None, :]).any(1).sum())
    return correct / (len(seeds) * n_objects)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

class _TrainingNet(nn.Module):
    """ShapesNet with a batch norm after every convolution, used only while training.

    Batch norm makes training from scratch fast and reliable; :meth:`folded` then merges each
    batch norm into the convolution before it, which gives a plain :class:`ShapesNet` that
    computes exactly the same function in eval mode (and has no batch norm in ``features``).
    """

    def __init__(self, widths=None):
        super().__init__()
        self.net = ShapesNet(widths=widths)
        self.norms = nn.ModuleDict({
            str(i): nn.BatchNorm2d(m.out_channels)
            for i, m in enumerate(self.net.features) if isinstance(m, nn.Conv2d)})

    def forward(self, x):
        for i, layer in enumerate(self.net.features):
            x = layer(x)
            if str(i) in self.norms:
                x = self.norms[str(i)](x)
        return self.net.classifier(torch.flatten(self.net.avgpool(x), 1))

    @torch.no_grad()
    def folded(self) -> ShapesNet:
        """A plain ShapesNet equal to this network in eval mode: y = W'x + b'."""
        out = copy.deepcopy(self.net).to(memory_format=torch.contiguous_format)
        for key, bn in self.norms.items():
            conv = out.features[int(key)]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
        return out.eval()


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Class-preserving augmentation of uint8 images ``[N, H, W, 3]``: a quarter turn, a mirror,
    a colour permutation.

    Every shape class is unchanged by rotations by 90 degrees, mirroring and swapping colour
    channels, so a pool of scenes serves as many more.
    """
    x = torch.rot90(x, int(torch.randint(0, 4, (1,), generator=g)), (1, 2))  # [N, H, W, 3]
    if bool(torch.rand(1, generator=g) < 0.5):
        x = x.flip(2)
    return x[..., torch.randperm(3, generator=g)]


def train(out_dir=None, seed: int = 0, steps: int = None, shuffle_labels: bool = False,
          name: str = None, batch_size: int = 32, lr: float = 3e-3, held_out: int = 1000,
          threads: int = None, progress: bool = True, widths=None, pool: int = None) -> dict:
    """Train ShapesNet and write ``<out_dir>/<name>.pt`` (state dict) and ``<name>.json``.

    The normal run draws a pool of ``pool`` training scenes (seeds from :data:`TRAIN_SEED_START`
    upward) with one, two or three objects in the proportions :data:`OBJECT_MIX`; a scene with
    k objects has the soft target 1/k on each of its classes, so the network learns to find every
    object of a scene (which class-discriminative maps such as Grad-CAM rely on). It then takes ``steps`` steps of AdamW with a one-cycle
    schedule on random batches of the pool, each batch turned by a random quarter turn, mirrored
    or not, and its colour channels permuted (all class-preserving). A batch norm follows every
    convolution while training and is folded into the convolution at the end, so the shipped
    network is a plain ShapesNet. It reports the accuracy on ``held_out`` single-object scenes of
    seeds ``0..held_out-1`` (never trained on).
    With ``shuffle_labels`` the same network learns a fixed set of scenes whose labels were
    randomly permuted (the data randomisation test of Adebayo et al.): it can only memorise.
    Deterministic on the CPU for a given seed and thread count. Returns the metadata written
    to the json.

    Explained in chapter 00, Models and images.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir) if out_dir is not None else MODELS_DIR
    name = name or ("shapesnet-shuffled" if shuffle_labels else "shapesnet")
    if steps is None:
        steps = 1500 if shuffle_labels else 2500
    if pool is None:
        pool = 512 if shuffle_labels else 10_000
    if not threads:
        threads = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    old_threads = torch.get_num_threads()
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        start, start_cpu = time.perf_counter(), time.process_time()
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        g = torch.Generator().manual_seed(seed)
        offset = TRAIN_SEED_START + (50_000_000 if shuffle_labels else 0) + seed * 100_000_000
        # the pool stays uint8 (10 000 scenes: 0.5 GB) and is normalised batch by batch
        num_classes = len(CLASSES)
        if shuffle_labels:  # single objects whose labels are permuted once: only memorisation fits
            n_objs = np.ones(pool, int)
        else:  # mostly one object, some scenes with two or three (see the docstring)
            n_objs = rng.choice([1, 2, 3], size=pool, p=list(OBJECT_MIX))
        pool_scenes = [scene(int(s), int(n)) for s, n in zip(range(offset, offset + pool), n_objs)]
        images = torch.from_numpy(np.stack([sc.image for sc in pool_scenes]))
        ys = torch.zeros(pool, num_classes)  # soft targets: 1/k on each of the k classes present
        for i, sc in enumerate(pool_scenes):
            ys[i, sc.labels] = 1.0 / len(sc.labels)
        del pool_scenes
        if shuffle_labels:
            ys = ys[torch.from_numpy(rng.permutation(pool))]
        # channels-last memory is faster for these convolutions on the CPU
        model = _TrainingNet(widths=widths).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
        loss_fn = nn.CrossEntropyLoss()  # accepts the soft targets
        bar = tqdm(range(steps), desc=f"training {name}", disable=not progress)
        model.train()
        for step in bar:
            idx = torch.randint(0, pool, (batch_size,), generator=g)
            x, target = images[idx], ys[idx]
            if not shuffle_labels:
                x = _augment(x, g)
            x = _to_tensor(x.numpy()).contiguous(memory_format=torch.channels_last)
            loss = loss_fn(model(x), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.1e}")
        bar.close()
        train_seconds = time.perf_counter() - start
        train_cpu_seconds = time.process_time() - start_cpu
        model.eval()
        model = model.folded()
        acc = evaluate(model, range(held_out))
        meta = {
            "name": name,
            "classes": list(CLASSES),
            "mean": list(MEAN),
            "std": list(STD),
            "size": SIZE,
            "architecture": "ShapesNet",
            "widths": list(widths or WIDTHS),
            "held_out_accuracy": acc,
            "held_out_scenes": held_out,
            "held_out_seeds": [0, held_out - 1],
            "shuffle_labels": bool(shuffle_labels),
            "seed": seed,
            "steps": steps,
            "batch_size": batch_size,
            "pool": pool,
            "object_mix": [1.0, 0.0, 0.0] if shuffle_labels else list(OBJECT_MIX),
            "lr": lr,
            "torch": torch.__version__,
            "threads": threads,
            "train_seconds": round(train_seconds, 1),
            "train_cpu_seconds": round(train_cpu_seconds, 1),
        }
        if shuffle_labels:
            with torch.no_grad():
                pred = torch.cat([model(_to_tensor(images[i:i + 256].numpy())).argmax(1)
                                  for i in range(0, pool, 256)])
            meta["train_accuracy"] = float((pred == ys.argmax(1)).float().mean())
            meta["train_scenes"] = pool
            meta["chance_accuracy"] = 1 / num_classes
        out_dir.mkdir(parents=True, exist_ok=True)
        pt, js = _paths(name, out_dir)
        torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, pt)
        js.write_text(json.dumps(meta, indent=2) + "\n")
        return meta
    finally:
        torch.use_deterministic_algorithms(old_deterministic)
        torch.set_num_threads(old_threads)


def _main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m helpers.shapes",
                                     description="The shapes world: train ShapesNet.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train ShapesNet and write its weights and metadata")
    p.add_argument("--shuffle-labels", action="store_true",
                   help="train on randomly permuted labels (Adebayo et al.'s sanity check)")
    p.add_argument("--out", type=Path, default=MODELS_DIR, help=f"output folder ({MODELS_DIR})")
    p.add_argument("--name", default=None, help="file name (shapesnet / shapesnet-shuffled)")
    p.add_argument("--steps", type=int, default=None, help="training steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--pool", type=int, default=None,
                   help="training scenes in the pool (10000; 512 with --shuffle-labels)")
    p.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    meta = train(out_dir=args.out, seed=args.seed, steps=args.steps,
                 shuffle_labels=args.shuffle_labels, name=args.name, batch_size=args.batch_size,
                 lr=args.lr, threads=args.threads, pool=args.pool)
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    _main()
