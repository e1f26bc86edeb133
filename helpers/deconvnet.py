"""DeconvNet: the explicit reconstruction of one activation, its top activations, and occlusion.

Explained in chapter 05, DeconvNet (Zeiler & Fergus 2014).

Zeiler and Fergus attach a "deconvolutional network" to a trained CNN: to see what one activation
of a layer responds to, they keep that activation, set every other activation of the layer to
zero, and send the signal back down to the pixels, layer by layer:

* a max-pool is undone by **max-unpooling** with the *switches* (the positions of the maxima
  recorded in the forward pass): the signal goes back to the pixel that won the max;
* a ReLU is undone by a **ReLU on the signal** going down;
* a convolution is undone by the **transposed convolution** with the same filters (no bias).

:func:`reconstruct` does exactly that, for networks whose ``features`` is an ``nn.Sequential`` of
``Conv2d``, ``ReLU`` and ``MaxPool2d`` (VGG16/19, AlexNet, ShapesNet). The result equals the
backward pass of the same one-activation map through the network with the "deconvnet" ReLU rule
(``hooks.relu_rule(model, "deconvnet")``): the max-pool backward *is* unpooling with the switches
and the conv backward *is* the transposed convolution. :func:`top_activations` finds the strongest
activations of a filter over a set of images, with their receptive-field patches and
reconstructions; :func:`occlusion` is the paper's occlusion-sensitivity experiment.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import hooks, models
from . import images as _images

__all__ = ["Record", "TopActivation", "block_layers", "forward_with_switches", "step_down", "unpool",
           "keep_one", "reconstruct", "receptive_field", "top_activations", "occlusion"]

_KINDS = (nn.Conv2d, nn.ReLU, nn.MaxPool2d)


# --------------------------------------------------------------------------- the network's layers
def _features(model: nn.Module) -> nn.Sequential:
    feats = getattr(model, "features", None)
    name = models.info(model).name
    if not isinstance(feats, nn.Sequential):
        raise ValueError(
            f"the explicit DeconvNet reconstruction needs a network whose 'features' is an nn.Sequential of "
            f"Conv2d, ReLU and MaxPool2d (VGG16, VGG19, AlexNet, ShapesNet); {name} "
            f"({type(model).__name__}) has none. For other networks use the deconvnet ReLU rule: "
            f"hooks.relu_rule(model, 'deconvnet') and a gradient")
    bad = [f"features.{i} ({type(m).__name__})" for i, m in enumerate(feats) if not isinstance(m, _KINDS)]
    if bad:
        raise ValueError(f"the explicit DeconvNet reconstruction handles Conv2d, ReLU and MaxPool2d only; "
                         f"{name} has {', '.join(bad)}")
    for i, m in enumerate(feats):
        if isinstance(m, nn.Conv2d) and (isinstance(m.padding, str) or m.padding_mode != "zeros"):
            raise ValueError(f"features.{i}: only zero padding given as numbers is supported, "
                             f"got padding={m.padding!r}, padding_mode={m.padding_mode!r}")
    return feats


def _index(model: nn.Module, layer) -> tuple[nn.Sequential, int]:
    """The features Sequential and the index of ``layer`` (a name or a module) in it."""
    feats = _features(model)
    module = models.layer(model, layer)
    for i, m in enumerate(feats):
        if m is module:
            return feats, i
    prefix = models.layer_name(model, feats)
    raise ValueError(f"layer {models.layer_name(model, module)!r} is not in {prefix}; the DeconvNet "
                     f"reconstruction starts from one of {prefix}.0 .. {prefix}.{len(feats) - 1}")


def block_layers(model: nn.Module) -> list:
    """Names of the ReLUs that close each block of ``features`` (the last conv of a block, rectified).

    A block ends at a max-pool (and the last block at the end of ``features``). VGG16:
    ``features.3, .8, .15, .22, .29``; ShapesNet: ``features.1, .4, .9, .16``; AlexNet:
    ``features.1, .4, .11``. Explained in chapter 05, DeconvNet.
    """
    feats = _features(model)
    prefix = models.layer_name(model, feats)
    out, last = [], None
    for i, m in enumerate(feats):
        if isinstance(m, nn.ReLU):
            last = i
        elif isinstance(m, nn.MaxPool2d) and last is not None:
            out.append(f"{prefix}.{last}")
            last = None
    if last is not None:
        out.append(f"{prefix}.{last}")
    return out


# --------------------------------------------------------------------------- forward with switches
@dataclass
class Record:
    """What the forward pass remembers of one layer: its input size and, for a max-pool, the switches."""

    input_size: tuple
    switches: torch.Tensor | None = None


def forward_with_switches(model: nn.Module, x: torch.Tensor, layer):
    """Run ``features`` up to ``layer``; return its output and one :class:`Record` per layer run.

    Max-pools are run with ``return_indices=True``: the indices are the *switches* of the paper,
    the position of the maximum of every pooling window. Explained in chapter 05, DeconvNet.
    """
    feats, stop = _index(model, layer)
    h, records = models.check_batch(model, x), []
    for i in range(stop + 1):
        m = feats[i]
        size = tuple(h.shape[-2:])
        if isinstance(m, nn.MaxPool2d):
            h, switches = F.max_pool2d(h, m.kernel_size, m.stride, m.padding, m.dilation,
                                       ceil_mode=m.ceil_mode, return_indices=True)
            records.append(Record(size, switches))
        elif isinstance(m, nn.ReLU):
            h = F.relu(h)  # never in place: the recorded tensors stay what they were
            records.append(Record(size))
        else:
            h = m(h)
            records.append(Record(size))
    return h, records


# --------------------------------------------------------------------------- one step down
def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def unpool(signal: torch.Tensor, switches: torch.Tensor, pool: nn.MaxPool2d, output_size) -> torch.Tensor:
    """Max-unpooling: every value goes back to the position that won the max in the forward pass.

    With non-overlapping windows (stride >= kernel: VGG, ShapesNet) this is ``F.max_unpool2d``.
    With overlapping windows (AlexNet's 3x3 windows, stride 2) one pixel can win two windows;
    its two contributions are *added* (``F.max_unpool2d`` would keep only one), which is what the
    max-pool's backward pass does. Explained in chapter 05, DeconvNet.
    """
    k, s = _pair(pool.kernel_size), _pair(pool.stride if pool.stride is not None else pool.kernel_size)
    h, w = output_size
    if s[0] >= k[0] and s[1] >= k[1] and _pair(pool.dilation) == (1, 1):
        return F.max_unpool2d(signal, switches, k, s, _pair(pool.padding), output_size=(h, w))
    n, c = signal.shape[:2]
    out = signal.new_zeros(n, c, h * w)
    out.scatter_add_(2, switches.flatten(2), signal.flatten(2))
    return out.view(n, c, h, w)


def _conv_transpose(conv: nn.Conv2d, signal: torch.Tensor, output_size) -> torch.Tensor:
    """The transposed convolution with the conv's own filters (no bias), back to ``output_size``."""
    k, s, p, d = _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.padding), _pair(conv.dilation)
    extra = tuple(output_size[i] - ((signal.shape[2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1)
                  for i in range(2))
    return F.conv_transpose2d(signal, conv.weight, None, s, p, extra, conv.groups, d)


def step_down(module: nn.Module, signal: torch.Tensor, record: Record) -> torch.Tensor:
    """One layer of the deconvnet: the signal above ``module`` -> the signal below it.

    ReLU -> ReLU of the signal; Conv2d -> transposed convolution with the same weights, no bias;
    MaxPool2d -> unpooling with the switches of the forward pass. Explained in chapter 05, DeconvNet.
    """
    if isinstance(module, nn.ReLU):
        return F.relu(signal)
    if isinstance(module, nn.Conv2d):
        return _conv_transpose(module, signal, record.input_size)
    if isinstance(module, nn.MaxPool2d):
        return unpool(signal, record.switches, module, record.input_size)
    raise ValueError(f"step_down handles Conv2d, ReLU and MaxPool2d, not {type(module).__name__}")


# --------------------------------------------------------------------------- reconstruction
def _positions(maps: torch.Tensor, position) -> list:
    """One (row, col) per image: the argmax of each map, or the given position(s), checked."""
    n, h, w = maps.shape
    if position is None:
        flat = maps.flatten(1).argmax(1).tolist()
        return [(int(f) // w, int(f) % w) for f in flat]
    if isinstance(position, torch.Tensor):
        position = position.tolist()
    pos = list(position)
    if len(pos) == 2 and all(isinstance(v, (int, np.integer)) for v in pos):
        pos = [tuple(pos)] * n
    if len(pos) != n:
        raise ValueError(f"got {len(pos)} positions for {n} images; give one (row, col) or one per image")
    out = []
    for p in pos:
        r, c = (int(v) for v in p)
        if not (0 <= r < h and 0 <= c < w):
            raise ValueError(f"position {(r, c)} is outside the layer's {h} x {w} map "
                             f"(rows 0..{h - 1}, columns 0..{w - 1})")
        out.append((r, c))
    return out


def _check_channel(act: torch.Tensor, channel, name: str) -> int:
    c = act.shape[1]
    if isinstance(channel, torch.Tensor) and channel.numel() == 1 and not channel.is_floating_point():
        channel = int(channel)                 # a 0-d index tensor (features.top_channels gives those)
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
        raise TypeError(f"channel must be an int, got {channel!r}")
    if not 0 <= int(channel) < c:
        raise ValueError(f"channel {channel} is out of range: layer {name!r} has channels 0..{c - 1}")
    return int(channel)


def keep_one(act: torch.Tensor, channel: int, positions) -> torch.Tensor:
    """A copy of ``act`` where only ``act[n, channel, row, col]`` is kept (one per image), all else 0."""
    seed = torch.zeros_like(act)
    for n, (r, c) in enumerate(positions):
        seed[n, channel, r, c] = act[n, channel, r, c]
    return seed


def _reconstruct(model, x, layer, channel, position):
    feats, stop = _index(model, layer)
    act, records = forward_with_switches(model, x, layer)         # which checks x (check_batch)
    channel = _check_channel(act, channel, models.layer_name(model, feats[stop]))
    positions = _positions(act[:, channel], position)
    signal = keep_one(act, channel, positions)
    values = torch.stack([act[n, channel, r, c] for n, (r, c) in enumerate(positions)])
    for i in range(stop, -1, -1):
        signal = step_down(feats[i], signal, records[i])
    return signal, positions, values


def reconstruct(model: nn.Module, x: torch.Tensor, layer, channel: int, position=None) -> torch.Tensor:
    """Pixel-space reconstruction of one activation of ``layer`` (Zeiler & Fergus 2014).

    For every image of the normalised batch ``x`` ``[N, 3, H, W]``, the activation
    ``layer[channel, row, col]`` is kept (its value), all other activations of the layer are set
    to zero, and the signal goes down through the layers below with :func:`step_down`: ReLU on
    the signal, transposed convolution with the same filters and no bias, max-unpooling with the
    forward pass's switches. ``position`` is ``None`` (the maximum of that channel in each image),
    one ``(row, col)`` for all images, or one per image. Returns ``[N, 3, H, W]`` on the CPU
    (signed, raw). It equals ``value * d(activation)/dx`` computed with the "deconvnet" ReLU rule.

    ``layer`` must be in ``model.features`` (an ``nn.Sequential`` of Conv2d, ReLU, MaxPool2d);
    other networks raise ``ValueError``. Explained in chapter 05, DeconvNet.
    """
    with hooks.frozen(model), torch.no_grad():       # x is checked in forward_with_switches
        signal, _, _ = _reconstruct(model, x, layer, channel, position)
    return signal.cpu()


def receptive_field(model: nn.Module, layer, position, input_size=None, clip: bool = True) -> tuple:
    """The input pixels that can influence ``layer`` at ``position`` = (row, col).

    Returns ``(top, left, bottom, right)`` (bottom/right exclusive), clipped to the input of
    ``input_size`` (default: the model's); with ``clip=False`` the whole field, which can reach
    past the border into the padding. The reconstruction of that activation is zero outside this
    box. Explained in chapter 05, DeconvNet.
    """
    feats, stop = _index(model, layer)
    size = input_size or models.info(model).input_size
    h, w = _pair(size)
    (r0, r1), (c0, c1) = (position[0], position[0]), (position[1], position[1])
    for i in range(stop, -1, -1):
        m = feats[i]
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k, s = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size)
            p, d = _pair(m.padding), _pair(m.dilation)
            r0, r1 = r0 * s[0] - p[0], r1 * s[0] - p[0] + d[0] * (k[0] - 1)
            c0, c1 = c0 * s[1] - p[1], c1 * s[1] - p[1] + d[1] * (k[1] - 1)
    if not clip:
        return r0, c0, r1 + 1, c1 + 1
    return max(r0, 0), max(c0, 0), min(r1 + 1, h), min(c1 + 1, w)


def _crop(a, box, fill):
    """``a[..., top:bottom, left:right]`` of a ``[..., H, W]`` array/tensor, padded with ``fill`` past the border."""
    t, l, b, r = box
    h, w = a.shape[-2:]
    out = (torch.full((*a.shape[:-2], b - t, r - l), fill, dtype=a.dtype) if isinstance(a, torch.Tensor)
           else np.full((*a.shape[:-2], b - t, r - l), fill, dtype=a.dtype))
    tt, ll, bb, rr = max(t, 0), max(l, 0), min(b, h), min(r, w)
    if bb > tt and rr > ll:
        out[..., tt - t:bb - t, ll - l:rr - l] = a[..., tt:bb, ll:rr]
    return out


# --------------------------------------------------------------------------- top activations
@dataclass
class TopActivation:
    """One of the strongest activations of a filter (see :func:`top_activations`)."""

    index: int            # which image of the pool
    position: tuple       # (row, col) in the layer's map
    value: float          # the activation
    box: tuple            # (top, left, bottom, right) receptive field in input pixels (may pass the border)
    patch: np.ndarray = field(repr=False)            # uint8 image under the receptive field, white past the border
    reconstruction: torch.Tensor = field(repr=False)  # [3, H, W] deconvnet reconstruction

    @property
    def reconstruction_patch(self) -> torch.Tensor:
        """The reconstruction under the receptive field (zero past the border; it is zero outside too)."""
        return _crop(self.reconstruction, self.box, 0.0)


def _pick(maps: torch.Tensor, k: int, min_distance: int, per_image) -> list:
    """Greedy top-k over (image, row, col), keeping picks of one image ``min_distance`` cells apart."""
    n, h, w = maps.shape
    order = maps.flatten().argsort(descending=True).tolist()
    picks, count = [], {}
    for f in order:
        i, rem = divmod(f, h * w)
        r, c = divmod(rem, w)
        if per_image is not None and count.get(i, 0) >= per_image:
            continue
        if any(j == i and max(abs(r - a), abs(c - b)) < min_distance for j, (a, b) in picks):
            continue
        picks.append((i, (r, c)))
        count[i] = count.get(i, 0) + 1
        if len(picks) == k:
            break
    return picks


def top_activations(model: nn.Module, images, layer, channel: int, k: int = 9, batch_size: int = 32,
                    min_distance: int | None = None, per_image: int | None = None,
                    progress: bool = True) -> list:
    """The ``k`` strongest activations of one filter over a pool of images (paper's Fig. 2).

    ``images`` is a normalised batch ``[N, 3, H, W]`` (the pool). The channel's map is computed
    for the whole pool in batches of ``batch_size`` under ``torch.no_grad()``; the ``k`` largest
    values are picked, two picks in the same image at least ``min_distance`` cells of the map apart
    (default: a quarter of the map's side, so their patches differ) and at most ``per_image`` per
    image (default: no limit). Returns a list of :class:`TopActivation` (strongest first) with the
    image index, the position, the value, the receptive-field box and patch (all patches of a layer
    have the field's full size: the part past the image border is white, as in the paper's
    figures), and the deconvnet :func:`reconstruction <reconstruct>` of that single activation.
    Explained in chapter 05, DeconvNet.
    """
    from tqdm.auto import tqdm

    x = models.check_images(images)
    k = models.positive_int(k, "k")
    batch_size = models.positive_int(batch_size, "batch_size")

    feats, stop = _index(model, layer)
    name = models.layer_name(model, feats[stop])
    # x is checked above: its slices are not checked again (forward_with_switches checks its input)
    with hooks.frozen(model), torch.no_grad(), models.made_from_checked_input():
        maps = []
        for s in tqdm(range(0, len(x), batch_size), desc=f"{name}: pool", disable=not progress, leave=False):
            act, _ = forward_with_switches(model, x[s:s + batch_size], layer)
            channel = _check_channel(act, channel, name)
            maps.append(act[:, channel].cpu())
        maps = torch.cat(maps)
        if min_distance is None:
            min_distance = max(1, min(maps.shape[1:]) // 4)
        picks = _pick(maps, k, min_distance, per_image)
        idx = [i for i, _ in picks]
        recs = []
        for s in range(0, len(picks), batch_size):
            part = picks[s:s + batch_size]
            rec, _, _ = _reconstruct(model, x[[i for i, _ in part]], layer, channel, [p for _, p in part])
            recs.append(rec.cpu())
        recs = torch.cat(recs) if recs else torch.zeros(0)
    pictures = _images.to_image(x[idx].cpu(), model=model)
    out = []
    for j, (i, pos) in enumerate(picks):
        box = receptive_field(model, layer, pos, tuple(x.shape[-2:]), clip=False)
        patch = _crop(pictures[j].transpose(2, 0, 1), box, 255).transpose(1, 2, 0)
        out.append(TopActivation(index=i, position=pos, value=float(maps[i, pos[0], pos[1]]), box=box,
                                 patch=np.ascontiguousarray(patch), reconstruction=recs[j]))
    return out


# --------------------------------------------------------------------------- occlusion
def _starts(n: int, size: int, stride: int) -> list:
    s = list(range(0, n - size + 1, stride))
    if s[-1] != n - size:
        s.append(n - size)  # the last square touches the border: every pixel is covered
    return s


def occlusion(model: nn.Module, x: torch.Tensor, target, size: int | None = None, stride: int | None = None,
              batch_size: int = 64, value: float = 0.0, progress: bool = True) -> torch.Tensor:
    """Occlusion sensitivity (Zeiler & Fergus 2014, Sec. 4.2): the target's probability under a grey square.

    A ``size`` x ``size`` square of ``value`` (0 in normalised space = the dataset's mean colour,
    a grey) slides over each image of ``x`` ``[N, 3, H, W]`` with ``stride``; every occluded copy
    is classified (in batches of ``batch_size`` under ``torch.no_grad()``) and the softmax
    probability of ``target`` (an int or one per image) is kept. Returns ``[N, H, W]`` on the CPU:
    at each pixel, the **probability of the target class** averaged over the square positions
    that cover that pixel (a probability, so already in [0, 1]; low = the pixel matters). The
    drop is ``p_clean - map`` with ``p_clean`` the probability of the unoccluded image.
    Defaults: ``size`` a quarter of the image side, ``stride`` half the size.
    Explained in chapter 05, DeconvNet.
    """
    from tqdm.auto import tqdm

    xd = models.check_batch(model, x)           # checked, on the model's device and dtype
    n, _, h, w = x.shape
    targets = models.check_target(model, target, n)
    size = int(size) if size is not None else max(1, min(h, w) // 4)
    if not 1 <= size <= min(h, w):
        raise ValueError(f"size must be between 1 and the image side {min(h, w)}, got {size}")
    stride = int(stride) if stride is not None else max(1, size // 2)
    if not 1 <= stride <= size:
        raise ValueError(f"stride must be between 1 and size={size} (so that every pixel is covered), "
                         f"got {stride}")
    batch_size = models.positive_int(batch_size, "batch_size")
    windows = [(t, l) for t in _starts(h, size, stride) for l in _starts(w, size, stride)]
    jobs = [(i, t, l) for i in range(n) for (t, l) in windows]
    probs = torch.empty(len(jobs))
    with hooks.frozen(model), torch.no_grad():
        for s in tqdm(range(0, len(jobs), batch_size), desc="occlusion", disable=not progress, leave=False):
            part = jobs[s:s + batch_size]
            xb = xd[[i for i, _, _ in part]].clone()
            for j, (_, t, l) in enumerate(part):
                xb[j, :, t:t + size, l:l + size] = value
            p = torch.softmax(model(xb).float(), dim=1)
            probs[s:s + len(part)] = p[torch.arange(len(part)), [targets[i] for i, _, _ in part]].cpu()
    total = torch.zeros(n, h, w)
    count = torch.zeros(h, w)
    for (t, l) in windows:
        count[t:t + size, l:l + size] += 1
    for j, (i, t, l) in enumerate(jobs):
        total[i, t:t + size, l:l + size] += probs[j]
    return total / count
