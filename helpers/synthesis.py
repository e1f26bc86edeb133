"""Synthesis: images made by optimising the input of a classifier.

Explained in chapter 19, Class images (:func:`class_image`), chapter 20, Fooling images
(:func:`fooling_image`, :func:`evolve`) and chapter 21, Disguised images (:func:`disguise`,
:func:`pgd`, :func:`distortion`, :func:`quantize`, :func:`jpeg`, :func:`blur`).

Conventions shared by every function here:

* An image is the model's normalised input ``x = (pixels - mean) / std`` with ``pixels`` in
  [0, 1] (mean and std from ``models.info(model)``). Every image a function returns is *valid*:
  de-normalised, its pixels lie in [0, 1].
* Perturbation budgets (``epsilon``, ``alpha``, ``step_size``) are in [0, 1] pixel units
  (8/255 = eight grey levels of an 8-bit image); the projection is done in pixel space.
* The model is left exactly as it was (``hooks.frozen``): its parameters never get a gradient,
  the input does (``torch.autograd.grad``).
* A class index out of range raises ``ValueError`` naming the valid range.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import features, hooks, models

__all__ = ["class_image", "fooling_image", "evolve", "disguise", "pgd", "distortion", "quantize", "jpeg", "blur",
           "gaussian_blur", "pixel_range", "to_pixels", "from_pixels", "REGULARIZATIONS"]

#: accepted values of ``class_image(..., regularization=...)``
REGULARIZATIONS = (None, "l1", "l2")


# ------------------------------------------------------------------------------------ plumbing
def _stats(model: nn.Module, device=None):
    info = models.info(model)
    device = device if device is not None else models.device(model)
    mean = torch.tensor(info.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, std


def to_pixels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Normalised input -> pixels in [0, 1] units (``x * std + mean``), same device as ``x``."""
    mean, std = _stats(model, x.device)
    return x * std + mean


def from_pixels(model: nn.Module, p: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] units -> the model's normalised input (``(p - mean) / std``)."""
    mean, std = _stats(model, p.device)
    return (p - mean) / std


def pixel_range(model: nn.Module, device=None):
    """``(lo, hi)``: the normalised values of pixel 0 and pixel 1, per channel ``[1, 3, 1, 1]``.

    ``x.clamp(lo, hi)`` keeps an image valid (its pixels inside [0, 1]).
    """
    mean, std = _stats(model, device)
    return (0 - mean) / std, (1 - mean) / std


def _size(model: nn.Module, size) -> int:
    size = int(models.info(model).input_size if size is None else size)
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    return size


def _nonneg(value, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number >= 0, got {value!r}") from None
    if not v >= 0 or math.isinf(v):
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return v


def _targets(model: nn.Module, target):
    """(list of ints, whether a single int was given)."""
    single = not isinstance(target, (list, tuple, torch.Tensor, np.ndarray)) or (
        isinstance(target, (torch.Tensor, np.ndarray)) and np.ndim(target) == 0)
    if isinstance(target, np.ndarray):
        target = target.tolist()
    if single:
        return models.check_target(model, int(target) if hasattr(target, "__index__") else target, 1), True
    ts = models.check_target(model, list(target))
    if not ts:
        raise ValueError("got an empty list of target classes; give a class index or a list of them")
    return ts, False


def _check_shape(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a normalised image tensor [N, 3, H, W], got {type(x).__name__}")
    models.check_images(x)


def _check_x(model: nn.Module, x) -> torch.Tensor:
    _check_shape(x)
    p = to_pixels(model, x.detach().float())
    lo, hi = float(p.min()), float(p.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"x is not a valid normalised image of {models.info(model).name}: its pixels "
                         f"span [{lo:.3f}, {hi:.3f}], accepted [0, 1] (make x with images.to_tensor(..., model))")
    return x


def _budget(value, what: str) -> float:
    v = _nonneg(value, what)
    if not 0 < v <= 1:
        raise ValueError(f"{what} is in [0, 1] pixel units and must lie in (0, 1], got {value!r} "
                         f"(8 grey levels of an 8-bit image are 8/255 = {8 / 255:.4f})")
    return v


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False)


def _gaussian_kernel(sigma: float, device) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur every channel of a batch ``[N, C, H, W]`` with a Gaussian of std ``sigma`` pixels.

    Separable convolution with reflected borders (the image keeps its size). ``sigma = 0``
    returns ``x`` unchanged. Used as Yosinski et al.'s blur regulariser (chapter 19).
    """
    sigma = _nonneg(sigma, "sigma")
    if sigma == 0:
        return x
    k = _gaussian_kernel(sigma, x.device).to(x.dtype)
    r = (k.numel() - 1) // 2
    n, c, h, w = x.shape
    if r >= min(h, w):
        raise ValueError(f"sigma {sigma} is too large for a {h} x {w} image")
    y = F.pad(x.reshape(n * c, 1, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def _per_image_mean_abs(g: torch.Tensor) -> torch.Tensor:
    return g.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)


# ------------------------------------------------------------------------------ class images
def class_image(model: nn.Module, target, steps: int = 100, regularization: str | None = None,
                weight: float | None = None, blur: float = 0.0, blur_every: int = 4, jitter: int = 0,
                clip: float = 0.0, lr: float = 0.1, start: str = "zeros", size: int | None = None,
                seed: int = 0, progress: bool = True, return_info: bool = False):
    """An image that maximises a class *score* (Simonyan, Vedaldi & Zisserman 2014).

    Explained in chapter 19, Class images.

    Gradient ascent on the input ``x`` (the model's normalised input; ``x = 0`` is the mean
    image) of

        J(x) = S_c(x) - weight * R(x),   R = 0 (None), ||x||_1 ("l1") or ||x||_2^2 ("l2"),

    where ``S_c`` is the score (logit) of class ``c = target``, not its softmax probability.
    Each step

        x <- x + lr * ( g / mean|g| - weight * dR/dx ),   g = dS_c/dx

    (the score's gradient is rescaled per image so that one ``lr`` and one ``weight`` suit
    every network), then the image priors, each off by default: ``jitter`` (Mordvintsev et
    al. 2015, DeepDream: the forward pass sees ``x`` shifted by up to ``jitter`` pixels, drawn
    at random each step) and two of Yosinski et al. (2015): ``blur`` (every ``blur_every``
    steps, a Gaussian blur of std ``blur`` pixels) and ``clip`` (the ``clip`` percent of
    pixels with the smallest norm across colour channels are set to 0, the mean colour).
    Finally ``x`` is clamped so its pixels stay in [0, 1].

    ``target`` is a class index or a list (one image per class, optimised together).
    ``start``: ``"zeros"`` (the mean image, as in the paper) or ``"random"`` (uniform pixel
    noise, image i drawn from ``seed + i``, so it does not depend on the rest of the batch). Returns ``x`` on the CPU, ``[1, 3, S, S]`` (``[N, 3, S, S]`` for
    N classes) with ``S = size`` (default the model's input size). With ``return_info=True``
    returns ``(x, info)``: ``info["score"]`` and ``info["probability"]`` are ``[steps, N]``
    tensors of the target's score and softmax probability at each step (as the jittered
    forward pass saw them), ``info["final_probability"]`` ``[N]`` that of the returned image.
    """
    targets, _ = _targets(model, target)
    steps = models.positive_int(steps, "steps")
    if regularization not in REGULARIZATIONS:
        raise ValueError(f"unknown regularization {regularization!r}; accepted: None, 'l1', 'l2'")
    if weight is None:
        weight = {None: 0.0, "l1": 0.3, "l2": 0.1}[regularization]
    weight = _nonneg(weight, "weight")
    blur = _nonneg(blur, "blur")
    blur_every = models.positive_int(blur_every, "blur_every")
    jitter = int(_nonneg(jitter, "jitter"))
    clip = _nonneg(clip, "clip")
    if clip >= 100:
        raise ValueError(f"clip is a percentage of pixels in [0, 100), got {clip}")
    lr = _nonneg(lr, "lr")
    if start not in ("zeros", "random"):
        raise ValueError(f"unknown start {start!r}; accepted: 'zeros' (the mean image) or 'random'")
    size = _size(model, size)
    n = len(targets)
    device = models.device(model)
    gen = torch.Generator().manual_seed(int(seed))
    lo, hi = pixel_range(model, device)
    if start == "zeros":
        x = torch.zeros(n, 3, size, size, device=device)
    else:
        x = from_pixels(model, features.seeded_noise(torch.rand, n, (3, size, size), seed).to(device))
    rows = torch.arange(n, device=device)
    t = torch.tensor(targets, device=device)
    scores, probs = [], []
    with hooks.frozen(model):
        bar = _bar(steps, f"class image ({models.info(model).name})", progress)
        for step in range(steps):
            x = x.detach().requires_grad_(True)
            if jitter:
                dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
                x_in = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            else:
                x_in = x
            logits = model(x_in)
            score = logits[rows, t]
            (g,) = torch.autograd.grad(score.sum(), x)
            with torch.no_grad():
                scores.append(score.detach().cpu())
                probs.append(torch.softmax(logits.detach(), 1)[rows, t].cpu())
                step_dir = g / _per_image_mean_abs(g)
                if regularization == "l2":
                    step_dir = step_dir - weight * 2 * x
                elif regularization == "l1":
                    step_dir = step_dir - weight * torch.sign(x)
                x = x + lr * step_dir
                if blur and (step + 1) % blur_every == 0:
                    x = gaussian_blur(x, blur)
                if clip:
                    norm = x.norm(dim=1, keepdim=True)                      # [N, 1, H, W]
                    cut = torch.quantile(norm.flatten(1), clip / 100, dim=1).view(n, 1, 1, 1)
                    x = x * (norm >= cut)
                x = torch.max(torch.min(x, hi), lo)
            bar.update(1)
            bar.set_postfix(p=f"{float(probs[-1].min()):.3f}")
        bar.close()
        x = x.detach()
        if not return_info:
            return x.cpu()
        with torch.no_grad():
            final = torch.softmax(model(x), 1)[rows, t].cpu()
    info = {"score": torch.stack(scores), "probability": torch.stack(probs), "final_probability": final,
            "targets": targets}
    return x.cpu(), info


# ----------------------------------------------------------------------------- fooling images
def fooling_image(model: nn.Module, target, confidence: float = 0.99, max_steps: int = 200,
                  step_size: float = 0.02, size: int | None = None, seed: int = 0, progress: bool = True,
                  return_info: bool = False):
    """An image of noise that the model calls ``target`` with probability >= ``confidence``.

    Explained in chapter 20, Fooling images (Nguyen, Yosinski & Clune 2015, gradient ascent).

    Starts from uniform random pixel noise (image i drawn from ``seed + i``: a batch gives each
    image what a call for it alone with that seed gives) and takes gradient steps on
    the log softmax probability of the target,

        p <- clamp(p + step_size * g / mean|g|, 0, 1),   g = d log softmax(f(x))_c / dp,

    in pixel units ``p`` (so ``step_size`` is in [0, 1] pixel units), until the model gives the
    target at least ``confidence``, or ``max_steps`` steps. The stopping test is made before
    each step, so a returned image that reached the goal has ``softmax >= confidence`` exactly
    as the model computes it. ``target`` is a class index or a list (one image per class,
    optimised together; each stops on its own). Returns ``x`` (normalised, CPU, ``[N, 3, S,
    S]``); with ``return_info=True`` ``(x, info)`` where ``info["steps"]`` is the number of
    steps taken, ``info["probability"]`` the final probability and ``info["reached"]`` whether
    the confidence was reached (ints/floats/bools for one target, lists for a list).
    """
    targets, single = _targets(model, target)
    confidence = _nonneg(confidence, "confidence")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence is a probability in (0, 1), got {confidence}")
    max_steps = int(_nonneg(max_steps, "max_steps"))
    step_size = _budget(step_size, "step_size")
    size = _size(model, size)
    n = len(targets)
    device = models.device(model)
    p = features.seeded_noise(torch.rand, n, (3, size, size), seed).to(device)    # image i from seed + i
    t = torch.tensor(targets, device=device)
    steps = torch.zeros(n, dtype=torch.long)
    prob = torch.zeros(n)
    done = torch.zeros(n, dtype=torch.bool)
    with hooks.frozen(model):
        bar = _bar(max_steps, f"fooling ({models.info(model).name})", progress)
        for step in range(max_steps + 1):
            todo = (~done).nonzero().flatten()          # only the images still below the goal
            if len(todo) == 0:
                break
            idx = todo.to(device)
            pa = p[idx].detach().requires_grad_(True)
            logp = torch.log_softmax(model(from_pixels(model, pa)), 1)[torch.arange(len(idx), device=device), t[idx]]
            prob[todo] = logp.detach().exp().cpu()
            reached = prob[todo] >= confidence
            done[todo[reached]] = True
            if step == max_steps or bool(reached.all()):
                break
            (g,) = torch.autograd.grad(logp.sum(), pa)
            with torch.no_grad():
                keep = (~reached).to(device)
                moved = pa[keep] + step_size * g[keep] / _per_image_mean_abs(g[keep])
                p[idx[keep]] = moved.clamp(0, 1)
            steps[todo[~reached]] += 1
            bar.update(1)
            bar.set_postfix(reached=f"{int(done.sum())}/{n}", p_min=f"{float(prob.min()):.3f}")
        bar.close()
    x = from_pixels(model, p.detach()).cpu()
    if not return_info:
        return x
    reached = (prob >= confidence).tolist()
    info = {"steps": steps.tolist(), "probability": prob.tolist(), "reached": reached, "targets": targets}
    if single:
        info = {k: (v[0] if isinstance(v, list) else v) for k, v in info.items()}
    return x, info


def _polynomial_mutation(v: torch.Tensor, eta: float, gen: torch.Generator) -> torch.Tensor:
    """Deb's polynomial mutation of values in [0, 1] (bounds 0 and 1): a small change, mostly."""
    u = torch.rand(v.shape, generator=gen)
    low = u < 0.5
    delta = torch.where(low, (2 * u).pow(1 / (eta + 1)) - 1, 1 - (2 * (1 - u)).pow(1 / (eta + 1)))
    return (v + delta.to(v.device)).clamp(0, 1)


def evolve(model: nn.Module, targets=None, generations: int = 200, offspring: int = 16,
           mutation_rate: float = 0.1, eta: float = 15.0, size: int | None = None, seed: int = 0,
           batch_size: int = 64, progress: bool = True):
    """Fooling images by evolution: MAP-Elites with a direct encoding (Nguyen et al. 2015).

    Explained in chapter 20, Fooling images.

    The genome is the image itself: every pixel value in [0, 1], first uniform noise. The
    archive keeps one elite per target class, the image with the highest softmax probability
    for that class found so far. Each generation, ``offspring`` parents are drawn from the
    archive at random; each pixel value of a child is mutated with probability
    ``mutation_rate`` by polynomial mutation of strength ``eta``; the children are scored in
    one forward pass (no gradient, batched by ``batch_size``), and a child replaces the elite
    of every class for which it beats it. No gradient is used anywhere.

    ``targets``: class indices (default: every class of a model with at most 20 classes, else
    required). Returns ``(x, info)``: ``x`` the elites, normalised, CPU, ``[K, 3, S, S]`` in the
    order of ``targets``; ``info["probability"]`` ``[K]`` their probabilities,
    ``info["history"]`` ``[generations + 1, K]`` the elites' probabilities over time.
    """
    n_classes = len(models.info(model).classes)
    if targets is None:
        if n_classes > 20:
            raise ValueError(f"{models.info(model).name} has {n_classes} classes: give the target classes "
                             f"to evolve, e.g. targets=[1, 2, 3] (indices 0..{n_classes - 1})")
        targets = list(range(n_classes))
    targets, _ = _targets(model, targets)
    generations = int(_nonneg(generations, "generations"))
    offspring = models.positive_int(offspring, "offspring")
    batch_size = models.positive_int(batch_size, "batch_size")
    mutation_rate = _nonneg(mutation_rate, "mutation_rate")
    if not 0 < mutation_rate <= 1:
        raise ValueError(f"mutation_rate is a probability in (0, 1], got {mutation_rate}")
    eta = _nonneg(eta, "eta")
    size = _size(model, size)
    device = models.device(model)
    gen = torch.Generator().manual_seed(int(seed))
    k = len(targets)
    t = torch.tensor(targets)

    def fitness(pixels):  # [B, 3, S, S] in [0, 1] -> probabilities of the targets [B, K]
        out = []
        for i in range(0, len(pixels), batch_size):
            xb = from_pixels(model, pixels[i:i + batch_size].to(device))
            out.append(torch.softmax(model(xb), 1)[:, t.to(device)].cpu())
        return torch.cat(out)

    with hooks.frozen(model), torch.no_grad():
        elites = torch.rand(k, 3, size, size, generator=gen)
        best = fitness(elites).diagonal().clone()
        history = [best.clone()]
        bar = _bar(generations, f"evolution ({models.info(model).name})", progress)
        for _ in range(generations):
            parents = torch.randint(0, k, (offspring,), generator=gen)
            children = elites[parents].clone()
            where = torch.rand(children.shape, generator=gen) < mutation_rate
            children[where] = _polynomial_mutation(children[where], eta, gen)
            f = fitness(children)                     # [offspring, K]
            top, idx = f.max(0)
            better = top > best
            elites[better] = children[idx[better]]
            best[better] = top[better]
            history.append(best.clone())
            bar.update(1)
            bar.set_postfix(best=f"{float(best.max()):.3f}", worst=f"{float(best.min()):.3f}")
        bar.close()
    x = from_pixels(model, elites)
    return x, {"probability": best, "history": torch.stack(history), "targets": targets}


# ---------------------------------------------------------------------------- disguised images
def _attack_setup(model, x, target, epsilon, what="epsilon"):
    x = _check_x(model, x)
    targets = models.check_target(model, target, x.shape[0])
    epsilon = _budget(epsilon, what)
    device = models.device(model)
    p0 = to_pixels(model, x.detach().float().to(device)).clamp(0, 1)
    return x, targets, epsilon, device, p0


def _targeted_loss(model, p, t):
    """Cross-entropy of the target for each image (the quantity the attack lowers) and the logits."""
    logits = model(from_pixels(model, p))
    return F.cross_entropy(logits, t, reduction="none"), logits


def _project(p, p0, epsilon):
    """Into the L-infinity ball of radius epsilon around p0, then into the valid range [0, 1]."""
    return torch.min(torch.max(p, p0 - epsilon), p0 + epsilon).clamp(0, 1)


def disguise(model: nn.Module, x: torch.Tensor, target, epsilon: float = 8 / 255, steps: int = 50,
             alpha: float = 1 / 255, margin: float = 0.0, progress: bool = False, return_info: bool = False):
    """Disguise a real image as another class with a perturbation of at most ``epsilon``.

    Explained in chapter 21, Disguised images.

    Iterative targeted gradient-sign steps of size ``alpha``, in [0, 1] pixel units ``p``,
    starting from the image itself (no random start):

        p_{t+1} = Proj( p_t - alpha * sign(d CE(f(p_t), target) / dp) ),

    where ``Proj`` clips to the L-infinity ball ``|p - p_0| <= epsilon`` and to [0, 1]. Each
    image stops **as soon as** the model predicts the target (with ``margin > 0``: as soon as
    the target's logit beats every other logit by ``margin``), or after ``steps`` steps. The
    test is made before each step, so a success is a prediction of the model on the returned
    image. With the defaults (``alpha = 1/255``) every pixel stays on the 8-bit grid of the
    original, so saving the image as PNG changes nothing.

    ``x``: normalised batch ``[N, 3, H, W]`` of valid images; ``target``: one class or one per
    image. Returns a tensor like ``x`` (same shape, on ``x``'s device); with
    ``return_info=True`` ``(x_adv, info)`` with per-image lists ``info["success"]``,
    ``info["steps"]`` and ``info["linf"]``, ``info["l2"]``, ``info["psnr"]`` (see
    :func:`distortion`).
    """
    x, targets, epsilon, device, p0 = _attack_setup(model, x, target, epsilon)
    steps = int(_nonneg(steps, "steps"))
    alpha = _budget(alpha, "alpha")
    margin = _nonneg(margin, "margin")
    n = x.shape[0]
    t = torch.tensor(targets, device=device)
    p = p0.clone()
    done = torch.zeros(n, dtype=torch.bool)
    taken = torch.zeros(n, dtype=torch.long)
    with hooks.frozen(model):
        bar = _bar(steps, f"disguise ({models.info(model).name})", progress)
        for step in range(steps + 1):
            todo = (~done).nonzero().flatten()
            if len(todo) == 0:
                break
            idx = todo.to(device)
            pa = p[idx].detach().requires_grad_(True)
            loss, logits = _targeted_loss(model, pa, t[idx])
            others = logits.detach().clone()
            others[torch.arange(len(idx), device=device), t[idx]] = float("-inf")
            gap = logits.detach()[torch.arange(len(idx), device=device), t[idx]] - others.max(1).values
            hit = (gap > margin) if margin > 0 else (logits.detach().argmax(1) == t[idx])
            done[todo[hit.cpu()]] = True
            if step == steps or bool(hit.all()):
                break
            (g,) = torch.autograd.grad(loss.sum(), pa)
            with torch.no_grad():
                keep = ~hit
                moved = _project(pa[keep] - alpha * g[keep].sign(), p0[idx[keep]], epsilon)
                p[idx[keep]] = moved
            taken[todo[keep.cpu()]] += 1
            bar.update(1)
            bar.set_postfix(done=f"{int(done.sum())}/{n}")
        bar.close()
    x_adv = from_pixels(model, p.detach()).to(x.device, x.dtype)
    if not return_info:
        return x_adv
    d = distortion(model, x, x_adv)
    info = {"success": done.tolist(), "steps": taken.tolist(), "targets": targets,
            **{k: v.tolist() for k, v in d.items()}}
    return x_adv, info


def pgd(model: nn.Module, x: torch.Tensor, target, epsilon: float = 8 / 255, steps: int = 10,
        step_size: float = 2 / 255, random_start: bool = True, seed: int = 0, progress: bool = False,
        return_info: bool = False):
    """Targeted projected gradient descent in an L-infinity ball (Madry et al. 2018).

    Explained in chapter 21, Disguised images.

    In [0, 1] pixel units ``p``: start at a uniformly random point of the ball
    ``|p - p_0| <= epsilon`` (``random_start``, drawn from ``seed``; else at ``p_0``), then
    ``steps`` times

        p <- Proj( p - step_size * sign(d CE(f(p), target) / dp) ),

    with ``Proj`` the clip to the ball and to [0, 1]. Unlike :func:`disguise` it never stops
    early: it spends the whole budget making the target as likely as it can, and returns the
    last iterate. Madry et al. state the untargeted attack (ascend the loss of the true
    label); this is its targeted form (descend the loss of the target). Returns a tensor like
    ``x``; with ``return_info=True`` ``(x_adv, info)`` as for :func:`disguise` (``steps`` is the
    budget used).
    """
    x, targets, epsilon, device, p0 = _attack_setup(model, x, target, epsilon)
    steps = int(_nonneg(steps, "steps"))
    step_size = _budget(step_size, "step_size")
    n = x.shape[0]
    t = torch.tensor(targets, device=device)
    if random_start:
        gen = torch.Generator().manual_seed(int(seed))
        noise = (torch.rand(p0.shape, generator=gen) * 2 - 1).to(device) * epsilon
        p = _project(p0 + noise, p0, epsilon)
    else:
        p = p0.clone()
    with hooks.frozen(model):
        bar = _bar(steps, f"PGD ({models.info(model).name})", progress)
        for _ in range(steps):
            p = p.detach().requires_grad_(True)
            loss, _ = _targeted_loss(model, p, t)
            (g,) = torch.autograd.grad(loss.sum(), p)
            with torch.no_grad():
                p = _project(p - step_size * g.sign(), p0, epsilon)
            bar.update(1)
        bar.close()
        with torch.no_grad():
            pred = model(from_pixels(model, p.detach())).argmax(1).cpu()
    x_adv = from_pixels(model, p.detach()).to(x.device, x.dtype)
    if not return_info:
        return x_adv
    d = distortion(model, x, x_adv)
    info = {"success": (pred == torch.tensor(targets)).tolist(), "steps": [steps] * n, "targets": targets,
            **{k: v.tolist() for k, v in d.items()}}
    return x_adv, info


def distortion(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> dict:
    """Size of a perturbation in [0, 1] pixel units, per image: L-infinity, L2 and PSNR.

    Explained in chapter 21, Disguised images. ``linf = max |p' - p|``, ``l2 = ||p' - p||_2``
    over all ``3 H W`` values, ``psnr = 10 log10(1 / mean((p' - p)^2))`` in dB (infinite for
    identical images). Returns a dict of CPU tensors ``[N]``.
    """
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
    d = (to_pixels(model, x_adv.detach().float().cpu()) - to_pixels(model, x.detach().float().cpu())).flatten(1)
    mse = d.pow(2).mean(1)
    return {"linf": d.abs().max(1).values, "l2": d.norm(dim=1),
            "psnr": torch.where(mse > 0, -10 * torch.log10(mse.clamp_min(1e-30)), torch.full_like(mse, math.inf))}


# ------------------------------------------------------------------ what a saved image goes through
def _to_uint8(model, x) -> np.ndarray:
    _check_shape(x)               # (pixels a little out of range are clipped, as saving clips them)
    p = to_pixels(model, x.detach().float().cpu()).clamp(0, 1)
    return (p * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _from_uint8(model, a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    p = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 255
    return from_pixels(model, p).to(like.device, like.dtype)


def quantize(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` rounded to 8-bit pixels (what saving it as PNG keeps), normalised again.

    Explained in chapter 21, Disguised images.
    """
    return _from_uint8(model, _to_uint8(model, x), x)


def jpeg(model: nn.Module, x: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """Each image of ``x`` saved as JPEG at ``quality`` (OpenCV) and read back, normalised again.

    Explained in chapter 21, Disguised images (does the disguise survive compression?).
    """
    import cv2

    quality = int(quality)
    if not 0 <= quality <= 100:
        raise ValueError(f"JPEG quality is in 0..100, got {quality}")
    out = []
    for img in _to_uint8(model, x):
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
            raise RuntimeError("OpenCV could not encode the image as JPEG")
        out.append(cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return _from_uint8(model, np.stack(out), x)


def blur(model: nn.Module, x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Each image of ``x`` as 8-bit pixels blurred by a Gaussian of std ``sigma`` pixels (OpenCV).

    Explained in chapter 21, Disguised images (does the disguise survive a small blur?).
    """
    import cv2

    sigma = _nonneg(sigma, "sigma")
    imgs = _to_uint8(model, x)
    if sigma > 0:
        imgs = np.stack([cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma,
                                          borderType=cv2.BORDER_REFLECT_101) for img in imgs])
    return _from_uint8(model, imgs, x)
