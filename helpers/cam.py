"""Class activation maps: where in the image a convolutional layer sees a class.

Explained in chapter 10 (CAM), 11 (Grad-CAM), 12 (Guided Grad-CAM), 13 (Grad-CAM++),
14 (Score-CAM) and 15 (LayerCAM).

Every method here combines the feature maps ``A`` (``[N, K, h, w]``) of one layer with one
weight per channel (or per element) and returns a heatmap ``[M, H, W]`` on the CPU: scaled to
[0, 1] and upsampled bilinearly to the input's resolution, one map per image and target.
Guided Grad-CAM is an input-space map and comes back signed, ``[M, 3, H, W]``.

Conventions of every function:

* ``x`` is a normalised batch ``[N, 3, H, W]`` (``images.to_tensor``); ``target`` is a class
  index, one per image, or, for a single image, a list of classes (one map per class, all from
  the same forward pass).
* ``layer`` is a dotted name (``"features.29"``, ``"layer4"``, ``"inception5b"``) or a module;
  ``None`` means ``models.last_conv_layer(model)``. A layer that runs more than once per
  forward pass (ResNet's shared ``relu`` inside a block) raises ``ValueError``.
* The forward pass builds no graph before the layer (its output is made a leaf) and the
  backward pass stops at the layer: only the part of the network after the layer is
  differentiated, never the weights. Grad-CAM's backward pass stops earlier still where only
  pooling lies between the layer and a linear layer (its weights need only the gradient's
  spatial sums; see :func:`grad_cam`).
* The model is left exactly as it was (hooks, ``inplace`` flags, ``requires_grad``, train/eval
  mode), also after an exception.
"""
from __future__ import annotations

import contextlib
import functools
import math
import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import hooks, models

__all__ = [
    "cam", "grad_cam", "guided_grad_cam", "grad_cam_pp", "score_cam", "layer_cam",
    "cam_map", "grad_cam_map", "grad_cam_pp_map", "layer_cam_map", "score_cam_masks", "score_cam_weights",
    "gap_classifier", "fuse", "rescaled_for_fusion", "upsample", "to_heatmap", "Cached", "timings",
]


# ----------------------------------------------------------------------------- small helpers
def _input(model: nn.Module, x) -> torch.Tensor:
    """The normalised batch on the model's device and in its dtype, detached (no graph to the caller's tensor)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a normalised batch of images, a tensor [N, 3, H, W] "
                         f"(make it with images.to_tensor(image, model)); got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[0] < 1:
        raise ValueError(f"x must be a normalised batch of images [N, 3, H, W] with N >= 1 "
                         f"(images.to_tensor(image, model) gives [1, 3, H, W]); got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor (normalised pixels), got dtype {x.dtype}")
    return models.as_input(model, x)


def _plan(model: nn.Module, x: torch.Tensor, target):
    """Which image and which class each output map is for: two lists of M ints (image, class).

    ``target`` is an int (every image), one class per image, or, for a single image, a list
    of any number of classes (one map per class).
    """
    n = x.shape[0]
    several = isinstance(target, (list, tuple)) or (isinstance(target, (torch.Tensor, np.ndarray)) and target.ndim > 0)
    if n == 1 and several:
        classes = models.check_target(model, target)
        if not classes:
            raise ValueError("target is an empty list; give at least one class index")
        image = [0] * len(classes)
    else:
        classes = models.check_target(model, target, n)
        image = list(range(n))
    return image, classes


def _per_map(t: torch.Tensor, image: list) -> torch.Tensor:
    """``t[image]``: the rows of ``t`` (one per image) for each output map; ``t`` itself, not a
    copy, when every image has one map, in order."""
    return t if image == list(range(t.shape[0])) else t[image]


def _layer_list(model: nn.Module, layer):
    """(modules, single): ``layer`` may be one layer or a list of layers (``None``: the last conv layer)."""
    single = not isinstance(layer, (list, tuple))
    layers = [layer] if single else list(layer)
    if not layers:
        raise ValueError("layer is an empty list; give a layer name or module, or a list of them")
    modules = [models.layer(model, models.last_conv_layer(model) if entry is None else entry) for entry in layers]
    return modules, single


def _one_layer(model: nn.Module, layer, fn: str) -> nn.Module:
    """The module of ``layer`` for the methods that take one layer (a list raises ``ValueError``)."""
    modules, single = _layer_list(model, layer)
    if not single:
        raise ValueError(f"{fn} takes one layer, got a list of {len(modules)}; call it once per layer")
    return modules[0]


def _logits(out, model) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ValueError(f"{models.info(model).name} must return class scores [N, classes]; "
                         f"it returned {type(out).__name__}")
    return out


@functools.lru_cache(maxsize=32)
def _linear_weights(n: int, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[size, n]``: row i holds the weights of the n samples in output sample i of 1-D linear
    interpolation from n to ``size`` samples (torch's rule, ``align_corners=False``).

    Made by interpolating the identity (each input sample alone), so it is torch's own rule, not a
    re-derivation. Bilinear upsampling is this rule along the rows, then along the columns.
    """
    # kept for later calls: made outside inference mode and without a graph, so that any call may use it
    with torch.inference_mode(False), torch.no_grad():
        eye = torch.eye(n, dtype=dtype, device=device)[:, None, :]       # n signals, one per sample
        return F.interpolate(eye, size=size, mode="linear", align_corners=False)[:, 0].T.contiguous()


@functools.lru_cache(maxsize=32)
def _bilinear_weights(h: int, w: int, H: int, W: int, dtype: torch.dtype, device: torch.device):
    """``(W_rows [H, h], W_cols^T [w, W])`` for :func:`upsample`, kept as one pair (one lookup
    per call, and the transposed matrix already laid out for the product)."""
    with torch.inference_mode(False), torch.no_grad():
        return _linear_weights(h, H, dtype, device), _linear_weights(w, W, dtype, device).T.contiguous()


def upsample(m: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resizing of maps ``[M, h, w]`` to ``size`` = (H, W) (``align_corners=False``).

    The same as ``F.interpolate(m[:, None], size, mode="bilinear")[:, 0]`` (within float
    rounding, about 1e-7 of the map's range), computed as two matrix products,
    ``W_rows @ m @ W_cols^T``: bilinear interpolation is separable. On a CPU this is about twice as
    fast for the small maps of the last conv layers (16 x 16 -> 128 x 128: 16 us instead of 36),
    which counts when the explorer re-targets a class. Explained in chapter 10, CAM.
    """
    H, W = int(size[0]), int(size[1])
    h, w = m.shape[-2:]
    if h == H and w == W:
        return m.clone()
    rows, cols_t = _bilinear_weights(h, w, H, W, m.dtype, m.device)       # [H, h], [w, W]
    if m.shape[0] == 1:                        # one map: two plain matrix products, no batching
        return (rows @ m[0] @ cols_t)[None]
    return rows @ m @ cols_t


_TINY = torch.finfo(torch.float32).tiny


def to_heatmap(m: torch.Tensor, size, signed: bool = False) -> torch.Tensor:
    """Raw maps ``[M, h, w]`` -> ``[M, H, W]`` in [0, 1] at ``size`` (bilinear upsampling), on the CPU.

    Maps that are zero or positive (after a ReLU) are divided by their maximum, so zero stays
    "no evidence" (a map zero everywhere becomes all zeros); ``signed`` maps (CAM) are scaled by
    min-max, and a constant signed map becomes all zeros. Explained in chapter 10, CAM.
    """
    if m.requires_grad:                        # each step only where needed: a step that changes
        m = m.detach()                         # nothing still costs a call, and this runs on every map
    if m.dtype != torch.float32:
        m = m.float()
    if signed:     # shifted before upsampling: a constant map is then exactly 0, not upsampling's rounding
        m = m - m.amin(dim=(1, 2), keepdim=True)   # (about 1e-7) blown up to [0, 1] by the min-max
    up = upsample(m, size)
    hi = up.amax(dim=(1, 2), keepdim=True)
    if signed:
        lo = up.amin(dim=(1, 2), keepdim=True)
        up, hi = up - lo, hi - lo
    # a constant map (hi == 0 after the shift) becomes zeros: 0 * (1 / tiny) = 0
    up = up.div_(hi.clamp_min(_TINY)).clamp_(0, 1)
    return up if up.device.type == "cpu" else up.cpu()


@contextlib.contextmanager
def _captured(model: nn.Module, modules, leaf: bool = False, graph: bool = True):
    """``hooks.capture`` of each layer, inside ``hooks.frozen`` (parameters frozen, eval mode).

    One snapshot of the model (the one ``frozen`` takes and restores on exit, normally or through
    an exception) instead of one per context keeps Grad-CAM close to a forward pass in cost. With
    ``leaf=True`` the first requested layer that runs hands on a copy of a new leaf ``A`` (see
    ``hooks.capture``): the forward pass before it builds no graph, and later requested layers
    stay in the graph, so one backward pass gives every layer's gradient. ``graph=False``, for
    callers that run the model under ``torch.no_grad()``: ``hooks.evaluated`` instead of
    ``frozen``, which takes no snapshot where the model is in eval mode (the hooks added here are
    removed through their handles either way). The caller runs the model once inside: a layer
    that runs twice then is a layer that runs twice in one forward pass (``ValueError``).
    """
    with hooks.frozen(model) if graph else hooks.evaluated(model):
        caps = []
        try:
            for m in modules:
                caps.append(hooks._capture_hooks(model, m, leaf=leaf, keep_gradients=False, once=True))
            yield caps
        finally:
            for cap in caps:
                for h in cap._handles:
                    h.remove()


def _one_hot(logits: torch.Tensor, image: list, classes: list) -> torch.Tensor:
    """``[M, N, C]``: for output map m, a one at (image[m], classes[m])."""
    g = torch.zeros((len(classes),) + tuple(logits.shape), dtype=logits.dtype, device=logits.device)
    g[list(range(len(classes))), image, classes] = 1.0
    return g


#: Several classes of one image: at most this many one-hot rows per batched backward pass. The
#: memory of such a pass grows with the rows times the gradients between the scores and the layer
#: (megabytes a class for a shallow layer of VGG16 at 224 x 224), so 1000 classes go 32 at a time.
_CLASS_CHUNK = 32


def _class_gradients(logits, activations, image, classes, retain_graph=False, eye=None):
    """d y^c / d A for each output map: a list (one per layer) of ``[M, K, h, w]``.

    One backward pass when every image has one class (the scores are summed: images of a
    batch do not interact in eval mode); several classes of one image are done as batches of
    gradients (``is_grads_batched``), :data:`_CLASS_CHUNK` classes per call, with a loop as
    fallback. ``eye``, the identity ``[C, C]`` (kept by :class:`Cached`), gives the one-hot rows
    that start the backward pass at the chosen scores without adding an indexing step to the graph.
    """
    n = logits.shape[0]
    if image == list(range(n)):                                 # one map per image, in order
        if eye is not None:                                     # d(sum_i y_i[c_i]) / d logits
            onehot = eye[classes[0]:classes[0] + 1] if n == 1 else eye[classes]
            return list(torch.autograd.grad(logits, activations, onehot, retain_graph=retain_graph))
        score = logits.gather(1, torch.tensor(classes, device=logits.device)[:, None]).sum()
        return list(torch.autograd.grad(score, activations, retain_graph=retain_graph))
    onehots = _one_hot(logits, image, classes)
    try:
        parts = []
        for s in range(0, len(classes), _CLASS_CHUNK):     # at most _CLASS_CHUNK maps per pass
            rows = onehots[s:s + _CLASS_CHUNK]
            chunk = torch.autograd.grad(logits, activations, rows, retain_graph=True, is_grads_batched=True)
            parts.append([g[list(range(len(rows))), image[s:s + _CLASS_CHUNK]] for g in chunk])  # own image
        grads = [p[0] if len(parts) == 1 else torch.cat(p) for p in zip(*parts)]
    except RuntimeError:  # pragma: no cover - an op without a batching rule: one class at a time
        grads = None
    if grads is None:  # pragma: no cover
        per = [torch.autograd.grad(logits, activations, oh, retain_graph=True) for oh in onehots]
        grads = [torch.stack([p[i][image[m]] for m, p in enumerate(per)]) for i in range(len(activations))]
    return grads


def _check_maps(cap, model) -> None:
    """The captured output must exist and be feature maps ``[N, K, h, w]`` (not a linear layer's)."""
    name = models.info(model).name
    if cap.activations is None:
        raise ValueError(f"layer {cap.name!r} did not run in the forward pass of {name}")
    if cap.activations.ndim != 4:
        raise ValueError(f"layer {cap.name!r} of {name} gives outputs of shape "
                         f"{tuple(cap.activations.shape)}, not feature maps [N, K, h, w]: a class "
                         f"activation map needs a conv layer, a ReLU or a block before the pooling")


def _forward_backward(model, x, layers, image, classes, retain_graph=False):
    """Activations and class-score gradients of the given layers (one forward, one backward).

    Returns (activations list of ``[N, K, h, w]``, gradients list of ``[M, K, h, w]``,
    logits ``[N, C]``). The forward pass before the first layer builds no graph; the backward
    pass stops at the layers; no weight gradient is computed. Used by Grad-CAM, Grad-CAM++ and
    LayerCAM (chapters 11, 13, 15).
    """
    with _captured(model, layers, leaf=True) as caps, torch.enable_grad():
        logits = _logits(model(x), model)
        for cap in caps:
            _check_maps(cap, model)
        grads = _class_gradients(logits, [cap.activations for cap in caps], image, classes, retain_graph)
    return [cap.activations.detach() for cap in caps], [g.detach() for g in grads], logits


# ----------------------------------------------------------------------------- CAM (chapter 10)
def gap_classifier(model: nn.Module, layer=None, activations=None, logits=None) -> nn.Linear:
    """The linear layer that turns the global average of ``layer``'s maps into the class scores.

    CAM needs this architecture (global average pooling then one linear layer: ResNet,
    GoogLeNet, Inception v3, ShapesNet). The candidate is a ``nn.Linear`` from the layer's K
    channels to the C classes; with ``activations`` and ``logits`` of one forward pass it is
    also checked that ``logits == mean(A) @ W.T + b``. Otherwise ``ValueError`` says why.
    Explained in chapter 10, CAM.
    """
    name = models.layer_name(model, models.layer(model, models.last_conv_layer(model) if layer is None else layer))
    n_classes = len(models.info(model).classes)
    k = activations.shape[1] if activations is not None else models.channels(model, name)
    found = [m for m in model.modules() if isinstance(m, nn.Linear)
             and m.in_features == k and m.out_features == n_classes]
    why = (f"CAM needs global average pooling of the layer's feature maps followed by ONE linear layer "
           f"to the classes (ResNet, GoogLeNet, Inception v3, ShapesNet); use Grad-CAM (chapter 11), "
           f"which works for any architecture. {models.info(model).name} at layer {name!r}: ")
    if not found:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(why + f"no linear layer takes its {k} channels to the {n_classes} classes "
                         f"(its linear layers: {', '.join(linears) or 'none'})")
    fc = found[-1]
    if activations is not None and logits is not None:
        pooled = activations.mean((2, 3))
        scores = F.linear(pooled, fc.weight, fc.bias)
        tol = 1e-3 * float(logits.abs().max()) + 1e-4
        if not torch.allclose(scores, logits, rtol=1e-3, atol=tol):
            raise ValueError(why + f"{models.layer_name(model, fc)} applied to the average of the "
                             f"maps does not give the model's scores (something else sits between them)")
    return fc


def cam_map(A: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """CAM at the layer's resolution: ``M_c(x, y) = sum_k w_k^c A_k(x, y)``.

    ``A`` is ``[M, K, h, w]``, ``w`` the classifier rows of the target classes ``[M, K]``.
    Explained in chapter 10, CAM.
    """
    # for each map m, the row w[m] [1, K] times A[m] as a matrix [K, h*w]: one matrix product,
    # about twice as fast as broadcasting w over A and summing (which counts in Grad-CAM's cost)
    M, K, h, wd = A.shape
    if M == 1:                                 # one map: a plain matrix product, no batch of them
        return (w.reshape(1, K) @ A.reshape(K, h * wd)).view(1, h, wd)
    return (w.reshape(M, 1, K) @ A.reshape(M, K, h * wd)).view(M, h, wd)


def cam(model: nn.Module, x: torch.Tensor, target, layer=None) -> torch.Tensor:
    """Class activation map (Zhou et al. 2016): the class-weighted sum of the last feature maps.

    ``M_c = sum_k w_k^c A_k`` where ``w^c`` is the row of class c of the linear layer that
    follows global average pooling (:func:`gap_classifier`). Returns ``[M, H, W]`` in [0, 1]
    (min-max: CAM has no ReLU), bilinearly upsampled to the input. A model without that
    architecture (VGG, AlexNet) raises ``ValueError``. Explained in chapter 10, CAM.
    """
    x = _input(model, x)
    image, classes = _plan(model, x, target)
    module = _one_layer(model, layer, "cam")
    with _captured(model, [module], graph=False) as (cap,), torch.no_grad():
        logits = _logits(model(x), model)
        A = cap.activations
        fc = gap_classifier(model, module, A, logits)
        w = fc.weight[classes]                                 # w_k^c: [M, K]
        m = cam_map(_per_map(A, image), w)                     # sum_k w_k^c A_k
    return to_heatmap(m, x.shape[-2:], signed=True)


# ----------------------------------------------------------------------------- Grad-CAM (chapter 11)
def grad_cam_map(A: torch.Tensor, g: torch.Tensor, counterfactual: bool = False) -> torch.Tensor:
    """Grad-CAM at the layer's resolution from activations ``A`` and gradients ``g`` (``[M, K, h, w]``).

    ``alpha_k^c = 1/Z sum_ij dy^c/dA^k_ij`` (the spatial mean of the gradient) and
    ``L^c = ReLU(sum_k alpha_k^c A^k)``: CAM's weighted sum (:func:`cam_map`) with the weights
    ``alpha``, then a ReLU. The counterfactual map uses ``-g``: what argues against the class.
    Explained in chapter 11, Grad-CAM.
    """
    if counterfactual:
        g = -g
    alpha = g.mean(dim=(2, 3))                                 # alpha_k^c  [M, K]
    return F.relu(cam_map(A, alpha))                           # ReLU(sum_k alpha_k^c A^k)


def _gradient_method(formula, model, x, target, layer, **kwargs):
    x = _input(model, x)
    image, classes = _plan(model, x, target)
    modules, single = _layer_list(model, layer)
    acts, grads, _ = _forward_backward(model, x, modules, image, classes)
    maps = [to_heatmap(formula(_per_map(A, image), g, **kwargs), x.shape[-2:])
            for A, g in zip(acts, grads)]
    return maps[0] if single else torch.stack(maps)


def grad_cam(model: nn.Module, x: torch.Tensor, target, layer=None,
             counterfactual: bool = False) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) of any layer of any model: ``[M, H, W]`` in [0, 1].

    One forward pass (no graph before the layer) and one backward pass that stops at the
    layer give ``A`` and the weights ``alpha_k^c``, the spatial mean of ``g = dy^c/dA``; then
    ``ReLU(sum_k alpha_k^c A^k)`` as in :func:`grad_cam_map`. Where the layer is followed by
    pooling and a linear layer (VGG, AlexNet, ResNet, GoogLeNet, Inception v3, ShapesNet at their
    last conv layer) the backward pass stops at that linear layer's output instead, and its
    weights summed over positions give the same ``alpha`` (see ``_Head``): at batch 1, VGG's
    first classifier layer (400 MB) is then not read a second time, and where that linear layer
    gives the scores (GAP networks) there is no backward pass at all.
    ``counterfactual=True`` negates the gradients (the paper's counterfactual explanation). A
    list of layers gives ``[L, M, H, W]`` from the same single forward and backward pass.
    Explained in chapter 11, Grad-CAM.
    """
    x = _input(model, x)
    image, classes = _plan(model, x, target)
    modules, single = _layer_list(model, layer)
    if not single:
        return _gradient_method(grad_cam_map, model, x, target, layer, counterfactual=counterfactual)
    head = _Head(model, modules[0])
    short = bool(head.verdict)                  # an earlier call showed that the backward may stop at z
    no_graph = short and head.at_scores         # ... and that z are the scores: no backward pass at all
    with _captured(model, modules, leaf=not short, graph=not no_graph) as (cap,), \
            head.hooked(z_leaf=short and not no_graph, keep_z=not no_graph), \
            torch.no_grad() if no_graph else torch.enable_grad():
        logits = _logits(model(x), model)
        _check_maps(cap, model)
        if short and (head.fold() is None or (no_graph and not head.gave_scores(logits))):
            head.judge(None)                    # the forward pass changed: judge it again
            alpha = None
        else:
            alpha = _grad_cam_weights(head, logits, cap.activations, image, classes)
    if alpha is None:
        return grad_cam(model, x, target, layer, counterfactual)   # again, with the full gradient
    # grad_cam_map with alpha known: ReLU(sum_k alpha_k^c A^k)
    m = F.relu_(cam_map(_per_map(cap.activations.detach(), image), -alpha if counterfactual else alpha))
    return to_heatmap(m, x.shape[-2:])


# Grad-CAM's weights without the full gradient. alpha_k^c = 1/Z sum_ij dy^c/dA^k_ij is the
# derivative of y^c with respect to a constant t_k added to every position of channel k. Max and
# average pooling commute with such a shift (pool(A + t) = pool(A) + t), so if only pooling (and
# identities) lie between the layer and a linear layer z = W flatten(pool(A)) + b, then
# dz/dt_k = sum_p W[:, k, p] =: Wsum[:, k], and alpha^c = 1/Z (dy^c/dz) Wsum: the backward pass
# stops at z. The helper takes this path only when the forward pass shows the chain (each module
# takes the previous one's output) and a first call has matched it against the full gradient.
_SHIFT_POOLS = (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d)
_PASS_THROUGH = (nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten)
#: per model: chain (module ids) -> (shortcut equals the gradient, the linear layer gives the scores)
_FOLD_VERDICTS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_FOLDS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
#: per model: id(layer) -> (layer, its head candidates)
_CANDIDATES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _shift_commutes(m: nn.Module) -> bool:
    if isinstance(m, nn.AvgPool2d):    # zero padding counted in the mean, or a fixed divisor, does not commute
        return ((m.padding in (0, (0, 0)) or not m.count_include_pad) and not m.ceil_mode
                and m.divisor_override is None)
    if isinstance(m, nn.Flatten):
        return m.start_dim == 1 and m.end_dim == -1
    return isinstance(m, _SHIFT_POOLS + _PASS_THROUGH)


def _head_candidates(model: nn.Module, module: nn.Module) -> list:
    """The leaf modules registered after ``module`` (outside it) that may belong to a pooled linear
    head: pooling, identities and linear layers. Only candidates: :class:`_Head` checks in the
    forward pass which of them ran, in which order, each on the previous one's output.

    Kept per model and layer, since the walk costs as much as a small network's last layers. A
    list gone stale (modules replaced since) cannot give a wrong map: the hooked modules then no
    longer form the chain in the forward pass, :meth:`_Head.fold` finds no chain, the call takes
    the full gradient, and the list is made again at the next call."""
    kept = _CANDIDATES.setdefault(model, {}).get(id(module))
    if kept is not None and kept[0] is module:
        return kept[1]
    inside = {id(m) for m in module.modules()}
    found, after = [], False
    for m in model.modules():
        if m is module:
            after = True
        elif after and id(m) not in inside and not m._modules and (
                isinstance(m, nn.Linear) or _shift_commutes(m)):
            found.append(m)
    _CANDIDATES[model][id(module)] = (module, found)
    return found


def _same_data(a, b: torch.Tensor) -> bool:
    """``a`` is ``b``, or a view of the same memory: the same layout, or ``b`` flattened per image."""
    if a is b:
        return True
    if not isinstance(a, torch.Tensor) or a.data_ptr() != b.data_ptr() or a.dtype != b.dtype \
            or a.numel() != b.numel():
        return False
    if a.shape == b.shape and a.stride() == b.stride():
        return True
    return a.ndim == 2 and a.shape[0] == b.shape[0] and a.is_contiguous() and b.is_contiguous()


def _version(t: torch.Tensor):
    """The tensor's count of in-place changes; None for a tensor made in inference mode (no count)."""
    return None if t.is_inference() else t._version


class _Head:
    """Records one forward pass from the layer to the first linear layer after it.

    ``z_leaf=True`` (for a call that will stop at z): the linear layer's output ``z`` becomes the
    leaf where the graph starts, so nothing before it builds a graph. ``keep_z=False`` (for a call
    without a graph, which only asks whether z are the scores): z is passed on as it is, not
    copied."""

    def __init__(self, model: nn.Module, module: nn.Module):
        self.model, self.module = model, module
        self.candidates = _head_candidates(model, module)
        self.key = (id(module),) + tuple(id(m) for m in self.candidates)
        self.calls, self.handed, self.z, self.returned, self._fold = [], None, None, None, None
        self._handed_version = self._returned_version = None

    @contextlib.contextmanager
    def hooked(self, z_leaf: bool = False, keep_z: bool = True):
        self.z_leaf, self.keep_z, handles = z_leaf, keep_z, []
        try:
            if any(isinstance(m, nn.Linear) for m in self.candidates):
                handles.append(self.module.register_forward_hook(self._layer))
                handles += [m.register_forward_hook(self._call) for m in self.candidates]
            yield self
        finally:
            for h in handles:
                h.remove()

    def _layer(self, _m, _inputs, output):
        self.handed, self.calls, self.z = output, [], None   # what the layer hands on (after the capture's hook)
        self._handed_version = _version(output) if isinstance(output, torch.Tensor) else None
        self._fold = ()

    def _call(self, m, inputs, output):
        if self.handed is None or self.z is not None:
            return None
        inp = inputs[0] if inputs else None
        # with the versions of the input as this module took it and of the output as it came out:
        # an in-place operation between two modules (a ReLU(inplace=True) after the layer) shows
        self.calls.append((m, inp, _version(inp) if isinstance(inp, torch.Tensor) else None, output,
                           _version(output) if isinstance(output, torch.Tensor) else None))
        if isinstance(m, nn.Linear):
            if not self.keep_z:
                self.z = self.returned = output
                self._returned_version = _version(output)
                return None
            # z, kept: a later in-place ReLU changes the copy
            self.z = output.detach().requires_grad_(True) if self.z_leaf else output
            self.returned = self.z.clone()
            self._returned_version = _version(self.returned)
            return self.returned
        return None

    def gave_scores(self, logits) -> bool:
        """Whether ``logits``, the model's output, are the linear layer's output ``z`` as it came out
        of the layer: the same tensor, and no in-place operation since (a ReLU after the scores)."""
        return (logits is self.returned and self._returned_version is not None
                and _version(logits) == self._returned_version)

    def fold(self):
        """(z, Wsum / Z) when this forward pass ran pooling only from the layer to a linear layer; else None."""
        if self._fold == ():
            self._fold = self._chain()
            if self._fold is None:                   # no chain: the kept candidates may be stale
                _CANDIDATES.get(self.model, {}).pop(id(self.module), None)
        return self._fold

    def _chain(self):
        if self.z is None or not isinstance(self.handed, torch.Tensor) or self.handed.ndim != 4:
            return None
        prev, prev_version, flat = self.handed, self._handed_version, False
        n, k = prev.shape[:2]
        positions = Z = prev.shape[2] * prev.shape[3]
        for m, inp, inp_version, out, out_version in self.calls:   # each takes the previous one's
            if not isinstance(out, torch.Tensor) or not _same_data(inp, prev) \
                    or inp_version is None or inp_version != prev_version:     # output, unchanged
                return None
            flat = flat or inp.ndim == 2
            if isinstance(m, nn.Linear):
                if m.in_features != k * positions:
                    return None
                return self.z, _summed_weights(m, k, positions, Z)
            if flat and not isinstance(m, _PASS_THROUGH):
                return None
            if not flat and isinstance(m, _SHIFT_POOLS):
                if out.ndim != 4 or out.shape[:2] != (n, k):
                    return None
                positions = out.shape[2] * out.shape[3]
            prev, prev_version = out, out_version
        return None  # pragma: no cover - the calls end with the linear layer

    @property
    def verdict(self):
        """True: an earlier call matched the shortcut against the full gradient; False: it did not;
        None: not tried yet (or the forward pass has changed since)."""
        return _FOLD_VERDICTS.get(self.model, {}).get(self.key, (None, False))[0]

    @property
    def at_scores(self) -> bool:
        """Whether, in the call that judged it, the linear layer's output was the model's output."""
        return _FOLD_VERDICTS.get(self.model, {}).get(self.key, (None, False))[1]

    def judge(self, ok: bool | None, at_scores: bool = False) -> None:
        verdicts = _FOLD_VERDICTS.setdefault(self.model, {})
        if ok is None:
            verdicts.pop(self.key, None)
        else:
            verdicts[self.key] = (ok, bool(ok and at_scores))


def _summed_weights(linear: nn.Linear, k: int, positions: int, Z: int) -> torch.Tensor:
    """``Wsum / Z [out, K]``: the linear layer's weights summed over the ``positions`` of each
    channel after pooling, divided by the layer's own number of positions ``Z``, so that
    ``alpha = (dy/dz) @ Wsum / Z``. Kept for later calls: not to be changed in place."""
    W = linear.weight.detach()
    key = (W.data_ptr(), W._version, W.dtype, W.device, k, positions, Z)
    # the probe catches changes through .data, which leave the version counter alone: all of a
    # small weight (a classifier of a few classes), 1024 of its numbers spread over a large one
    probe = W if W.numel() <= 1024 else W.reshape(-1)[::W.numel() // 1024]
    kept = _FOLDS.get(linear)
    if kept is None or kept[0] != key or not torch.equal(kept[1], probe):
        with torch.inference_mode(False), torch.no_grad():  # kept for later calls, as _linear_weights
            kept = (key, probe.clone(), W.reshape(W.shape[0], k, positions).sum(2) / Z)
        _FOLDS[linear] = kept
    return kept[2]


def _grad_cam_weights(head: _Head, logits, A, image, classes, retain_graph=False, eye=None) -> torch.Tensor:
    """Grad-CAM's ``alpha [M, K]``: through the head's summed weights where the forward pass ran
    a pooled linear head and an earlier call matched it against the full gradient; else (and on
    that earlier call) the spatial mean of the full gradient ``dy^c/dA``."""
    fold = head.fold()
    verdict = head.verdict if fold is not None else False
    if verdict:
        z, wsum = fold                               # wsum: Wsum / Z
        if head.gave_scores(logits):                 # z are the scores: dy^c/dz is one-hot
            if not head.at_scores:
                head.judge(True, at_scores=True)
            # rows of the kept weights: a view, or a gather; not changed by the callers
            return wsum[classes[0]:classes[0] + 1] if len(classes) == 1 else wsum[classes]
        (gz,) = _class_gradients(logits, [z], image, classes, retain_graph, eye)
        return gz @ wsum
    (g,) = _class_gradients(logits, [A], image, classes, retain_graph or verdict is None, eye)
    alpha = g.mean(dim=(2, 3))
    if verdict is None:                              # a first call: is the shortcut the gradient?
        z, wsum = fold
        (gz,) = _class_gradients(logits, [z], image, classes, retain_graph, eye)
        short = gz @ wsum
        scale = float(alpha.abs().max())
        if scale > 0:                                # an all-zero gradient proves nothing
            head.judge(bool((short - alpha).abs().max() <= 1e-4 * scale), at_scores=head.gave_scores(logits))
    return alpha.detach()


# ----------------------------------------------------------------------------- Guided Grad-CAM (chapter 12)
def guided_grad_cam(model: nn.Module, x: torch.Tensor, target, layer=None) -> torch.Tensor:
    """Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map.

    ``guided(x) * L^c`` pixel by pixel (the map broadcast over the colour channels). Returns a
    signed input-space map ``[M, 3, H, W]`` on the CPU (show it with ``plots.gradient_image``
    or ``plots.grayscale``). Guided backpropagation comes from ``helpers.gradients.guided``
    (chapter 04). Explained in chapter 12, Guided Grad-CAM.
    """
    from . import gradients  # chapter 04's module, imported when needed

    x = _input(model, x)
    image, classes = _plan(model, x, target)
    layer = _one_layer(model, layer, "guided_grad_cam")
    xs = _per_map(x, image)
    guided = gradients.guided(model, xs, classes)              # [M, 3, H, W]
    heat = grad_cam(model, x, target, layer)                   # [M, H, W] in [0, 1]
    return guided.detach().float().cpu() * heat[:, None]


# ----------------------------------------------------------------------------- Grad-CAM++ (chapter 13)
def grad_cam_pp_map(A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ at the layer's resolution (Chattopadhay et al. 2018, Eq. 19 with the exponential).

    With ``Y^c = exp(S^c)`` and a piecewise-linear (ReLU) network, the second and third
    derivatives are ``exp(S) g^2`` and ``exp(S) g^3``, so ``exp(S)`` cancels in
    ``alpha_ij^kc = g^2 / (2 g^2 + sum_ab A^k_ab g^3)``. The weights are
    ``w_k^c = sum_ij alpha_ij^kc ReLU(dY^c/dA^k_ij)``; the paper's ``dY/dA = exp(S) g`` only
    scales every map by the positive ``exp(S)``, which the [0, 1] scaling removes, so ``g`` is
    used. ``L^c = ReLU(sum_k w_k^c A^k)``. The denominator is 0 where ``g = 0`` or
    ``g = -2 / sum_ab A^k_ab``; alpha is set to 0 there, which changes nothing, since ``ReLU(g) = 0``
    at both. Explained in chapter 13, Grad-CAM++.
    """
    g2, g3 = g.pow(2), g.pow(3)
    denominator = 2 * g2 + A.sum(dim=(2, 3), keepdim=True) * g3
    safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    alpha = torch.where(denominator != 0, g2 / safe, torch.zeros_like(g2))   # alpha_ij^kc
    w = (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)                    # w_k^c
    return F.relu((w * A).sum(dim=1))


def grad_cam_pp(model: nn.Module, x: torch.Tensor, target, layer=None) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018): ``[M, H, W]`` in [0, 1] (a list of layers: ``[L, M, H, W]``).

    Same single forward and backward pass as :func:`grad_cam`; the weights are
    :func:`grad_cam_pp_map`'s pixel-weighted positive gradients. Explained in chapter 13,
    Grad-CAM++.
    """
    return _gradient_method(grad_cam_pp_map, model, x, target, layer)


# ----------------------------------------------------------------------------- Score-CAM (chapter 14)
def score_cam_masks(A: torch.Tensor, size) -> torch.Tensor:
    """Score-CAM's masks ``H^k = s(Up(A^k))`` for one image: ``A`` ``[K, h, w]`` -> ``[K, H, W]``.

    Each channel is upsampled bilinearly to the input size and min-max scaled to [0, 1]; a
    constant channel gives an all-zero mask. Explained in chapter 14, Score-CAM.
    """
    A = A.float()
    raw = A.flatten(1)
    constant = (raw.amax(1) == raw.amin(1))[:, None, None]       # decided on the channel itself
    A = A - raw.amin(1)[:, None, None]          # shifted first: upsampling a constant gives rounding noise
    up = F.interpolate(A[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    flat = up.flatten(1)
    lo = flat.min(1).values[:, None, None]
    span = flat.max(1).values[:, None, None] - lo
    return torch.where(constant | (span <= 0), torch.zeros_like(up),
                       (up - lo) / span.clamp_min(torch.finfo(up.dtype).tiny))


def _default_batch_size(x: torch.Tensor) -> int:
    return max(1, 2 ** 20 // (x.shape[-1] * x.shape[-2]))


def _batch_size(batch_size, x: torch.Tensor) -> int:
    """Score-CAM's masked images per forward pass: a positive int, or ``None`` for about 1 M pixels."""
    if batch_size is None:
        return _default_batch_size(x)
    return models.positive_int(batch_size, "batch_size", "masked images per forward pass")


def _mask_logits(model, x1, A1, batch_size, bar):
    """The network's output (logits) for the masked images ``x1 * H^k``: ``[K, C]``.

    Channels whose mask is all zero give the baseline image; they are not run (their row is
    NaN, filled in by :func:`score_cam_weights` with the baseline's output).
    """
    masks = score_cam_masks(A1, x1.shape[-2:])                 # H^k: [K, H, W]
    live = (masks.flatten(1).amax(1) > 0).nonzero()[:, 0]
    # the bar counted ceil(K / batch_size) batches for this image; constant channels are not run
    bar.total -= math.ceil(len(masks) / batch_size) - math.ceil(len(live) / batch_size)
    bar.refresh()
    out = None
    for start in range(0, len(live), batch_size):
        idx = live[start:start + batch_size]
        masked = x1[None] * masks[idx, None]                    # X o H^k: [B, 3, H, W]
        y = _logits(model(masked), model).float()
        if out is None:
            out = torch.full((len(masks), y.shape[1]), float("nan"), device=y.device)
        out[idx] = y
        bar.update(1)
    if out is None:                                            # every channel constant: all baseline
        out = torch.full((len(masks), len(models.info(model).classes)), float("nan"), device=x1.device)
    return out


SCORE_CAM_WEIGHTS = ("increase", "algorithm1", "probability")


def score_cam_weights(logits: torch.Tensor, base: torch.Tensor, c: int, weights: str = "increase") -> torch.Tensor:
    """Score-CAM's channel weights ``alpha^c_k`` ``[K]`` from the masked images' outputs.

    ``logits`` ``[K, C]`` are the network's outputs for the K masked images ``X o H^k`` (a NaN
    row: a constant channel, whose masked image is the baseline), ``base`` ``[C]`` the output for
    the baseline ``X_b``. The paper gives three readings, and ``weights`` picks one:

    - ``"increase"`` (default): Definition 5, ``alpha_k = C(A^k) = p_c(X o H^k) - p_c(X_b)``, the
      increase of confidence with ``p`` the softmax probability (its section 3.2: "post-softmax").
    - ``"algorithm1"``: the paper's Algorithm 1, ``S_k = f^c(X o H^k) - f^c(X_b)`` on the logits,
      then ``alpha_k = exp(S_k) / sum_j exp(S_j)``, a softmax across the channels. The weights are
      positive and sum to 1, and the baseline cancels (the same constant in every ``S_k``).
    - ``"probability"``: the authors' released code, ``alpha_k = p_c(X o H^k)``, no baseline;
      like that code, a constant channel (which it skips) gets the weight 0.

    Explained in chapter 14, Score-CAM.
    """
    if weights not in SCORE_CAM_WEIGHTS:
        raise ValueError(f"weights must be one of {SCORE_CAM_WEIGHTS}, got {weights!r}")
    constant = torch.isnan(logits).any(dim=1)
    logits = torch.where(torch.isnan(logits), base[None].expand_as(logits), logits)   # constant channel: X_b
    if weights == "algorithm1":
        return torch.softmax(logits[:, c] - base[c], dim=0)
    p = torch.softmax(logits, dim=1)[:, c]
    if weights == "probability":
        return p.masked_fill(constant, 0.0)
    return p - torch.softmax(base, dim=0)[c]


def score_cam(model: nn.Module, x: torch.Tensor, target, layer=None, batch_size: int | None = None,
              progress: bool = True, weights: str = "increase") -> torch.Tensor:
    """Score-CAM (Wang et al. 2020): ``[M, H, W]`` in [0, 1], no gradients at all.

    For each channel k of ``A = layer(x)``: the mask ``H^k = s(Up(A^k))`` (:func:`score_cam_masks`),
    the masked image ``x * H^k`` and its output; the channel's weight (:func:`score_cam_weights`)
    is by default the increase of confidence over the baseline ``C(A^k) = p_c(x * H^k) - p_c(x_b)``
    with ``p`` the softmax probability (the paper's "post-softmax" score) and ``x_b`` the all-zero
    normalised input (``x * 0``: every pixel at the dataset mean); ``weights="algorithm1"`` gives
    the paper's Algorithm 1, ``"probability"`` the authors' code. ``L^c = ReLU(sum_k alpha_k A^k)``.
    The masked images run forward ``batch_size`` at a time (default: as many as fit in about 1 M
    pixels) under ``torch.no_grad()``, with a progress bar. Explained in chapter 14, Score-CAM.
    """
    from tqdm.auto import tqdm

    x = _input(model, x)
    image, classes = _plan(model, x, target)
    module = _one_layer(model, layer, "score_cam")
    if weights not in SCORE_CAM_WEIGHTS:
        raise ValueError(f"weights must be one of {SCORE_CAM_WEIGHTS}, got {weights!r}")
    batch_size = _batch_size(batch_size, x)
    maps = []
    with hooks.frozen(model), torch.no_grad():
        with hooks.capture(model, module) as cap:              # a whole forward pass, so that a module
            _logits(model(x), model)                           # that runs twice is refused, not cut short
        _check_maps(cap, model)
        A = cap.activations                                    # A^k: [N, K, h, w]
        base = _logits(model(torch.zeros_like(x[:1])), model).float()[0]    # f(X_b)
        bar = tqdm(total=len(set(image)) * math.ceil(A.shape[1] / batch_size), desc="Score-CAM masked images",
                   disable=not progress, leave=False)
        outputs = {n: _mask_logits(model, x[n], A[n], batch_size, bar) for n in dict.fromkeys(image)}
        bar.close()
        for n, c in zip(image, classes):
            alpha = score_cam_weights(outputs[n], base, c, weights)        # alpha^c_k, e.g. C(A^k)
            maps.append(F.relu((alpha.to(A.dtype)[:, None, None] * A[n]).sum(0)))
    return to_heatmap(torch.stack(maps), x.shape[-2:])


# ----------------------------------------------------------------------------- LayerCAM (chapter 15)
def layer_cam_map(A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """LayerCAM at the layer's resolution: ``M^c = ReLU(sum_k ReLU(g^k) * A^k)``, element by element.

    Every location gets its own weight, the positive part of its gradient, instead of one
    weight per channel. Explained in chapter 15, LayerCAM.
    """
    return F.relu((F.relu(g) * A).sum(dim=1))


def layer_cam(model: nn.Module, x: torch.Tensor, target, layer=None) -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021): ``[M, H, W]`` in [0, 1]; a list of layers gives ``[L, M, H, W]``.

    Same single forward and backward pass as :func:`grad_cam`, then :func:`layer_cam_map`.
    Combine the maps of several layers with :func:`fuse`. Explained in chapter 15, LayerCAM.
    """
    return _gradient_method(layer_cam_map, model, x, target, layer)


def fuse(maps: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Fuse LayerCAM maps of several layers ``[L, M, H, W]`` (shallow to deep) into ``[M, H, W]``.

    As LayerCAM's paper, the maps of the shallow layers (all but the last) are rescaled by
    ``tanh(gamma * M / max(M))`` (their values are small and would vanish next to the deep
    layer's); the deepest map keeps ``M / max(M)``. The maps are then combined pixel by pixel
    by their maximum and scaled to [0, 1]. Explained in chapter 15, LayerCAM.
    """
    fused = rescaled_for_fusion(maps, gamma).amax(0)
    return to_heatmap(fused, fused.shape[-2:])


def rescaled_for_fusion(maps: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """The layers' maps ``[L, M, H, W]`` as :func:`fuse` combines them, before the pixel-wise maximum.

    Each map divided by its maximum (an all-zero map stays zero); the shallow layers' maps (all
    but the last) then through ``tanh(gamma * .)``. Explained in chapter 15, LayerCAM.
    """
    if maps.ndim != 4:
        raise ValueError(f"fuse takes maps [layers, M, H, W] (layer_cam with a list of layers), "
                         f"got shape {tuple(maps.shape)}")
    peak = maps.flatten(2).amax(2)[:, :, None, None]
    unit = torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))
    return torch.cat([torch.tanh(gamma * unit[:-1]), unit[-1:]])


# ----------------------------------------------------------------------------- the cache (chapter 11)
class Cached:
    """CAM-family maps of one input at one layer, with the forward pass kept for every class.

    ``Cached(model, x, layer)`` runs the forward pass once: the network before the layer
    without a graph, the layer's output ``A`` as a leaf, and the part after the layer *with*
    its autograd graph, which is kept. A new class then costs only a backward pass through
    that part (from the class score back to ``A``; for Grad-CAM back to the first linear layer
    where only pooling lies between, or none on a GAP network): no forward pass at all, and
    nothing before the layer. Several classes of one image are one batched backward pass (up to
    :data:`_CLASS_CHUNK` classes a pass).
    :meth:`score_cam` keeps its masked images' probabilities for every class, so it too
    re-targets for free. The model is not changed; the cache holds as long as the model's
    weights are not changed: after an in-place change (an optimiser step, ``mul_`` under
    ``no_grad``) every method raises ``RuntimeError`` (a change through ``.data`` is not seen).
    Explained in chapter 11, Grad-CAM.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, layer=None):
        self.model = model
        self.x = _input(model, x)
        module = _one_layer(model, layer, "Cached")
        self.layer = models.layer_name(model, module)
        head = _Head(model, module)
        with _captured(model, [module], leaf=True) as (cap,), head.hooked(), torch.enable_grad():
            self.logits = _logits(model(self.x), model)         # its graph back to A is kept
            _check_maps(cap, model)
        self._head = head                                       # Grad-CAM's shortcut (grad_cam)
        self.activations = cap.activations                      # A: the leaf  [N, K, h, w]
        self._A = self.activations.detach()                     # the same values, without grad
        # row c of the identity = d y^c / d logits: where the backward pass for class c starts
        self._eye = torch.eye(self.logits.shape[1], dtype=self.logits.dtype, device=self.logits.device)
        self._size = tuple(self.x.shape[-2:])
        self._score_cam = {}
        self._params = list(model.parameters())
        self._versions = [p._version for p in self._params]

    def _check_unchanged(self) -> None:
        if [p._version for p in self._params] != self._versions:
            raise RuntimeError("the model's weights were changed after this Cached was built, so its kept "
                               "forward pass is stale: build a new one, Cached(model, x, layer)")

    @property
    def size(self):
        return self._size

    def gradients(self, target) -> torch.Tensor:
        """``dy^c/dA`` for each map ``[M, K, h, w]``: only the part after the layer runs (backward)."""
        return self._A_and_gradients(target)[1]

    def _A_and_gradients(self, target):
        self._check_unchanged()
        image, classes = _plan(self.model, self.x, target)
        (g,) = _class_gradients(self.logits, [self.activations], image, classes, retain_graph=True,
                                eye=self._eye)
        return _per_map(self._A, image), g                      # g carries no graph (create_graph=False)

    def grad_cam(self, target, counterfactual: bool = False) -> torch.Tensor:
        """Grad-CAM ``[M, H, W]`` for ``target`` (:func:`grad_cam_map`); equals :func:`grad_cam`."""
        self._check_unchanged()
        image, classes = _plan(self.model, self.x, target)
        alpha = _grad_cam_weights(self._head, self.logits, self.activations, image, classes,
                                  retain_graph=True, eye=self._eye)
        m = F.relu_(cam_map(_per_map(self._A, image), -alpha if counterfactual else alpha))  # as in grad_cam
        return to_heatmap(m, self.size)

    def grad_cam_pp(self, target) -> torch.Tensor:
        """Grad-CAM++ ``[M, H, W]`` for ``target``; equals :func:`grad_cam_pp`."""
        return to_heatmap(grad_cam_pp_map(*self._A_and_gradients(target)), self.size)

    def layer_cam(self, target) -> torch.Tensor:
        """LayerCAM ``[M, H, W]`` for ``target``; equals :func:`layer_cam`."""
        return to_heatmap(layer_cam_map(*self._A_and_gradients(target)), self.size)

    def cam(self, target) -> torch.Tensor:
        """CAM ``[M, H, W]`` for ``target`` (GAP architectures only); equals :func:`cam`."""
        self._check_unchanged()
        A = self.activations.detach()
        fc = gap_classifier(self.model, self.layer, A, self.logits.detach())
        image, classes = _plan(self.model, self.x, target)
        with torch.no_grad():
            m = cam_map(_per_map(A, image), fc.weight[classes])
        return to_heatmap(m, self.size, signed=True)

    def score_cam(self, target, batch_size: int | None = None, progress: bool = True,
                  weights: str = "increase") -> torch.Tensor:
        """Score-CAM ``[M, H, W]``; the masked images run once per image, then any class (and any
        ``weights``, :func:`score_cam_weights`) is free."""
        from tqdm.auto import tqdm

        self._check_unchanged()
        image, classes = _plan(self.model, self.x, target)
        if weights not in SCORE_CAM_WEIGHTS:
            raise ValueError(f"weights must be one of {SCORE_CAM_WEIGHTS}, got {weights!r}")
        A = self.activations.detach()
        batch_size = _batch_size(batch_size, self.x)
        todo = [n for n in dict.fromkeys(image) if n not in self._score_cam]
        if todo:
            with hooks.frozen(self.model), torch.no_grad():
                if "base" not in self._score_cam:
                    self._score_cam["base"] = _logits(self.model(torch.zeros_like(self.x[:1])), self.model).float()[0]
                bar = tqdm(total=len(todo) * math.ceil(A.shape[1] / batch_size), disable=not progress,
                           desc="Score-CAM masked images", leave=False)
                for n in todo:
                    self._score_cam[n] = _mask_logits(self.model, self.x[n], A[n], batch_size, bar)
                bar.close()
        base = self._score_cam["base"]
        maps = []
        for n, c in zip(image, classes):
            alpha = score_cam_weights(self._score_cam[n], base, c, weights)
            maps.append(F.relu((alpha.to(A.dtype)[:, None, None] * A[n]).sum(0)))
        return to_heatmap(torch.stack(maps), self.size)

    def __repr__(self) -> str:
        return (f"Cached({models.info(self.model).name}, layer={self.layer!r}, "
                f"x={tuple(self.x.shape)}, A={tuple(self.activations.shape)})")


def timings(model: nn.Module, x: torch.Tensor, layer=None, repeat: int = 5, clock=None) -> dict:
    """Speed of Grad-CAM and of re-targeting, against one forward pass, measured in one run.

    Interleaved repeats of: a forward pass under ``torch.no_grad()``, :func:`grad_cam` at
    ``layer`` (default: the last conv layer) for the predicted class, and :meth:`Cached.grad_cam`
    for another class (re-targeting). Returns the fastest time of each (the run least disturbed by
    other processes) in seconds, and the ratios ``grad_cam_ratio = grad_cam / forward`` and
    ``retarget_ratio = retarget / forward``. ``clock`` is the timer (default
    ``time.perf_counter``, wall time); on a busy shared machine ``time.thread_time`` with
    ``torch.set_num_threads(1)`` counts only the work done, which other processes cannot inflate
    (on a GPU, use wall time: the clock is read after the GPU has finished its queued work).
    Explained in chapter 11, Grad-CAM.
    """
    import time

    clock = clock or time.perf_counter
    x = _input(model, x)

    def now() -> float:       # a GPU runs queued work later: wait for it before reading the clock
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return clock()
    layer = models.last_conv_layer(model) if layer is None else layer
    n_classes = len(models.info(model).classes)
    with hooks.frozen(model):
        with torch.no_grad():
            top = int(model(x[:1]).argmax(1)[0])              # warm-up, and the class to explain
        cached = Cached(model, x, layer)
        grad_cam(model, x, top, layer)
        times = {"forward": [], "grad_cam": [], "retarget": []}
        for i in range(repeat):
            t0 = now()
            with torch.no_grad():
                model(x)
            t1 = now()
            grad_cam(model, x, top, layer)
            t2 = now()
            cached.grad_cam((top + 1 + i) % n_classes)
            t3 = now()
            times["forward"].append(t1 - t0)
            times["grad_cam"].append(t2 - t1)
            times["retarget"].append(t3 - t2)
    best = {k: min(v) for k, v in times.items()}
    return {**best, "grad_cam_ratio": best["grad_cam"] / best["forward"],
            "retarget_ratio": best["retarget"] / best["forward"], "repeat": repeat,
            "layer": models.layer_name(model, models.layer(model, layer)), "input": tuple(x.shape)}
