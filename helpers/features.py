"""Features: what the layers of a CNN compute, and images that show it.

Explained in chapter 01, Filters and feature maps (:func:`filters`, :func:`feature_maps`,
:func:`top_channels`, :func:`channel_map`); chapter 16, Activation maximization
(:func:`visualize_filter`, :class:`FilterOptimizer`); chapter 17, Deep Dream
(:func:`deep_dream`); chapter 18, Inverted representations (:func:`invert`).

Every function that optimises an image works in the model's *normalised* input space (what
``images.to_tensor`` makes), freezes the parameters while it runs (``hooks.frozen``), runs
the network only up to the layer it looks at (the forward pass stops there) and takes
gradients with respect to the image only. Images stay valid: once de-normalised, every pixel
lies in [0, 1]. The model is left exactly as it was, also after an exception.
"""
from __future__ import annotations

import contextlib
import functools
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import hooks, models

__all__ = [
    "PARAMS", "feature_maps", "filters", "top_channels", "channel_map", "prefix",
    "FilterOptimizer", "visualize_filter", "visualize_filters", "color_correlation",
    "fourier_scale", "deep_dream", "dream_step", "invert", "relative_error",
    "alpha_norm", "total_variation", "mean_activation", "layer_norm", "selective_channels", "seeded_noise",
]

#: The three image parameterisations of :func:`visualize_filter` (chapter 16).
PARAMS = ("pixel", "regularized", "fourier")


# ------------------------------------------------------------------------------ small tools
def _stats(model: nn.Module, device):
    """Mean and std of the model's input normalisation as ``[1, 3, 1, 1]`` tensors."""
    info = models.info(model)
    mean = torch.tensor(info.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, std


def _pixel_range(model: nn.Module, device):
    """The normalised values of pixel 0 and pixel 1 per channel: an image is valid in between."""
    mean, std = _stats(model, device)
    return (0 - mean) / std, (1 - mean) / std


def _check_x(x, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}() takes a normalised image batch (a tensor [N, 3, H, W], made by "
                        f"images.to_tensor), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{what}() takes a normalised image batch [N, 3, H, W], got shape "
                         f"{tuple(x.shape)}; a single image [3, H, W] needs x[None]")
    return models.check_images(x)                 # and float, N >= 1


def _known_channels(module: nn.Module):
    """Output channels when the module type tells them without running the model, else None."""
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return None


def _check_channel(name: str, channel, n: int) -> int:
    if isinstance(channel, bool) or not hasattr(channel, "__index__"):
        raise TypeError(f"a channel is an int index, got {channel!r}")
    channel = int(channel)
    if not 0 <= channel < n:
        raise ValueError(f"channel {channel} is out of range: layer {name!r} has {n} channels, "
                         f"0..{n - 1}")
    return channel


def _size_pair(size, model) -> tuple:
    if size is None:
        size = models.info(model).input_size
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    h, w = (int(s) for s in size)
    if h < 8 or w < 8:
        raise ValueError(f"size must be at least 8 x 8 pixels, got {h} x {w}")
    return h, w


def _per_image_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over everything but the batch dimension (works for [N, h, w] and [N])."""
    return t.reshape(t.shape[0], -1).mean(1)


@contextlib.contextmanager
def prefix(model: nn.Module, layer):
    """Context: a function ``run(x)`` that computes the network only up to ``layer``.

    Explained in chapter 16, Activation maximization.

    The same as :func:`helpers.hooks.forward_to` (the forward pass stops right after the layer,
    the rest of the network is never computed), but the hook is set up once for the whole
    optimisation instead of once per step, so a step costs one forward+backward of the prefix
    network and nothing more. Removed on exit.
    """
    with hooks.capture(model, layer, stop=True) as cap:
        def run(x: torch.Tensor) -> torch.Tensor:
            try:
                model(x)
            except hooks._StopForward as s:  # raised by the capture hook right after the layer
                return s.output
            raise ValueError(f"layer {cap.name!r} did not run in the forward pass")

        yield run


# ------------------------------------------------------------------------------ chapter 01
@torch.no_grad()
def feature_maps(model: nn.Module, x: torch.Tensor, layer, batch_size: int = 32) -> torch.Tensor:
    """The output of ``layer`` for the images ``x``: ``[N, C, h, w]`` on the CPU.

    Explained in chapter 01, Filters and feature maps.

    ``layer`` is a dotted name or a module: a conv layer, a ReLU, a block, or a linear layer
    (whose ``[N, C]`` output comes back as ``[N, C, 1, 1]``). Only the prefix of the network up
    to the layer is computed, in batches of ``batch_size``.
    """
    x = _check_x(x, "feature_maps")
    batch_size = models.positive_int(batch_size, "batch_size")
    with hooks.frozen(model), models.made_from_checked_input():     # x is checked: not its slices again
        outs = [hooks.forward_to(model, models.as_input(model, x[i:i + batch_size]), layer).float().cpu()
                for i in range(0, x.shape[0], batch_size)]
    out = torch.cat(outs)
    if out.ndim == 2:
        out = out[:, :, None, None]
    if out.ndim != 4:
        raise ValueError(f"layer {models.layer_name(model, layer)!r} gives outputs of shape "
                         f"{tuple(out.shape)}, not feature maps [N, C, h, w]; choose a conv layer")
    return out


def filters(model: nn.Module, layer=None, scale: str = "filter") -> np.ndarray:
    """The weights of a conv layer that sees the RGB image, as colour tiles ``[C, k, k, 3]`` in [0, 1].

    Explained in chapter 01, Filters and feature maps.

    ``layer`` defaults to the first conv layer. Zero weight is grey 0.5; ``scale="filter"``
    stretches each filter by its own largest absolute weight (shows every pattern),
    ``scale="layer"`` uses one scale for the whole layer (shows which filters are strong).
    """
    name = layer if layer is not None else models.conv_layers(model)[0]
    module = models.layer(model, name)
    if not isinstance(module, nn.Conv2d) or module.in_channels != 3:
        raise ValueError(f"layer {models.layer_name(model, module)!r} is not a conv layer with 3 input "
                         f"channels; only the first conv layer ({models.conv_layers(model)[0]!r}) "
                         f"sees the RGB image, so only its filters can be drawn as colour tiles")
    if scale not in ("filter", "layer"):
        raise ValueError(f"scale must be 'filter' or 'layer', got {scale!r}")
    w = module.weight.detach().float().cpu()                     # [C, 3, k, k]
    dims = (1, 2, 3) if scale == "filter" else (0, 1, 2, 3)
    m = w.abs().amax(dim=dims, keepdim=True).clamp_min(1e-12)
    return (0.5 + 0.5 * w / m).permute(0, 2, 3, 1).numpy()


def top_channels(maps: torch.Tensor, k: int = 8):
    """The ``k`` channels with the largest mean activation, per image: ``(indices, values)``, each ``[N, k]``.

    Explained in chapter 01, Filters and feature maps. ``maps`` is what :func:`feature_maps`
    returns (so a widget that changes ``k`` reuses one forward pass).
    """
    if maps.ndim != 4:
        raise ValueError(f"top_channels takes feature maps [N, C, h, w], got shape {tuple(maps.shape)}")
    k = models.positive_int(k, "k")
    means = maps.mean(dim=(2, 3))
    top = means.topk(min(int(k), maps.shape[1]), dim=1)
    return top.indices, top.values


def channel_map(maps: torch.Tensor, channel: int, size=None) -> torch.Tensor:
    """One channel of feature maps as a heatmap ``[N, H, W]`` in [0, 1] (min-max per image).

    Explained in chapter 01, Filters and feature maps. ``size`` (int or ``(H, W)``): resize
    bilinearly to the input resolution for an overlay; ``None`` keeps the map's own size.
    """
    if maps.ndim != 4:
        raise ValueError(f"channel_map takes feature maps [N, C, h, w], got shape {tuple(maps.shape)}")
    c = _check_channel("the feature maps", channel, maps.shape[1])
    m = maps[:, c:c + 1].float()
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    m = m[:, 0]
    lo = m.flatten(1).amin(1).view(-1, 1, 1)
    hi = m.flatten(1).amax(1).view(-1, 1, 1)
    return torch.where(hi > lo, (m - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(m))


# ------------------------------------------------------------------------------ chapter 16
@torch.no_grad()
def mean_activation(model: nn.Module, x: torch.Tensor, layer, channel: int) -> torch.Tensor:
    """Mean activation of one channel of ``layer`` for each image of ``x``: ``[N]`` on the CPU.

    Explained in chapter 16, Activation maximization (the quantity it maximises).
    """
    maps = feature_maps(model, x, layer)
    c = _check_channel(models.layer_name(model, layer), channel, maps.shape[1])
    return maps[:, c].flatten(1).mean(1)


def selective_channels(maps: torch.Tensor, labels, k: int = 4) -> list:
    """The channels that single out one label most, one per label: ``[(channel, label, selectivity)]``.

    Explained in chapter 16, Activation maximization (which channels are worth visualising).
    ``maps`` ``[N, C, h, w]`` is what :func:`feature_maps` returns for N labelled images,
    ``labels`` one int per image (at least two different ones). A channel's response to an image
    is its largest activation over positions (a detector fires *somewhere*; the mean would dilute
    it in the background). With ``mu[j]`` the mean response to the images of label j, the
    channel's selectivity for its preferred label ``j*`` (the largest ``mu``) is

        (mu[j*] - mean of mu[j] over the other labels) / std of the responses over all N images

    (a channel that never varies scores 0). Of each label the most selective channel is kept; the
    ``k`` labels whose channels are most selective come back, most selective first.
    """
    if maps.ndim != 4:
        raise ValueError(f"selective_channels takes feature maps [N, C, h, w], got shape {tuple(maps.shape)}")
    labels = torch.as_tensor(labels).reshape(-1)
    if len(labels) != maps.shape[0] or labels.is_floating_point():
        raise ValueError(f"labels must be one int per image ({maps.shape[0]}), got {len(labels)} of {labels.dtype}")
    kinds = labels.unique()
    if len(kinds) < 2:
        raise ValueError("selectivity needs images of at least two different labels")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    r = maps.flatten(2).amax(2).double()                                      # [N, C] responses
    mu = torch.stack([r[labels == j].mean(0) for j in kinds])                # [L, C]
    best = mu.argmax(0)                                                       # preferred label per channel
    others = (mu.sum(0) - mu.max(0).values) / (len(kinds) - 1)
    spread = r.std(0)
    sel = torch.where(spread > 0, (mu.max(0).values - others) / spread.clamp_min(1e-30), torch.zeros_like(spread))
    chosen = {}
    for c in sel.argsort(descending=True).tolist():                           # most selective first
        j = int(kinds[best[c]])
        if j not in chosen:
            chosen[j] = (c, j, float(sel[c]))
    return list(chosen.values())[:k]


@functools.lru_cache(maxsize=4)
def _color_correlation(world: str) -> tuple:
    if world == "shapes":
        from . import shapes

        pixels = np.concatenate([s.image.reshape(-1, 3) for s in shapes.scenes(range(64))]
                                + [s.image.reshape(-1, 3) for s in shapes.scenes(range(64, 96), 2)])
        source = "96 shapes scenes (seeds 0..95)"
    else:
        from . import images

        chunks = []
        for name in images.photo_names():
            img = images.resize(images.photo(name), 128)
            a = img.reshape(-1, 3).astype(np.float64)
            if np.abs(a - a.mean(1, keepdims=True)).mean() > 2:  # skip grayscale photos
                chunks.append(a)
        pixels = np.concatenate(chunks)
        source = f"the {len(chunks)} colour photos in data/images"
    cov = np.cov((pixels / 255.0).T)
    vals, vecs = np.linalg.eigh(cov)
    root = vecs @ np.diag(np.sqrt(np.clip(vals, 0, None))) @ vecs.T   # symmetric square root
    root = root / np.linalg.norm(root, axis=0).max()
    return tuple(map(tuple, root.tolist())), source


def color_correlation(model: nn.Module) -> torch.Tensor:
    """The fixed 3 x 3 colour-correlation matrix of the Fourier parameterisation.

    Explained in chapter 16, Activation maximization.

    The symmetric square root of the covariance of RGB pixel values, scaled so its largest
    column has norm 1: multiplying three *uncorrelated* random channels by it gives colours
    correlated like those of the world's images. Estimated here, once, from the world's own
    images: 96 shapes scenes in the shapes world, the colour example photos of ``data/images``
    in the ImageNet world (a rough estimate from a few photos, not from ImageNet itself).
    """
    root, _ = _color_correlation(models.info(model).world)
    return torch.tensor(root, dtype=torch.float32)


def fourier_scale(h: int, w: int, decay: float = 1.0) -> torch.Tensor:
    """``1 / f**decay`` for the ``[h, w // 2 + 1]`` frequencies of a real 2-D FFT, normalised to RMS 1.

    Explained in chapter 16, Activation maximization. The lowest frequency caps ``f`` at
    ``1 / max(h, w)`` (so the constant term is not infinite). Natural images have a spectrum
    falling like ``1/f``; scaling the learned coefficients by it makes every frequency equally
    easy to change, so the optimiser no longer prefers high-frequency noise.
    """
    fy = torch.fft.fftfreq(h).view(-1, 1)
    fx = torch.fft.rfftfreq(w).view(1, -1)
    f = torch.sqrt(fx ** 2 + fy ** 2).clamp_min(1.0 / max(h, w))
    scale = f ** (-decay)
    return scale / scale.pow(2).mean().sqrt()


def seeded_noise(draw, n: int, shape, seed: int) -> torch.Tensor:
    """``[n, *shape]`` on the CPU: row i drawn by ``draw`` (``torch.randn``, ``torch.rand``) from its
    own generator seeded ``seed + i``, so an image's random start does not depend on the rest of
    its batch (image i of a batch = a one-image run with seed ``seed + i``)."""
    return torch.cat([draw((1, *shape), generator=torch.Generator().manual_seed(int(seed) + i)) for i in range(n)])


def _gaussian_kernel(sigma: float, device) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    return (k[:, None] * k[None, :]).expand(3, 1, -1, -1).contiguous()


class FilterOptimizer:
    """One activation-maximization run: ``step()`` is one optimisation step.

    Explained in chapter 16, Activation maximization. :func:`visualize_filter` is this class
    used for ``steps`` steps; a benchmark times :meth:`step` alone::

        with features.FilterOptimizer(model, "features.8", channel=3) as opt:
            for _ in range(100):
                opt.step()
            x = opt.image()        # normalised [K, 3, H, W]

    Entering the context freezes the parameters and sets the hook that stops the forward pass
    at the layer (once); leaving it restores the model. One step of ``param="pixel"`` is one
    forward+backward of the prefix network plus a few element-wise operations on the image;
    nothing is allocated that outlives the step.

    ``channels`` is one index or a list: image ``k`` of the batch maximises channel
    ``channels[k]`` (the images do not interact). ``param`` and the knobs:

    * ``"pixel"``: the pixels themselves, gradient ascent with a normalised step of size ``lr``
      (normalised units), pixels clipped to the valid range. No prior at all.
    * ``"regularized"``: the same pixels with the priors of Yosinski et al. (2015): each step
      the image is shifted by a random ``jitter`` (up to that many pixels, wrapping around),
      the image gradient is normalised and clipped at ``grad_clip`` times its RMS, the image
      decays towards the mean colour by ``decay`` (L2 decay) and every ``blur_every`` steps is
      blurred by a Gaussian of ``blur_sigma`` pixels (0: no blur). The blur is the paper's: a width of 0.5
      pixels every 4 steps is one of the combinations of their Table 1 (the others use 1.0
      every 4 steps, or no blur); widths below about 0.3 pixels hardly change the image. The
      decay (0.002 per step) and ``lr`` are this book's (the paper's combinations use a decay
      of 0, 0.0001 or 0.3 and a much longer run).
    * ``"fourier"``: the image is ``sigmoid(M z)`` with ``z`` the inverse FFT of learned
      coefficients scaled by ``1/f`` and ``M`` the fixed colour-correlation matrix; each step
      sees a random rotation (``rotate`` degrees), scale (``1 +- scale``) and shift (``jitter``
      pixels) of the image; Adam with learning rate ``lr`` (Olah et al., 2017).
    """

    def __init__(self, model: nn.Module, layer, channel, param: str = "pixel", size=None,
                 seed: int = 0, lr: float | None = None, steps: int = 0, jitter: int | None = None,
                 decay: float = 0.002, blur_every: int = 4, blur_sigma: float = 0.5,
                 grad_clip: float = 3.0, rotate: float = 10.0, scale: float = 0.1):
        if param not in PARAMS:
            raise ValueError(f"unknown param {param!r}; valid: {', '.join(PARAMS)}")
        if not (isinstance(blur_sigma, (int, float)) and math.isfinite(blur_sigma) and blur_sigma >= 0):
            raise ValueError(f"blur_sigma must be a width in pixels >= 0 (0: no blur), got {blur_sigma!r}")
        self.model, self.param = model, param
        self.module = models.layer(model, layer)
        self.layer = models.layer_name(model, self.module)
        chans = [channel] if not isinstance(channel, (list, tuple, torch.Tensor)) else list(channel)
        if not chans:
            raise ValueError("give at least one channel")
        n = _known_channels(self.module)
        self.channels = [_check_channel(self.layer, c, n) if n is not None else int(c) for c in chans]
        self._checked = n is not None
        self.size = _size_pair(size, model)
        self.device = models.device(model)
        self.lr = lr if lr is not None else {"pixel": 0.05, "regularized": 0.13, "fourier": 0.05}[param]
        # default jitter: 1/32 of the image for the pixel priors, 1/16 for the Fourier transforms
        self.jitter = jitter if jitter is not None else max(1, round(max(self.size) / (32 if param == "regularized" else 16)))
        self.decay, self.blur_every, self.blur_sigma = decay, blur_every, blur_sigma
        self.grad_clip, self.rotate, self.scale = grad_clip, rotate, scale
        self.rng = random.Random(seed)              # the random transforms of each step
        self.t = 0
        self.history = torch.zeros(models.positive_int(steps, "steps", minimum=0), len(self.channels))  # per step, no growth
        self._index = torch.arange(len(self.channels), device=self.device)
        self._chan = torch.tensor(self.channels, device=self.device)
        self._stack = None
        self._init_param(seed)

    # -- parameterisations ----------------------------------------------------------------
    def _init_param(self, seed: int):
        k, (h, w) = len(self.channels), self.size
        self.lo, self.hi = _pixel_range(self.model, self.device)
        self.mean, self.std = _stats(self.model, self.device)
        if self.param in ("pixel", "regularized"):
            # mean colour plus faint noise (std 0.02 in pixel units), normalised
            noise = seeded_noise(torch.randn, k, (3, h, w), seed).to(self.device)
            self.x = (noise * 0.02 / self.std).requires_grad_(True)
            self.tensor = self.x
            if self.param == "regularized" and self.blur_sigma > 0:
                self._kernel = _gaussian_kernel(self.blur_sigma, self.device)
        else:
            coeffs = seeded_noise(torch.randn, k, (3, h, w // 2 + 1, 2), seed)
            self.spectrum = (coeffs * 0.01).to(self.device).requires_grad_(True)
            self.tensor = self.spectrum
            self._scale = fourier_scale(h, w).to(self.device)[None, None, :, :, None]
            self._M = color_correlation(self.model).to(self.device)
            p = self.mean.clamp(1e-3, 1 - 1e-3)
            self._offset = torch.log(p / (1 - p))    # sigmoid(offset) = the mean colour
            self.optimizer = torch.optim.Adam([self.spectrum], lr=self.lr)

    def image(self) -> torch.Tensor:
        """The current image, normalised ``[K, 3, H, W]`` (differentiable for ``"fourier"``)."""
        if self.param != "fourier":
            return self.x
        h, w = self.size
        z = torch.fft.irfft2(torch.view_as_complex(self.spectrum * self._scale), s=(h, w), norm="ortho")
        rgb = torch.sigmoid(torch.einsum("ij,kjhw->kihw", self._M, z) + self._offset)
        return (rgb - self.mean) / self.std

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        """The random transform of one step (the same for all images of the batch)."""
        if self.param == "pixel":
            return x
        j = self.jitter
        if self.param == "regularized":
            return torch.roll(x, (self.rng.randint(-j, j), self.rng.randint(-j, j)), dims=(2, 3))
        angle = math.radians(self.rng.uniform(-self.rotate, self.rotate))
        s = self.rng.uniform(1 - self.scale, 1 + self.scale)
        h, w = self.size
        tx, ty = 2 * self.rng.uniform(-j, j) / w, 2 * self.rng.uniform(-j, j) / h
        theta = torch.tensor([[math.cos(angle) / s, -math.sin(angle) / s, tx],
                              [math.sin(angle) / s, math.cos(angle) / s, ty]],
                             dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # -- the step ---------------------------------------------------------------------------
    def __enter__(self):
        self._stack = contextlib.ExitStack()
        try:
            self._stack.enter_context(hooks.frozen(self.model))
            self._run = self._stack.enter_context(prefix(self.model, self.module))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc):
        self._stack.close()
        self._stack = None
        return False

    def objective(self, act: torch.Tensor) -> torch.Tensor:
        """Mean activation of each image's channel: ``[K]`` (the quantity that is maximised)."""
        if not self._checked:
            for c in self.channels:
                _check_channel(self.layer, c, act.shape[1])
            self._checked = True
        if len(self.channels) == 1:                    # plain slicing: the cheapest backward
            return _per_image_mean(act[:, self.channels[0]])
        return _per_image_mean(act[self._index, self._chan])

    def step(self) -> torch.Tensor:
        """One step of gradient ascent on the objective; returns its value before the step ``[K]``."""
        if self._stack is None:
            raise RuntimeError("use the FilterOptimizer as a context: with FilterOptimizer(...) as opt:")
        act = self._run(self._transform(self.image()))
        value = self.objective(act)
        (g,) = torch.autograd.grad(value.sum(), self.tensor)
        with torch.no_grad():
            if self.param == "fourier":
                self.tensor.grad = g.neg_()
                self.optimizer.step()
            else:
                self._ascend(g)
        if self.t < self.history.shape[0]:
            self.history[self.t] = value.detach()
        self.t += 1
        return value.detach()

    def _ascend(self, g: torch.Tensor) -> None:
        x = self.x
        dims = (1, 2, 3)
        if self.param == "pixel":
            # normalised gradient ascent: the mean absolute step is lr
            x.addcdiv_(g, g.abs().mean(dims, keepdim=True).add_(1e-12), value=self.lr)
        else:
            rms = g.pow(2).mean(dims, keepdim=True).sqrt_().add_(1e-12)
            g = g.div_(rms).clamp_(-self.grad_clip, self.grad_clip)   # clip the *image* gradient
            x.add_(g, alpha=self.lr)
            x.mul_(1 - self.decay)                                      # L2 decay (towards the mean)
            if self.blur_every and self.blur_sigma > 0 and (self.t + 1) % self.blur_every == 0:
                k = self._kernel
                r = k.shape[-1] // 2
                x.copy_(F.conv2d(F.pad(x, (r, r, r, r), mode="reflect"), k, groups=3))
        torch.max(x, self.lo, out=x)
        torch.min(x, self.hi, out=x)


def visualize_filters(model: nn.Module, layer, channels, steps: int | None = None,
                      param: str = "pixel", size=None, seed: int = 0, progress: bool = True,
                      **knobs) -> torch.Tensor:
    """Activation maximization for several channels of one layer at once: ``[K, 3, H, W]``.

    Explained in chapter 16, Activation maximization. Image ``k`` maximises channel
    ``channels[k]``; the images are optimised together in one batch (faster than one by one)
    but do not interact. Arguments as in :func:`visualize_filter`.
    """
    from tqdm.auto import tqdm

    steps = _default_steps(model, param) if steps is None else models.positive_int(steps, "steps", minimum=0)
    with FilterOptimizer(model, layer, channels, param=param, size=size, seed=seed, steps=steps,
                         **knobs) as opt:
        for _ in tqdm(range(steps), desc=f"{param} {opt.layer}", disable=not progress, leave=False):
            opt.step()
        with torch.no_grad():
            out = opt.image().detach().clone()
        torch.max(out, opt.lo, out=out)
        torch.min(out, opt.hi, out=out)
    return out.cpu()


def _default_steps(model: nn.Module, param: str) -> int:
    shapes_world = models.info(model).world == "shapes"
    return (128 if shapes_world else 64) if param != "fourier" else (160 if shapes_world else 96)


def visualize_filter(model: nn.Module, layer, channel: int, steps: int | None = None,
                     param: str = "pixel", size=None, seed: int = 0, progress: bool = True,
                     **knobs) -> torch.Tensor:
    """An input that maximises the mean activation of one channel: normalised ``[1, 3, H, W]``.

    Explained in chapter 16, Activation maximization (Erhan et al. 2009; Yosinski et al. 2015;
    Olah et al. 2017). View it with ``images.to_image(x, model=model)``.

    Gradient ascent on ``mean(A[channel])``, the mean over positions of the channel's output at
    ``layer`` (a conv layer, a ReLU, a block, or a linear layer such as ``classifier.6``).
    ``param`` is ``"pixel"`` (plain pixels), ``"regularized"`` (jitter, image-gradient clipping,
    L2 decay, periodic blur) or ``"fourier"`` (1/f-scaled Fourier coefficients, colour
    decorrelation, sigmoid, random rotate/scale/jitter each step); see
    :class:`FilterOptimizer` for the knobs (``lr``, ``jitter``, ``decay``, ...). ``size``
    defaults to the model's input size; ``steps`` to a number that suits the world (more
    steps, better images). Parameters are frozen, the forward pass stops at the layer, the
    model is left as it was. A channel past the layer's channels raises ``ValueError``.
    """
    return visualize_filters(model, layer, [channel], steps=steps, param=param, size=size,
                             seed=seed, progress=progress, **knobs)


# ------------------------------------------------------------------------------ chapter 17
def layer_norm(model: nn.Module, x: torch.Tensor, layer, channel: int | None = None) -> torch.Tensor:
    """Root mean square of a layer's (or one channel's) activations per image: ``[N]`` on the CPU.

    Explained in chapter 17, Deep Dream (the quantity Deep Dream increases).
    """
    maps = feature_maps(model, x, layer)
    if channel is not None:
        c = _check_channel(models.layer_name(model, layer), channel, maps.shape[1])
        maps = maps[:, c:c + 1]
    return maps.pow(2).flatten(1).mean(1).sqrt()


def dream_step(run, x: torch.Tensor, channel, lr: float, shift: tuple, lo, hi) -> torch.Tensor:
    """One Deep Dream step on ``x`` in place; returns the objective ``[N]`` before the step.

    Explained in chapter 17, Deep Dream. ``run`` computes the layer (see :func:`prefix`).
    The image is rolled by ``shift`` (jitter), the objective is half the mean square of the
    layer's (or channel's) activations, and the gradient, normalised by its mean absolute
    value per image, is added with step ``lr``; pixels are kept in the valid range.
    """
    xs = torch.roll(x, shift, dims=(2, 3)).requires_grad_(True)
    act = run(xs)
    if channel is not None:
        act = act[:, channel]
    value = 0.5 * _per_image_mean(act.pow(2))
    (g,) = torch.autograd.grad(value.sum(), xs)
    g = torch.roll(g, (-shift[0], -shift[1]), dims=(2, 3))
    with torch.no_grad():
        x.addcdiv_(g, g.abs().mean((1, 2, 3), keepdim=True).add_(1e-12), value=lr)
        torch.max(x, lo, out=x)
        torch.min(x, hi, out=x)
    return value.detach()


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def deep_dream(model: nn.Module, x: torch.Tensor, layer, channel: int | None = None,
               octaves: int = 3, steps: int = 10, octave_scale: float = 1.4, lr: float = 0.05,
               jitter: int = 16, seed: int = 0, progress: bool = True, return_values: bool = False):
    """Deep Dream (Mordvintsev, Olah & Tyka 2015): amplify what ``layer`` sees in ``x``.

    Explained in chapter 17, Deep Dream.

    Gradient ascent on half the mean square of the layer's activations (or of one
    ``channel``), starting from the photo ``x`` (normalised ``[N, 3, H, W]``), over ``octaves``
    scales: the image is first dreamed at ``1/octave_scale**(octaves-1)`` of its size, and the
    *detail* added at each scale is upscaled and carried to the next. Each of the ``steps``
    steps per octave jitters the image by a random shift of up to ``jitter`` pixels (at most a
    quarter of the octave's side, so that a small octave is not rolled around) and adds
    the gradient normalised by its mean absolute value times ``lr`` (normalised units). Pixels
    stay in the valid range. Returns a tensor like ``x`` (same shape, device and dtype); with
    ``return_values`` also the objective per step ``[octaves * steps, N]``.
    """
    from tqdm.auto import tqdm

    x = _check_x(x, "deep_dream")
    module = models.layer(model, layer)
    name = models.layer_name(model, module)
    n = _known_channels(module)
    if channel is not None and n is not None:
        channel = _check_channel(name, channel, n)
    octaves = models.positive_int(octaves, "octaves")
    steps = models.positive_int(steps, "steps", minimum=0)
    try:
        scale = float(octave_scale)
    except (TypeError, ValueError):
        scale = math.nan
    if isinstance(octave_scale, (bool, str)) or not 1 <= scale < math.inf:
        raise ValueError(f"octave_scale must be a number >= 1 (each octave that much smaller), got {octave_scale!r}")
    octave_scale = scale
    device = models.device(model)
    rng = random.Random(seed)
    base = x.detach().to(device, torch.float32)
    lo, hi = _pixel_range(model, device)
    h, w = base.shape[-2:]
    sizes = [(max(8, round(h / octave_scale ** i)), max(8, round(w / octave_scale ** i)))
             for i in range(octaves - 1, -1, -1)]
    values = torch.zeros(octaves * steps, base.shape[0])
    detail = torch.zeros_like(_resize(base, sizes[0]))
    with hooks.frozen(model), prefix(model, module) as run:
        bar = tqdm(total=octaves * steps, desc=f"deep dream {name}", disable=not progress, leave=False)
        for o, size in enumerate(sizes):
            octave_base = _resize(base, size)
            img = (octave_base + _resize(detail, size)).clamp_(min=lo, max=hi)
            if channel is not None and n is None and o == 0:
                with torch.no_grad():
                    _check_channel(name, channel, run(img).shape[1])
            for s in range(steps):
                j = min(jitter, size[0] // 4, size[1] // 4)
                shift = (rng.randint(-j, j), rng.randint(-j, j))
                values[o * steps + s] = dream_step(run, img, channel, lr, shift, lo, hi).cpu()
                bar.update()
            detail = img - octave_base
        bar.close()
    out = img.detach().to(x.device, x.dtype)
    return (out, values) if return_values else out


# ------------------------------------------------------------------------------ chapter 18
#: The smoothing constant of :func:`total_variation` (pixel units of [0, 1]).
TV_EPS = 1e-3


def alpha_norm(x: torch.Tensor, alpha: float = 6.0) -> torch.Tensor:
    """The paper's alpha-norm regulariser ``sum |x|^alpha`` per image ``[N]`` (chapter 18)."""
    return x.abs().pow(alpha).flatten(1).sum(1)


def total_variation(x: torch.Tensor, beta: float = 2.0, eps: float = TV_EPS) -> torch.Tensor:
    """The paper's total variation ``sum_ij ((x[i,j+1]-x[i,j])^2 + (x[i+1,j]-x[i,j])^2 + eps^2)^(beta/2)``, per image ``[N]``.

    Explained in chapter 18, Inverted representations. Differences are taken inside the image
    (the last row and column have no right/lower neighbour and are left out); the sum runs
    over pixels and colour channels.

    Mahendran & Vedaldi's regulariser is ``sum ((dx^2 + dy^2)^(beta/2))``, i.e. ``eps=0``.
    Added here: the small constant ``eps^2`` inside the root (:data:`TV_EPS`, a thousandth of
    the pixel range, a quarter of a grey level, for ``x`` in pixel units). For ``beta < 2`` the
    root has an infinite derivative at 0, and autograd gives NaN wherever a pixel equals its
    right and lower neighbours (flat regions, pixels clipped at 0 or 1): a NaN pixel spreads over
    the whole image within a few steps. With ``eps`` the gradient there is 0 (flat stays flat)
    and finite everywhere. For ``beta = 2`` it only adds a constant: the gradient is unchanged.
    """
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    s = dx.pow(2) + dy.pow(2)
    if eps:
        s = s + float(eps) ** 2
    return s.pow(beta / 2).flatten(1).sum(1)


@torch.no_grad()
def relative_error(model: nn.Module, x: torch.Tensor, x0: torch.Tensor, layer) -> torch.Tensor:
    """``||Phi(x) - Phi(x0)|| / ||Phi(x0)||`` per image ``[N]``: how well ``x`` reproduces ``x0``'s representation.

    Explained in chapter 18, Inverted representations.
    """
    a, a0 = feature_maps(model, x, layer), feature_maps(model, x0, layer)
    return (a - a0).flatten(1).norm(dim=1) / a0.flatten(1).norm(dim=1).clamp_min(1e-12)


#: Typical magnitude of a mean-subtracted pixel (B = 80 of 255) and of the difference between
#: neighbouring pixels (V = B / 6.5), in pixel units of [0, 1]: the values of the method's journal
#: version (Mahendran & Vedaldi, IJCV 2016), which divides the priors by H W B^alpha and H W V^beta;
#: the authors' released code for it (nnpreimage) weighs the priors by B^-alpha and (6.5 / B)^beta, B = 80.
B_PIXEL = 80 / 255
V_PIXEL = B_PIXEL / 6.5


def invert(model: nn.Module, x: torch.Tensor, layer, steps: int = 200, lr: float = 0.1,
           alpha: float = 6.0, beta: float = 2.0, lambda_alpha: float = 1e-4, lambda_tv: float = 0.002,
           seed: int = 0, progress: bool = True, return_history: bool = False):
    """Reconstruct images from their representation at ``layer`` (Mahendran & Vedaldi 2015).

    Explained in chapter 18, Inverted representations.

    Minimises, for each image of ``x`` (normalised ``[N, 3, H, W]``) with ``Phi0 = Phi(x)``::

        E(x') = ||Phi(x') - Phi0||^2 / ||Phi0||^2
                + lambda_alpha * sum |u|^alpha / (H W B^alpha)
                + lambda_tv * TV_beta(u) / (H W V^beta)

    where ``u = pixels(x') - mean`` is the image in pixel units around the mean colour,
    ``TV_beta`` is :func:`total_variation` (with its small ``eps``, so ``beta < 2`` works), and B,
    V are the typical magnitudes of a pixel and of a pixel difference (:data:`B_PIXEL`,
    :data:`V_PIXEL`), so each regulariser is about 1 for a natural image. The default
    ``lambda_tv`` suits early layers, whose representation pins the image down; deep layers need
    a larger one (the paper tunes it per layer; chapter 18 raises it with depth). Starts from faint
    noise (image i from ``seed + i``: a batch gives each image what a call for it alone gives); Adam with learning rate ``lr`` (normalised units) decayed by a cosine
    schedule; pixels kept in the valid range. ``layer`` can be any layer: a conv or ReLU,
    ``avgpool``, or a linear layer (``classifier``, ``classifier.6``, the logits).
    Returns a tensor like ``x``; with ``return_history`` also the objective per step
    ``[steps, N]``. Measure the result with :func:`relative_error`.
    """
    from tqdm.auto import tqdm

    x = _check_x(x, "invert")
    steps = models.positive_int(steps, "steps", minimum=0)
    device = models.device(model)
    module = models.layer(model, layer)
    name = models.layer_name(model, module)
    x0 = x.detach().to(device, torch.float32)
    mean, std = _stats(model, device)
    lo, hi = _pixel_range(model, device)
    n, _, h, w = x0.shape
    noise = seeded_noise(torch.randn, n, x0.shape[1:], seed)      # image i from seed + i
    xr = (noise.to(device) * 0.02 / std).requires_grad_(True)
    opt = torch.optim.Adam([xr], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps), eta_min=lr * 0.05)
    history = torch.zeros(steps, n)
    with hooks.frozen(model), prefix(model, module) as run:
        with torch.no_grad():
            phi0 = run(x0).detach()
        norm0 = phi0.flatten(1).pow(2).sum(1).clamp_min(1e-12)
        for t in tqdm(range(steps), desc=f"inverting {name}", disable=not progress, leave=False):
            phi = run(xr)
            u = xr * std                                   # pixels minus the mean colour, in [0, 1] units
            loss = ((phi - phi0).flatten(1).pow(2).sum(1) / norm0
                    + lambda_alpha * alpha_norm(u, alpha) / (h * w * B_PIXEL ** alpha)
                    + lambda_tv * total_variation(u, beta) / (h * w * V_PIXEL ** beta))
            (g,) = torch.autograd.grad(loss.sum(), xr)
            xr.grad = g
            opt.step()
            sched.step()
            with torch.no_grad():
                torch.max(xr, lo, out=xr)
                torch.min(xr, hi, out=xr)
            history[t] = loss.detach().cpu()
    out = xr.detach().to(x.device, x.dtype)
    return (out, history) if return_history else out
