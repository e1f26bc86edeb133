"""Gradient-based attribution: what in the input the class score is most sensitive to.

Explained in chapters 02 to 08:

* :func:`vanilla` (chapter 02, Vanilla backpropagation): the gradient of the class score with
  respect to the input image; with ``layer`` and ``channel``, the gradient of one filter's
  activation instead.
* :func:`saliency` (chapter 03, Saliency maps): the maximum over colour channels of the
  absolute gradient (Simonyan, Vedaldi & Zisserman 2014).
* :func:`guided` (chapter 04, Guided backpropagation) and :func:`deconvnet` (chapters 04 and
  05): the same backward pass with another rule at every ReLU (``helpers.hooks.relu_rule``),
  ``nn.ReLU`` modules and functional ``F.relu`` calls alike.
* :func:`grad_x_image` (chapter 06, Gradient x image).
* :func:`integrated_gradients` and :func:`make_baseline` (chapter 07, Integrated gradients).
* :func:`smoothgrad` (chapter 08, SmoothGrad): wraps any of the above.
* ``lrp`` (chapter 09, Layer-wise relevance propagation) lives in ``helpers.lrp`` and is
  re-exported here.

Conventions (shared by every function): ``x`` is a normalised batch ``[N, 3, H, W]`` (what
``helpers.images.to_tensor`` makes); ``target`` is a class index, one per image, or ``None``
for the class the model predicts. Maps come back on the CPU: input-space maps ``[N, 3, H, W]``
signed and raw, heatmaps ``[N, H, W]`` in [0, 1]. Gradients are taken with respect to the
input only (``torch.autograd.grad``, parameters frozen), and the model is left exactly as it
was (hooks, ``inplace`` flags, ``requires_grad``, train/eval mode), also after an error.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from . import hooks, models

__all__ = [
    "vanilla",
    "saliency",
    "guided",
    "deconvnet",
    "grad_x_image",
    "make_baseline",
    "integrated_gradients",
    "smoothgrad",
    "BASELINES",
]

#: The named baselines of :func:`make_baseline` (and of ``integrated_gradients(baseline=...)``).
BASELINES = ("black", "blur", "noise")
_REDUCE = ("sum", "max")
# ``batch_size=None``: how many path points / noisy copies go through one forward/backward pass.
# On a CPU, up to 8, and fewer where one layer's output for the batch would pass 32 MB. Above
# that size glibc's allocator (Linux) maps every new tensor freshly from the system and hands it
# back when freed, so every call pays for page faults again. Measured on 2 threads on
# 2026-12-05 (integrated_gradients with 16 steps and batch_size = 1 / 2 / 4 / 8 / 16, ms per
# path point; not part of tests/benchmarks, which runs the default):
# - VGG16 (12.8 MB per image at its first layers): 280 / 261 / 280 / 314 / 391;
# - ResNet50 (3.2 MB per image): 145 / 121 / 110 / 104 / 159;
# - ShapesNet (0.5 MB per image): 5.0 / 3.7 / 3.3 / 3.2 / 3.1.
# That gives batches of 2, 8 and 8 for them.
# On a GPU, larger batches keep the device busy: about 2 ** 20 pixels (64 images of 128 x 128,
# 20 of 224 x 224; VGG16 needs about 2 GB for 20).
_CPU_BATCH, _CPU_BATCH_BYTES = 8, 32 * 2 ** 20
_GPU_BATCH_PIXELS = 2 ** 20


# --------------------------------------------------------------------------------------------
# Checks and small tools
# --------------------------------------------------------------------------------------------

def _check_x(model: nn.Module, x, fn: str) -> torch.Tensor:
    """The input as a detached tensor on the model's device and in its dtype; clear errors."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{fn}: x must be a normalised image batch, a torch.Tensor [N, 3, H, W] "
                         f"(made by helpers.images.to_tensor), got {type(x).__name__}")
    if x.ndim == 3 and x.shape[0] == 3:
        raise ValueError(f"{fn}: x must be a batch [N, 3, H, W], got one image {tuple(x.shape)}; "
                         f"add the batch dimension with x[None]")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{fn}: x must be a batch [N, 3, H, W] of RGB images, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{fn}: x is an empty batch (N = 0)")
    if not x.is_floating_point():
        raise ValueError(f"{fn}: x must be a float tensor (normalised pixels), got {x.dtype}; "
                         f"make it with helpers.images.to_tensor(image, model)")
    return models.as_input(model, x)


def _check_objective(model, n: int, target, layer, channel, reduce: str, fn: str):
    """Validate what is differentiated: a class score (``target``) or a filter (``layer`` + ``channel``)."""
    if reduce not in _REDUCE:
        raise ValueError(f"{fn}: reduce must be one of {', '.join(map(repr, _REDUCE))}, got {reduce!r}")
    if layer is None:
        if channel is not None:
            raise ValueError(f"{fn}: channel={channel!r} needs a layer: give layer=... (a module or a "
                             f"dotted name such as {models.last_conv_layer(model)!r}) as well")
        return None if target is None else models.check_target(model, target, n)
    if target is not None:
        raise ValueError(f"{fn}: give either a target class, or a layer and a channel (the filter "
                         f"whose activation is explained), not both")
    if channel is None:
        raise ValueError(f"{fn}: layer={layer!r} needs a channel (the filter index) as well")
    if isinstance(channel, bool) or not isinstance(channel, numbers.Integral):
        raise ValueError(f"{fn}: channel must be a filter index (int), got {channel!r}")
    models.layer(model, layer)  # unknown layer -> ValueError listing the valid names
    return None


_largest = weakref.WeakKeyDictionary()   # model -> {(input shape, dtype): bytes}


def _largest_output(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the largest output of any layer of ``model`` for one image like ``x[:1]``.

    Found by one forward pass of one image under ``torch.no_grad()`` and remembered per model
    and input size, so it is paid once (about one forward pass, 0.1 s on VGG16)."""
    key = (tuple(x.shape[1:]), x.dtype)
    known = _largest.setdefault(model, {})
    if key not in known:
        layers = [m for m in model.modules() if next(m.children(), None) is None]   # not blocks
        seen = models._probe(model, layers, x[:1].detach())    # eval, no_grad; model restored
        known[key] = max((math.prod(shape) * dtype.itemsize
                          for calls in seen.values() for shape, dtype in calls), default=0)
    return known[key]


def _batch_size(batch_size, model: nn.Module, x: torch.Tensor, fn: str) -> int:
    if batch_size is None:
        if x.device.type == "cpu":
            return max(1, min(_CPU_BATCH, _CPU_BATCH_BYTES // max(1, _largest_output(model, x))))
        return max(1, _GPU_BATCH_PIXELS // (x.shape[-1] * x.shape[-2]))
    return models.positive_int(batch_size, f"{fn}: batch_size")


def _progress(total: int, progress: bool, desc: str):
    """A tqdm.auto bar that shows up only when the work lasts more than a couple of seconds."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress or total <= 1, delay=2.0, leave=False)


@torch.no_grad()
def _predicted(model, x: torch.Tensor) -> torch.Tensor:
    return models.scores(model(x)).argmax(1)


def _targets_tensor(model, x: torch.Tensor, target, fn: str) -> torch.Tensor:
    """One class index per image, on the model's device (the predicted class for ``None``)."""
    if target is None:
        return _predicted(model, x)
    return torch.tensor(models.check_target(model, target, len(x)), device=x.device)


# --------------------------------------------------------------------------------------------
# The one backward pass that every method of the chapter uses
# --------------------------------------------------------------------------------------------

def _input_gradient(model, x, target, layer=None, channel=None, reduce="sum") -> torch.Tensor:
    """d objective / d x for a batch, on the model's device (model already frozen by the caller).

    The objective of image ``i`` is its class score ``logits[i, target[i]]`` or, with ``layer``
    and ``channel``, that filter's activation summed (``reduce="sum"``) or maximised
    (``reduce="max"``) over space. Images are independent in eval mode, so the gradient of the
    sum over the batch gives every image's own gradient in one backward pass.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        if layer is None:
            logits = models.scores(model(x))
            if target is None:
                target = logits.detach().argmax(1)
            score = logits.gather(1, torch.as_tensor(target, device=logits.device).view(-1, 1)).sum()
        else:
            act = hooks.forward_to(model, x, layer)  # the forward pass stops at the layer
            if act.ndim < 2:
                raise ValueError(f"layer {models.layer_name(model, layer)!r} gives {tuple(act.shape)}, no channels; "
                                 f"choose a conv layer, a ReLU or a block")
            if not 0 <= channel < act.shape[1]:
                raise ValueError(f"channel {channel} is out of range: layer "
                                 f"{models.layer_name(model, layer)!r} has channels 0..{act.shape[1] - 1}")
            a = act[:, channel].reshape(len(act), -1)  # [N, positions] (one position for a linear layer)
            score = (a.sum(1) if reduce == "sum" else a.amax(1)).sum()
        (grad,) = torch.autograd.grad(score, x)
    return grad


def _rule_gradient(model, x, target, rule, layer, channel, reduce, fn) -> torch.Tensor:
    x = _check_x(model, x, fn)
    checked = _check_objective(model, len(x), target, layer, channel, reduce, fn)
    with hooks.frozen(model):
        # (frozen restores the model; relu_functions only switches torch's ReLU functions)
        rules = hooks.relu_functions(rule) if rule != "plain" else contextlib.nullcontext()
        with rules:
            grad = _input_gradient(model, x, checked, layer, channel, reduce)
    return grad.cpu()


def vanilla(model: nn.Module, x: torch.Tensor, target=None, layer=None, channel=None,
            reduce: str = "sum") -> torch.Tensor:
    """Vanilla backpropagation: the gradient of the class score with respect to the input.

    Explained in chapter 02, Vanilla backpropagation.

    Returns ``[N, 3, H, W]`` (CPU, signed): ``d logits[i, target[i]] / d x[i]``, the *score*
    before the softmax. ``target``: a class index, one per image, or ``None`` for the
    predicted class (taken from the same forward pass). With ``layer`` (module or dotted name)
    and ``channel`` instead of a target, the objective is that filter's activation, summed over
    all positions (``reduce="sum"``, default) or its strongest position (``reduce="max"``);
    the forward pass stops at the layer.
    """
    return _rule_gradient(model, x, target, "plain", layer, channel, reduce, "vanilla")


def guided(model: nn.Module, x: torch.Tensor, target=None, layer=None, channel=None,
           reduce: str = "sum") -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015): at every ReLU, pass back only positive
    gradients where the forward input was positive.

    Explained in chapter 04, Guided backpropagation.

    Same arguments and output as :func:`vanilla`. The rule reaches *every* ReLU of the network,
    ``nn.ReLU`` modules (VGG, AlexNet, ResNet) and the functional ``F.relu`` calls of GoogLeNet
    and Inception v3 alike (``helpers.hooks.relu_rule``); the forward pass is unchanged.
    """
    return _rule_gradient(model, x, target, "guided", layer, channel, reduce, "guided")


def deconvnet(model: nn.Module, x: torch.Tensor, target=None, layer=None, channel=None,
              reduce: str = "sum") -> torch.Tensor:
    """The DeconvNet backward pass (Zeiler & Fergus 2014) as a gradient: at every ReLU, pass back
    the positive part of the signal coming down, whatever the forward input was.

    Explained in chapter 04, Guided backpropagation (and chapter 05, DeconvNet, which builds the
    reconstruction explicitly). Same arguments and output as :func:`vanilla`. Max-pooling
    routes the signal through the forward pass's switches, as in the paper.
    """
    return _rule_gradient(model, x, target, "deconvnet", layer, channel, reduce, "deconvnet")


def saliency(model: nn.Module, x: torch.Tensor, target=None) -> torch.Tensor:
    """Image-specific class saliency map (Simonyan, Vedaldi & Zisserman 2014).

    Explained in chapter 03, Saliency maps.

    ``M[i, h, w] = max_c |d logits[i, target[i]] / d x[i, c, h, w]|``, divided by its maximum so
    that every map lies in [0, 1]. Returns ``[N, H, W]`` on the CPU.
    """
    grad = vanilla(model, x, target)
    m = grad.abs().amax(dim=1)
    peak = m.flatten(1).amax(1).clamp_min(torch.finfo(m.dtype).tiny)
    return m / peak.view(-1, 1, 1)


# --------------------------------------------------------------------------------------------
# Baselines, gradient x image, integrated gradients
# --------------------------------------------------------------------------------------------

def _normalise(model, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> the model's normalised input space."""
    info = models.info(model)
    mean = torch.tensor(info.mean, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(info.std, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every channel, reflecting at the borders. Half precision on a CPU
    is blurred in float32 and returned in its own dtype (torch's CPU convolution in float16 took
    about a minute for one 224 x 224 image; in float32, milliseconds)."""
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        return _gaussian_blur(x.float(), sigma).to(x.dtype)
    radius = max(1, min(int(math.ceil(3 * sigma)), x.shape[-1] - 1, x.shape[-2] - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def make_baseline(model: nn.Module, x: torch.Tensor, kind="black", blur_sigma: float | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """A reference input x' for integrated gradients and gradient x image, in the model's input space.

    Explained in chapter 07, Integrated gradients.

    ``kind``: ``"black"`` (or ``None``): the black image, pixel value 0 in every channel. In the
    normalised space a model eats, that is ``(0 - mean) / std`` per channel, *not* the tensor 0
    (which is the mean colour, a dull grey). ``"blur"``: ``x`` blurred by a Gaussian of standard
    deviation ``blur_sigma`` pixels (default: the image side / 16): the colours and coarse
    shapes stay, edges and texture go. ``"noise"``: uniform random pixels in [0, 1] (normalised).
    A tensor: used as it is (in the normalised space), broadcast to ``x``. Returns a tensor like
    ``x`` (device, dtype).
    """
    fn = "make_baseline"
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{fn}: x must be a batch [N, 3, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{fn}: x must be a float tensor (normalised pixels), got {x.dtype}; "
                         f"make it with helpers.images.to_tensor(image, model)")
    if isinstance(kind, torch.Tensor):
        try:
            return kind.detach().to(device=x.device, dtype=x.dtype).expand_as(x)
        except RuntimeError:
            raise ValueError(f"{fn}: a baseline tensor must have the shape of x {tuple(x.shape)} or "
                             f"broadcast to it ([3, H, W], [1, 3, H, W]), got {tuple(kind.shape)}") from None
    if kind is None or kind == "black":
        return _normalise(model, torch.zeros_like(x))
    if kind == "noise":
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype,
                       device=generator.device if generator is not None else x.device)
        return _normalise(model, u.to(x.device))
    if kind == "blur":
        sigma = max(x.shape[-2:]) / 16 if blur_sigma is None else float(blur_sigma)
        if not sigma > 0:
            raise ValueError(f"{fn}: blur_sigma must be > 0 pixels, got {blur_sigma!r}")
        return _gaussian_blur(x.detach(), sigma)
    raise ValueError(f"{fn}: unknown baseline {kind!r}; accepted: None or 'black', 'blur', 'noise', "
                     f"or a tensor in the model's normalised input space")


def grad_x_image(model: nn.Module, x: torch.Tensor, target=None, baseline=None) -> torch.Tensor:
    """Gradient x image (Shrikumar et al. 2016): the gradient times the image, pixel by pixel.

    Explained in chapter 06, Gradient x image.

    Returns ``[N, 3, H, W]`` (CPU, signed): ``(x - x') * d logits[target] / d x``, where the
    reference ``x'`` is the black image (pixel value 0) by default, so the product is the
    pixel values times the gradient with respect to the pixels, whatever normalisation the
    model uses. ``baseline`` accepts what :func:`make_baseline` accepts (a tensor of zeros gives
    the naive ``x * grad`` of the normalised tensor). It equals one step of
    :func:`integrated_gradients`.
    """
    xd = _check_x(model, x, "grad_x_image")
    ref = make_baseline(model, xd, baseline)
    with models.made_from_checked_input():          # xd is checked: no second check in vanilla
        return vanilla(model, xd, target) * (xd - ref).cpu()


def integrated_gradients(model: nn.Module, x: torch.Tensor, target=None, baseline=None, steps: int = 50,
                         batch_size: int | None = None, progress: bool = True,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Integrated gradients (Sundararajan, Taly & Yan 2017).

    Explained in chapter 07, Integrated gradients.

    ``IG_i(x) = (x_i - x'_i) * 1/m * sum_{k=1..m} dF(x' + k/m (x - x'))/dx_i``: the right Riemann
    sum of the paper, with ``m = steps``. Returns ``[N, 3, H, W]`` (CPU, signed); by the
    completeness axiom its sum is close to ``F(x) - F(x')`` (the class score, before softmax).
    ``baseline`` x': ``None``/``"black"``, ``"blur"``, ``"noise"`` or a tensor (see
    :func:`make_baseline`). The ``N * steps`` path points are batched,
    ``batch_size`` of them per forward/backward pass (``None``: up to 8 on a CPU, fewer where
    a layer's output for the batch would pass 32 MB, e.g. 2 for VGG16 at 224 x 224; about
    2 ** 20 pixels a batch on a GPU); a progress bar shows when it takes more than two seconds.
    ``target=None`` explains the class predicted for ``x`` (one extra forward pass).
    """
    fn = "integrated_gradients"
    x = _check_x(model, x, fn)
    steps = models.positive_int(steps, f"{fn}: steps")
    bs = _batch_size(batch_size, model, x, fn)
    n = len(x)
    ref = make_baseline(model, x, baseline, generator=generator)
    delta = x - ref                                   # x - x': the path's direction
    with hooks.frozen(model):
        t = _targets_tensor(model, x, target, fn)
        alphas = torch.arange(1, steps + 1, device=x.device, dtype=x.dtype) / steps
        total = torch.zeros_like(x)
        with _progress(n * steps, progress, "integrated gradients") as bar:
            for start in range(0, n * steps, bs):
                j = torch.arange(start, min(start + bs, n * steps), device=x.device)
                i, k = j // steps, j % steps  # image, step of every path point in this batch
                points = ref[i] + alphas[k].view(-1, 1, 1, 1) * delta[i]   # x' + k/m (x - x')
                total.index_add_(0, i, _input_gradient(model, points, t[i]))
                bar.update(len(j))
    return (delta * total / steps).cpu()


# --------------------------------------------------------------------------------------------
# SmoothGrad
# --------------------------------------------------------------------------------------------

def smoothgrad(model: nn.Module, x: torch.Tensor, target=None, method=vanilla, samples: int = 50,
               noise: float = 0.15, batch_size: int | None = None, progress: bool = True,
               generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the average of ``method`` over noisy copies of the input.

    Explained in chapter 08, SmoothGrad.

    ``1/n * sum_{k=1..n} method(x + N(0, sigma^2))`` with ``n = samples`` and, per image,
    ``sigma = noise * (x.max() - x.min())``: the paper's noise level is the standard deviation
    as a fraction of the input's range (popular code passes ``sigma**2`` where the standard
    deviation is meant). ``method``: :func:`vanilla`, :func:`guided`, :func:`deconvnet`,
    :func:`grad_x_image`, :func:`integrated_gradients`, or any function
    ``method(model, x, target, **kwargs)`` returning ``[N, 3, H, W]``; ``kwargs`` go to it
    (e.g. ``steps=`` for integrated gradients). The noisy copies are batched, ``batch_size``
    per pass (a method that takes ``batch_size`` itself, like integrated gradients, gets all
    copies at once and batches them). ``target=None``: the class predicted for the clean ``x``
    (one extra forward pass). With ``layer=`` and ``channel=`` (for :func:`vanilla`,
    :func:`guided`, :func:`deconvnet`) the filter's activation is explained instead, and ``target``
    must be ``None``. ``noise=0`` gives exactly ``method``'s result.

    The ``samples`` noise images are drawn one at a time, in order, from ``generator`` (torch's
    default one if ``None``) and shared by the images of a batch, each scaled by its own
    ``sigma``: every image still averages ``samples`` independent draws, the noise is drawn once
    instead of once per image, and with the same seed an image gets the same map alone as in a
    batch.
    """
    fn = "smoothgrad"
    x = _check_x(model, x, fn)
    if not callable(method):
        raise ValueError(f"{fn}: method must be a function like gradients.vanilla, gradients.guided or "
                         f"gradients.integrated_gradients, got {method!r}")
    samples = models.positive_int(samples, f"{fn}: samples")
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not noise >= 0:
        raise ValueError(f"{fn}: noise is the standard deviation as a fraction of the input range, "
                         f"a number >= 0 (the paper uses 0.1 to 0.2), got {noise!r}")
    bs = _batch_size(batch_size, model, x, fn)
    n, dev = len(x), x.device
    if kwargs.get("layer") is not None:            # a filter's activation: no class to explain
        if target is not None:
            raise ValueError(f"{fn}: give either a target class, or a layer and a channel (the filter "
                             f"whose activation is explained), not both")
        t = None
    else:
        with hooks.frozen(model):
            t = _targets_tensor(model, x, target, fn).cpu()
    sigma = noise * (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)  # one std per image
    drawn: dict = {}  # noise sample k -> its image-sized draw, kept while a pass still needs it

    def draw() -> torch.Tensor:
        if generator is not None:
            return torch.randn(x.shape[1:], generator=generator, device=generator.device, dtype=x.dtype).to(dev)
        return torch.randn(x.shape[1:], device=dev, dtype=x.dtype)

    def noisy(j: torch.Tensor):
        """Copies ``j`` in sample-major order: copy j is image ``j % n`` plus noise sample ``j // n``."""
        k, i = j // n, j % n
        first, last = int(k[0]), int(k[-1])
        for kk in range(first, last + 1):
            if kk not in drawn:
                drawn[kk] = draw()
        eps = torch.stack([drawn[kk] for kk in range(first, last + 1)])[(k - first).to(dev)]
        for kk in [kk for kk in drawn if kk < last]:  # done: later passes start at sample `last`
            del drawn[kk]
        i_dev = i.to(dev)
        return x[i_dev] + sigma[i_dev] * eps, i

    params = inspect.signature(method).parameters
    if "batch_size" in params:  # the method batches its own work (integrated gradients)
        xs, i = noisy(torch.arange(n * samples))
        extra = {"progress": progress} if "progress" in params else {}
        with models.made_from_checked_input():     # large noise may pass the input limit: not an error
            maps = method(model, xs, None if t is None else t[i].tolist(), batch_size=bs, **extra, **kwargs)
        return maps.view(samples, n, *maps.shape[1:]).mean(0)
    total = None
    with _progress(n * samples, progress, "smoothgrad") as bar, models.made_from_checked_input():
        for start in range(0, n * samples, bs):
            xs, i = noisy(torch.arange(start, min(start + bs, n * samples)))
            maps = method(model, xs, None if t is None else t[i].tolist(), **kwargs).detach().cpu()
            if total is None:
                total = torch.zeros(n, *maps.shape[1:], dtype=maps.dtype)
            total.index_add_(0, i, maps)
            bar.update(len(i))
    return total / samples


# LRP lives in its own module (explained in chapter 09); it is also offered here, next to the other
# gradient methods. Imported last: helpers/lrp.py does not import this module.
from .lrp import lrp  # noqa: E402

__all__ += ["lrp"]
