"""Segmentation: object masks from saliency with GrabCut, and the deconvolution network.

Two ideas live here:

* **Weakly supervised segmentation** (Simonyan, Vedaldi & Zisserman 2014, section 3.2
  "Weakly Supervised Object Localisation"): a classifier's class saliency map picks foreground
  and background *seeds* (its most and least salient pixels); GrabCut (Rother et al. 2004) fits
  colour models to the seeds and cuts the image into object and background. Explained in
  chapter 22, Weakly supervised segmentation.
* **DeconvNet** (Noh, Hong & Han 2015): a VGG-style encoder that keeps its max-pooling
  *switches*, and a mirrored decoder of unpooling and deconvolution (transposed convolution)
  layers, trained on per-pixel labels. Here it is scaled to the shapes world and trained by
  ``python -m helpers.segmentation train`` (deterministic, CPU). Explained in chapter 23,
  DeconvNet segmentation.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import warnings
from pathlib import Path

if __name__ == "__main__" and "torch" not in __import__("sys").modules:
    # `python -m helpers.segmentation train`: OpenMP threads that wait for work sleep instead of
    # spinning. On a machine shared with other jobs a spinning thread burns its time slice
    # waiting for a descheduled partner, which made every small operation ~10 x slower here;
    # the results are the same either way. (It must be set before torch starts OpenMP.)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import models, shapes

__all__ = [
    "grabcut_seeds", "grabcut_from_saliency", "largest_component", "iou", "DeconvNet", "deconvnet_like", "init_encoder", "segment", "label_map",
    "label_batch", "colorize", "PALETTE", "confusion", "class_iou", "evaluate", "train", "load_model", "metadata",
    "CLASSES", "NAME", "TRAIN_COMMAND",
]

#: Classes of the segmentation network: 0 is the background, 1 + k is shape class k.
CLASSES = ["background"] + list(shapes.CLASSES)
#: File name (without suffix) of the shipped weights in ``data/models``.
NAME = "shapes-deconvnet"
#: The command that makes the shipped weights.
TRAIN_COMMAND = "python -m helpers.segmentation train"


# ----------------------------------------------------------------------------------------------
# Weakly supervised segmentation: saliency seeds + GrabCut (chapter 22)
# ----------------------------------------------------------------------------------------------

def _as_map(saliency, shape=None) -> np.ndarray:
    """A 2-D float map from a numpy array or tensor ``[H, W]`` (or ``[1, H, W]``)."""
    if isinstance(saliency, torch.Tensor):
        saliency = saliency.detach().float().cpu().numpy()
    m = np.asarray(saliency, dtype=np.float64)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"saliency must be one map [H, W], got shape {tuple(m.shape)}")
    if shape is not None and m.shape != tuple(shape):
        raise ValueError(f"saliency has shape {tuple(m.shape)} but the image is {tuple(shape)}; "
                         "give a map at the image's resolution")
    if not np.isfinite(m).all():
        raise ValueError("saliency contains NaN or infinite values")
    return m


def _as_image(image) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        raise ValueError("image must be an RGB uint8 array [H, W, 3] (a picture, not a normalised "
                         "tensor: use images.to_image(x, model=model) first)")
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"image must be an RGB uint8 array [H, W, 3], got dtype {a.dtype} and "
                         f"shape {tuple(a.shape)}")
    return np.ascontiguousarray(a)


def _check_quantiles(foreground: float, background: float) -> None:
    if not (0.0 < background < foreground < 1.0):
        raise ValueError(f"need 0 < background < foreground < 1 (quantiles of the saliency), got "
                         f"foreground={foreground}, background={background}")


def grabcut_seeds(saliency, foreground: float = 0.95, background: float = 0.30) -> np.ndarray:
    """GrabCut's mask of seeds from a saliency map: ``uint8 [H, W]`` of OpenCV's four labels.

    Pixels whose saliency is at least the ``foreground`` quantile are sure foreground
    (``cv2.GC_FGD`` = 1); pixels at most the ``background`` quantile are sure background
    (``cv2.GC_BGD`` = 0); the rest are "probably background" (``cv2.GC_PR_BGD`` = 2), left for
    GrabCut to decide. When many pixels share a value (a map that is zero on most of the image)
    the two quantiles can coincide: a pixel at both thresholds is background, so foreground
    seeds are always more salient than background seeds.
    Explained in chapter 22, Weakly supervised segmentation.
    """
    _check_quantiles(foreground, background)
    m = _as_map(saliency)
    hi, lo = np.quantile(m, foreground), np.quantile(m, background)
    seeds = np.full(m.shape, cv2.GC_PR_BGD, np.uint8)
    seeds[m >= hi] = cv2.GC_FGD
    seeds[m <= lo] = cv2.GC_BGD
    return seeds


def largest_component(mask) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (an empty mask stays empty).

    Explained in chapter 22, Weakly supervised segmentation.
    """
    m = np.asarray(mask, bool)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m.view(np.uint8), connectivity=8)
    if n <= 1:
        return m.copy()
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def grabcut_from_saliency(image, saliency, foreground: float = 0.95, background: float = 0.30,
                          iterations: int = 5, largest: bool = True, hard: bool = False) -> np.ndarray:
    """Segment the object that a saliency map points at: ``bool [H, W]`` (True = object).

    ``image`` is the RGB ``uint8 [H, W, 3]`` picture, ``saliency`` a map ``[H, W]`` at the same
    resolution (higher = more salient). ``foreground`` and ``background`` are *quantiles* of the
    saliency: pixels at or above the ``foreground`` quantile are foreground seeds, pixels at or
    below the ``background`` quantile background seeds (:func:`grabcut_seeds`). Following the
    paper (Simonyan et al. 2014):

    1. a Gaussian mixture colour model (5 components, OpenCV's) is fitted to the foreground
       seeds only, another to the background seeds only (the paper's one stated use of the
       seeds);
    2. one graph cut with these two models. The paper does not say whether the cut may relabel
       the seeds; Boykov & Jolly's cut, which it uses, pins its seeds as hard constraints. By
       default the seeds here are *soft*: the cut labels every pixel, the seeds included, so a
       salient background pixel among the foreground seeds is not forced into the object. The
       book's choice, because a saliency map's top 5 % lie largely off the object, and pinned
       they stay in the mask: chapter 22 measures both on held-out scenes, where hard seeds
       about halve the mean IoU. ``hard=True`` pins every seed at its label, as Boykov & Jolly do;
    3. ``iterations - 1`` further GrabCut iterations (Rother et al.) re-fit both models to the
       current segmentation and cut again;
    4. with ``largest`` (the paper's last step), only the largest connected component is kept.

    Deterministic (OpenCV's random generator, used by the k-means that starts the mixtures, is
    seeded). Explained in chapter 22, Weakly supervised segmentation.
    """
    img = _as_image(image)
    m = _as_map(saliency, img.shape[:2])
    if int(iterations) < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    seeds = grabcut_seeds(m, foreground, background)
    fg, bg = seeds == cv2.GC_FGD, seeds == cv2.GC_BGD
    if fg.sum() < 5 or bg.sum() < 5:
        raise ValueError("too few seeds (a constant saliency map, or quantiles too close to 0 or 1): "
                         "GrabCut needs at least 5 foreground and 5 background seed pixels")
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    cv2.setRNGSeed(0)  # the k-means that starts the colour mixtures
    # 1. colour models from the seeds alone: GrabCut fits its mixtures to every pixel of the
    #    mask it is given, so give it a strip made of the seed pixels only (no cut is made)
    strip = np.concatenate([bgr[fg], bgr[bg]])[None]
    strip_mask = np.concatenate([np.full(fg.sum(), cv2.GC_FGD, np.uint8),
                                 np.full(bg.sum(), cv2.GC_BGD, np.uint8)])[None]
    bgd_model, fgd_model = np.zeros((1, 65)), np.zeros((1, 65))
    _, bgd_model, fgd_model = cv2.grabCut(strip, strip_mask, None, bgd_model, fgd_model, 0,
                                          cv2.GC_INIT_WITH_MASK)
    # 2. one graph cut with the models frozen
    mask = seeds.copy() if hard else np.where(fg, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    mask, bgd_model, fgd_model = cv2.grabCut(bgr, mask, None, bgd_model, fgd_model, 1,
                                             cv2.GC_EVAL_FREEZE_MODEL)
    # 3. GrabCut's iterations: re-fit the models to the segmentation, cut again
    if iterations > 1:
        mask, bgd_model, fgd_model = cv2.grabCut(bgr, mask, None, bgd_model, fgd_model,
                                                 int(iterations) - 1, cv2.GC_EVAL)
    out = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    # 4. the object is the largest connected component of the foreground
    return largest_component(out) if largest else out


def iou(a, b) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty).

    Explained in chapter 22, Weakly supervised segmentation.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks have different shapes {a.shape} and {b.shape}")
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# ----------------------------------------------------------------------------------------------
# DeconvNet (chapter 23)
# ----------------------------------------------------------------------------------------------

def _conv(cin: int, cout: int) -> list:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def _deconv(cin: int, cout: int) -> list:
    return [nn.ConvTranspose2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DeconvNet(nn.Module):
    """The deconvolution network of Noh, Hong & Han (2015), scaled to the shapes world.

    * ``encoder``: blocks of ``convs[i]`` 3 x 3 convolutions with ``widths[i]`` channels, each
      followed by batch norm and ReLU (VGG style); after every block a 2 x 2 max pooling
      (``pool``, ``return_indices=True``) keeps the *switches*: where each maximum came from.
      Four blocks turn a 128 x 128 scene into an 8 x 8 code.
    * ``fc6``, ``fc7``: the bottleneck (the paper's fully connected layers, as convolutions:
      ``fc6`` a ``fc_kernel`` x ``fc_kernel`` one, ``fc7`` a 1 x 1 one), and ``deconv_fc6``
      that maps it back to the decoder's width; batch norm and ReLU after each.
    * ``decoder``: the mirror image of the encoder. Block ``i`` undoes encoder block
      ``-1 - i``: ``unpool`` (``MaxUnpool2d``) puts every value back where that block's switch
      says (zeros elsewhere), then as many 3 x 3 deconvolutions (``ConvTranspose2d``) + batch
      norm + ReLU as the encoder block had convolutions densify the sparse map.
      ``decoder_widths[j]`` is the decoder's width at the level of encoder block ``j``; it may
      be a multiple ``k`` of the encoder's width there, and then every switch serves ``k``
      decoder channels (a narrow encoder, a wide decoder).
    * ``score``: a 1 x 1 convolution to one score per class and pixel (background + 9 shapes).

    ``forward(x)`` returns the scores ``[N, num_classes, H, W]`` at the input's resolution
    (H and W multiples of 16 with four blocks). Explained in chapter 23, DeconvNet segmentation.
    """

    def __init__(self, num_classes: int = len(CLASSES), widths=(32, 32, 64, 96),
                 convs=(1, 1, 2, 3), fc: int = 256, fc_kernel: int = 3, decoder_widths=None):
        super().__init__()
        widths, convs = tuple(int(w) for w in widths), tuple(int(n) for n in convs)
        decoder_widths = tuple(int(w) for w in (widths if decoder_widths is None else decoder_widths))
        if not len(widths) == len(convs) == len(decoder_widths):
            raise ValueError("widths, convs and decoder_widths need one entry per block")
        if any(d % w for d, w in zip(decoder_widths, widths)):
            raise ValueError(f"every decoder width must be a multiple of the encoder's width at its "
                             f"level (its channels share the switches): {decoder_widths} vs {widths}")
        self.widths, self.convs, self.decoder_widths = widths, convs, decoder_widths
        self.encoder = nn.ModuleList()
        cin = 3
        for w, n in zip(widths, convs):
            layers = []
            for _ in range(n):
                layers += _conv(cin, w)
                cin = w
            self.encoder.append(nn.Sequential(*layers))
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        pad = fc_kernel // 2
        self.fc6 = nn.Sequential(nn.Conv2d(cin, fc, fc_kernel, padding=pad, bias=False),
                                 nn.BatchNorm2d(fc), nn.ReLU())
        self.fc7 = nn.Sequential(nn.Conv2d(fc, fc, 1, bias=False), nn.BatchNorm2d(fc), nn.ReLU())
        self.deconv_fc6 = nn.Sequential(
            nn.ConvTranspose2d(fc, decoder_widths[-1], fc_kernel, padding=pad, bias=False),
            nn.BatchNorm2d(decoder_widths[-1]), nn.ReLU())
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.decoder = nn.ModuleList()
        for j in reversed(range(len(widths))):  # mirror: the last encoder block first
            w = decoder_widths[j]
            out = decoder_widths[j - 1] if j > 0 else w  # the width the next unpooling needs
            self.decoder.append(nn.Sequential(*[layer for k in range(convs[j])
                                                for layer in _deconv(w, w if k < convs[j] - 1 else out)]))
        self.score = nn.Conv2d(decoder_widths[0], num_classes, 1)

    def encode(self, x: torch.Tensor):
        """Run the encoder: the code and, per block, (switches, size before pooling)."""
        k = 2 ** len(self.encoder)
        if x.shape[-2] % k or x.shape[-1] % k:
            raise ValueError(f"DeconvNet needs a height and width divisible by {k}, got "
                             f"{x.shape[-2]} x {x.shape[-1]}")
        switches = []
        for block in self.encoder:
            x = block(x)
            size = x.shape[-2:]
            x, idx = self.pool(x)
            switches.append((idx, size))
        return x, switches

    def unpool_at(self, x: torch.Tensor, idx: torch.Tensor, size) -> torch.Tensor:
        """Unpool ``x`` with the switches ``idx``; ``k`` times wider ``x``: each switch k times."""
        if x.shape[1] != idx.shape[1]:
            idx = idx.repeat_interleave(x.shape[1] // idx.shape[1], dim=1)
        return self.unpool(x, idx, output_size=size)

    def decode(self, x: torch.Tensor, switches, keep: bool = False):
        """Run the decoder from the bottleneck; with ``keep`` also return, per block, the
        unpooled map and the block's output."""
        outputs = []
        for block, (idx, size) in zip(self.decoder, reversed(switches)):
            u = self.unpool_at(x, idx, size)
            x = block(u)
            outputs.append((u, x))
        return (x, outputs) if keep else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code, switches = self.encode(x)
        code = self.deconv_fc6(self.fc7(self.fc6(code)))
        return self.score(self.decode(code, switches))


def _classifier_blocks(classifier: nn.Module) -> list:
    """The conv layers of a VGG-style classifier's ``features``, grouped by the max-pools between them."""
    blocks, current = [], []
    for m in classifier.features:
        if isinstance(m, nn.Conv2d):
            current.append(m)
        elif isinstance(m, nn.MaxPool2d):
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    if not all(blocks):
        raise ValueError("every block of the classifier needs at least one convolution")
    return blocks


def deconvnet_like(classifier: nn.Module, widths=None, **kwargs) -> DeconvNet:
    """A DeconvNet whose encoder has the blocks of a VGG-style classifier (ShapesNet).

    The encoder has the classifier's blocks and number of convolutions per block; its widths
    are the classifier's, or ``widths`` (at least the classifier's in every block: the extra
    channels start random in :func:`init_encoder`). Explained in chapter 23, DeconvNet
    segmentation.
    """
    blocks = _classifier_blocks(classifier)
    theirs = tuple(b[-1].out_channels for b in blocks)
    widths = theirs if widths is None else tuple(int(w) for w in widths)
    if len(widths) != len(theirs) or any(w < t for w, t in zip(widths, theirs)):
        raise ValueError(f"widths {widths} must have one entry per block of the classifier, each at "
                         f"least the classifier's {theirs}")
    return DeconvNet(widths=widths, convs=tuple(len(b) for b in blocks), **kwargs)


@torch.no_grad()
def init_encoder(net: DeconvNet, classifier: nn.Module, x: torch.Tensor) -> None:
    """Start the encoder from a trained classifier, as the paper starts from VGG16.

    Every encoder convolution gets the weights of the classifier's convolution at the same
    place, in its first channels; where the encoder is wider, its extra output channels keep
    their random weights and the classifier's channels ignore the extra inputs (weight 0), so
    the classifier's channels compute exactly what the classifier computes. The batch norm
    after each convolution (which the classifier does not have) is set on the batch ``x``: for
    the classifier's channels so that convolution + batch norm equal the classifier's
    convolution with its bias (``gamma`` = the standard deviation and ``beta`` = the mean plus
    the bias), for the extra channels to a plain normalisation (mean 0, variance 1).
    Explained in chapter 23, DeconvNet segmentation.
    """
    blocks = _classifier_blocks(classifier)
    ours = [[m for m in block if isinstance(m, nn.Conv2d)] for block in net.encoder]
    if [len(b) for b in blocks] != [len(b) for b in ours]:
        raise ValueError(f"the classifier's blocks {[len(b) for b in blocks]} do not match the "
                         f"encoder's {[len(b) for b in ours]}")
    for theirs, mine in zip(blocks, ours):
        for src, dst in zip(theirs, mine):
            o, i = src.weight.shape[:2]
            if dst.weight.shape[0] < o or dst.weight.shape[1] < i or src.weight.shape[2:] != dst.weight.shape[2:]:
                raise ValueError(f"weights {tuple(src.weight.shape)} do not fit {tuple(dst.weight.shape)}")
    was_training = net.training
    net.eval()
    h = x.to(models.device(net))
    try:
        for index, (theirs, mine, block) in enumerate(zip(blocks, ours, net.encoder)):
            convs = iter(theirs)
            for src, dst in zip(theirs, mine):
                o, i = src.weight.shape[:2]
                dst.weight[:o, :i] = src.weight.to(dst.weight.device)   # the classifier may live elsewhere
                dst.weight[:o, i:] = 0
            for m in block:  # run the block layer by layer, setting each batch norm on the way
                if isinstance(m, nn.BatchNorm2d):
                    _set_norm(m, h, next(convs))
                h = m(h)
            h = net.pool(h)[0]
    finally:
        net.train(was_training)


def _set_norm(bn: nn.BatchNorm2d, z: torch.Tensor, src: nn.Conv2d) -> None:
    """Set ``bn`` from the statistics of its input ``z`` (see :func:`init_encoder`)."""
    o = src.weight.shape[0]
    mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)
    bias = src.bias.to(mean.device) if src.bias is not None else torch.zeros_like(mean[:o])
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)
    bn.weight.fill_(1.0)
    bn.bias.zero_()
    bn.weight[:o] = torch.sqrt(var[:o] + bn.eps)
    bn.bias[:o] = mean[:o] + bias


def segment(model: nn.Module, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Class of every pixel: ``long [N, H, W]`` on the CPU (0 = background, 1 + k = shape k).

    ``x`` is a normalised batch ``[N, 3, H, W]`` (``shapes.batch`` or ``images.to_tensor``).
    The model runs in eval mode under ``torch.no_grad()`` in batches of ``batch_size`` and is
    left as it was. Explained in chapter 23, DeconvNet segmentation.
    """
    from . import hooks

    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be a normalised batch [N, 3, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    batch_size = models.positive_int(batch_size, "batch_size")
    with hooks.frozen(model), torch.no_grad():
        out = [model(models.as_input(model, x[i:i + batch_size])).argmax(1).cpu()
               for i in range(0, len(x), batch_size)]
    return torch.cat(out)


#: One colour per class for label pictures (background dark grey, then ten distinct colours).
PALETTE = np.array([[40, 40, 40], [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40],
                    [148, 103, 189], [140, 86, 75], [227, 119, 194], [188, 189, 34],
                    [23, 190, 207], [240, 240, 240]], np.uint8)


def colorize(labels) -> np.ndarray:
    """A label map ``[H, W]`` (or ``[N, H, W]``) -> RGB ``uint8`` picture with :data:`PALETTE`.

    Explained in chapter 23, DeconvNet segmentation.
    """
    lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if lab.min() < 0 or lab.max() >= len(PALETTE):
        raise ValueError(f"labels must lie in 0..{len(PALETTE) - 1}, got {lab.min()}..{lab.max()}")
    return PALETTE[lab.astype(np.int64)]


def label_map(scene: shapes.Scene) -> np.ndarray:
    """The per-pixel labels of a scene: ``int64 [H, W]``, 0 background, 1 + class on each object.

    Explained in chapter 23, DeconvNet segmentation.
    """
    labels = np.zeros(scene.image.shape[:2], np.int64)
    for cls, mask in zip(scene.labels, scene.masks):
        labels[mask] = 1 + int(cls)
    return labels


def label_batch(seeds, n_objects) -> tuple:
    """Normalised images ``[N, 3, H, W]`` and label maps ``long [N, H, W]`` of shapes scenes.

    ``n_objects`` is one number or one per seed. Explained in chapter 23, DeconvNet segmentation.
    """
    seeds = [int(s) for s in seeds]
    ns = [int(n_objects)] * len(seeds) if np.isscalar(n_objects) else [int(n) for n in n_objects]
    if len(ns) != len(seeds):
        raise ValueError(f"got {len(ns)} object counts for {len(seeds)} seeds")
    ss = [shapes.scene(s, n) for s, n in zip(seeds, ns)]
    x = shapes._to_tensor(np.stack([s.image for s in ss]))
    y = torch.from_numpy(np.stack([label_map(s) for s in ss]))
    return x, y


def confusion(pred, target, num_classes: int = len(CLASSES)) -> torch.Tensor:
    """Pixel confusion matrix ``[num_classes, num_classes]`` (rows: truth, columns: prediction)."""
    pred, target = torch.as_tensor(pred).reshape(-1), torch.as_tensor(target).reshape(-1)
    if pred.shape != target.shape:
        raise ValueError("prediction and target must have the same number of pixels")
    return torch.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def class_iou(conf: torch.Tensor) -> torch.Tensor:
    """Per-class IoU from a confusion matrix: ``TP / (TP + FP + FN)``, accumulated over all pixels
    (NaN for a class that appears neither in the truth nor in the prediction).

    Explained in chapter 23, DeconvNet segmentation.
    """
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def evaluate(model: nn.Module, seeds=range(300), n_objects=(1, 2, 3), batch_size: int = 50,
             progress: bool = False) -> dict:
    """Held-out IoU of a segmentation model on shapes scenes.

    Every seed is evaluated once with each number of objects in ``n_objects`` (held-out seeds
    are below 1 000 000). Returns ``{"mean_iou", "per_class" (name -> IoU), "pixel_accuracy",
    "scenes"}``; the IoU of a class counts its pixels over all scenes together (as in PASCAL
    VOC). Explained in chapter 23, DeconvNet segmentation.
    """
    from tqdm.auto import tqdm

    seeds = [int(s) for s in seeds]
    if any(s >= shapes.HELD_OUT_SEEDS for s in seeds):
        raise ValueError(f"held-out seeds are below {shapes.HELD_OUT_SEEDS}")
    jobs = [(s, n) for n in n_objects for s in seeds]
    conf = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.long)
    for i in tqdm(range(0, len(jobs), batch_size), desc="evaluating", disable=not progress):
        part = jobs[i:i + batch_size]
        x, y = label_batch([s for s, _ in part], [n for _, n in part])
        conf += confusion(segment(model, x, batch_size), y)
    ious = class_iou(conf)
    return {
        "mean_iou": float(np.nanmean(ious.numpy())),
        "per_class": {c: float(v) for c, v in zip(CLASSES, ious)},
        "pixel_accuracy": float(conf.diag().sum() / conf.sum()),
        "scenes": len(jobs),
    }


# ----------------------------------------------------------------------------------------------
# Training, saving, loading
# ----------------------------------------------------------------------------------------------

def _paths(models_dir=None):
    d = Path(models_dir) if models_dir is not None else shapes.MODELS_DIR
    return d / f"{NAME}.pt", d / f"{NAME}.json"


def metadata(models_dir=None) -> dict:
    """The training record of the shipped DeconvNet (classes, held-out IoU, seeds, time, ...).

    Explained in chapter 23, DeconvNet segmentation.
    """
    _, path = _paths(models_dir)
    if not path.exists():
        raise FileNotFoundError(f"no metadata for {NAME!r} at {path}; make it with: {TRAIN_COMMAND}")
    return json.loads(path.read_text())


def load_model(device=None, models_dir=None) -> DeconvNet:
    """The trained DeconvNet of the shapes world, in eval mode, on ``device`` (default CPU).

    Weights are read with ``torch.load(..., weights_only=True)``; the architecture comes from
    the json written next to them. Usually reached through ``models.load("shapes-deconvnet")``.
    Explained in chapter 23, DeconvNet segmentation.
    """
    pt, js = _paths(models_dir)
    if not pt.exists():
        raise FileNotFoundError(f"weights of {NAME!r} not found at {pt}; make them with: "
                                f"{TRAIN_COMMAND}")
    arch = json.loads(js.read_text()).get("architecture", {}) if js.exists() else {}
    state = torch.load(pt, map_location="cpu", weights_only=True)
    model = DeconvNet(**{k: v for k, v in arch.items() if k in _ARCH_KEYS})
    model.load_state_dict(state)
    model.eval()
    if device is not None:
        model.to(device)
    return model


_ARCH_KEYS = ("widths", "convs", "fc", "fc_kernel", "decoder_widths")


def _architecture(model: DeconvNet) -> dict:
    return {"widths": list(model.widths), "convs": list(model.convs),
            "fc": model.fc7[0].out_channels, "fc_kernel": model.fc6[0].kernel_size[0],
            "decoder_widths": list(model.decoder_widths)}


#: The shipped network's architecture beyond ShapesNet's encoder: a decoder twice as wide as the
#: encoder in its two top blocks (16 channels at 128 x 128 and 64 x 64 instead of ShapesNet's 8 and
#: 16; each switch serves two decoder channels). With ShapesNet's own widths there the held-out
#: mean IoU stayed at 0.82; the thin parts of the shapes need the width at full resolution.
DEFAULT_ARCH = {"decoder_widths": (16, 16, 32, 96)}


def train(out_dir=None, seed: int = 0, steps: int = 2600, batch_size: int = 16, lr: float = 5e-3,
          background_weight: float = 0.5, pretrained: bool = True, freeze_encoder: bool = False,
          held_out: int = 300, threads: int = 2, progress: bool = True, arch: dict | None = None,
          bf16: bool = True, log=None) -> dict:
    """Train the DeconvNet on shapes scenes and write ``shapes-deconvnet.pt`` and ``.json``.

    * **Encoder**: with ``pretrained`` (the paper starts from VGG16) it starts from the shipped
      ShapesNet (:func:`init_encoder`: ShapesNet's filters in the first channels of every
      block, the extra channels random) and is fine-tuned with the rest, as in the paper. With
      ``freeze_encoder`` it stays fixed, batch norm included: the decoder learns to draw from
      ShapesNet's own features and switches, no gradient is computed for the encoder and a
      step is about a quarter cheaper, but the held-out mean IoU stays lower (0.87 after 2600
      steps, against 0.91 fine-tuned, measured on 300 held-out seeds with 1, 2 and 3 objects:
      900 scenes).
    * **Architecture**: ``arch`` (keyword arguments of :class:`DeconvNet`, default
      :data:`DEFAULT_ARCH`); the encoder's blocks are ShapesNet's, with ``pretrained`` and
      without it (random weights) unless ``arch`` gives the encoder's ``widths`` or ``convs``.
    * **Data**: every step draws ``batch_size`` fresh scenes (seeds from 1 000 000 upward,
      never the held-out ones) with 1, 2 or 3 objects each, and their label maps.
    * **Loss**: the pixel-wise cross-entropy, the background's weight ``background_weight``
      (most pixels are background), the shapes' weight 1.
    * **Optimiser**: AdamW (weight decay 1e-4) with a one-cycle learning-rate schedule up to
      ``lr``; channels-last tensors (faster convolutions on the CPU). With ``bf16`` the forward
      pass runs under ``torch.autocast`` in bfloat16 (the weights, the optimiser and the loss
      stay float32): on CPUs with bfloat16 instructions (AVX-512 BF16, AMX) a step costs about
      half; elsewhere it is merely no faster. Pass ``bf16=False`` for plain float32.

    Deterministic on the CPU for a given seed and number of ``threads`` (two, the default, made
    the shipped weights in under 10 minutes). At the end the held-out IoU is measured on seeds
    ``0..held_out-1``, each with 1, 2 and 3 objects (:func:`evaluate`). Returns the metadata
    written to the json (with the wall-clock and CPU seconds of the training).
    Explained in chapter 23, DeconvNet segmentation.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir) if out_dir is not None else shapes.MODELS_DIR
    arch = dict(DEFAULT_ARCH if arch is None else arch)
    threads = int(threads or 1)
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_rng = torch.get_rng_state()             # the caller's global random state, given back at the end
    torch.set_num_threads(threads)
    # max_unpool2d's backward is flagged as possibly non-deterministic because indices could
    # collide; 2 x 2 pooling with stride 2 gives distinct indices within a channel, and channels
    # that share switches are unpooled into separate channels, so it is deterministic here
    # (tests/test_segmentation.py trains twice and compares the weights)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        start, start_cpu = time.perf_counter(), time.process_time()
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        source = None
        if pretrained:
            classifier = shapes.load_model("shapesnet")
            model = deconvnet_like(classifier, **arch)
            calib = range(shapes.TRAIN_SEED_START + 99_000_000, shapes.TRAIN_SEED_START + 99_000_064)
            init_encoder(model, classifier, label_batch(calib, 1)[0])
            sn_path = shapes.MODELS_DIR / "shapesnet.pt"
            source = {"model": "shapesnet", "sha256": hashlib.sha256(sn_path.read_bytes()).hexdigest(),
                      "calibration_seeds": [calib[0], calib[-1]], "frozen": bool(freeze_encoder)}
        elif "widths" in arch or "convs" in arch:
            model = DeconvNet(**arch)
        else:                                   # the pretrained run's shape, from random weights
            model = deconvnet_like(shapes.ShapesNet(), **arch)
        frozen = pretrained and freeze_encoder
        model = model.to(memory_format=torch.channels_last)
        for p in model.encoder.parameters():
            p.requires_grad_(not frozen)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
        weight = torch.ones(len(CLASSES))
        weight[0] = background_weight
        first_seed = next_seed = shapes.TRAIN_SEED_START + seed * 100_000_000
        model.train()
        if frozen:
            model.encoder.eval()  # batch norm keeps the statistics init_encoder set
        bar = tqdm(range(steps), desc=f"training {NAME}", disable=not progress)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*max_unpool.*", category=UserWarning)
            for step in bar:
                n_objects = rng.integers(1, 4, batch_size)
                x, y = label_batch(range(next_seed, next_seed + batch_size), n_objects)
                next_seed += batch_size
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    scores = model(x)
                loss = F.cross_entropy(scores.float(), y, weight=weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                if log is not None:
                    log(step, loss.item(), model)
        bar.close()
        train_seconds, train_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        model = model.eval().to(memory_format=torch.contiguous_format)
        for p in model.parameters():
            p.requires_grad_(True)
        result = evaluate(model, range(held_out), progress=progress)
        meta = {
            "name": NAME,
            "classes": list(CLASSES),
            "architecture": _architecture(model),
            "parameters": sum(p.numel() for p in model.parameters()),
            "mean": list(shapes.MEAN),
            "std": list(shapes.STD),
            "size": shapes.SIZE,
            "held_out_mean_iou": result["mean_iou"],
            "held_out_per_class_iou": result["per_class"],
            "held_out_pixel_accuracy": result["pixel_accuracy"],
            "held_out_seeds": [0, held_out - 1],
            "held_out_objects": [1, 2, 3],
            "held_out_scenes": result["scenes"],
            "train_seeds": [first_seed, next_seed - 1],
            "train_objects": [1, 2, 3],
            "seed": seed,
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "background_weight": background_weight,
            "bf16": bool(bf16),
            "encoder_init": source,
            "torch": torch.__version__,
            "threads": threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average_at_start": None if load is None else round(load, 2),
            "train_seconds": round(train_seconds, 1),
            "train_cpu_seconds": round(train_cpu, 1),
            "total_seconds": round(time.perf_counter() - start, 1),
            "total_cpu_seconds": round(time.process_time() - start_cpu, 1),
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        pt, js = _paths(out_dir)
        torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, pt)
        js.write_text(json.dumps(meta, indent=2) + "\n")
        return meta
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)
        torch.set_rng_state(old_rng)


def _main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m helpers.segmentation",
                                     description="Train the DeconvNet of the shapes world.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the DeconvNet and write its weights and metadata")
    p.add_argument("--out", type=Path, default=shapes.MODELS_DIR,
                   help=f"output folder ({shapes.MODELS_DIR})")
    p.add_argument("--steps", type=int, default=2600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--threads", type=int, default=2,
                   help="CPU threads (2: the shipped weights; another number gives other weights)")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="keep ShapesNet's encoder fixed (cheaper steps, lower IoU)")
    p.add_argument("--fp32", action="store_true", help="no bfloat16 autocast")
    args = parser.parse_args(argv)
    meta = train(out_dir=args.out, seed=args.seed, steps=args.steps, batch_size=args.batch_size,
                 lr=args.lr, threads=args.threads, freeze_encoder=args.freeze_encoder,
                 bf16=not args.fp32)
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    _main()
