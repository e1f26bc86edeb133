"""Models: loading the book's networks, their layers and class names.

Explained in chapter 00, Models and images.

Two worlds:

* **ImageNet world**: VGG16, VGG19, AlexNet, ResNet50, GoogLeNet and Inception v3 with
  torchvision's pretrained ImageNet weights (downloaded once into torch's cache).
* **Offline world**: when those weights cannot be had (no network and nothing in the cache),
  or when ``CNNVIS_OFFLINE=1`` is set, :func:`load` says so in one line and returns ShapesNet,
  a small CNN that this project trains on synthetic scenes of shapes (``helpers.shapes``).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
import os
import socket
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: torchvision architectures of the book (name -> (builder name, weights enum name))
TORCHVISION = {
    "vgg16": "VGG16_Weights",
    "vgg19": "VGG19_Weights",
    "alexnet": "AlexNet_Weights",
    "resnet50": "ResNet50_Weights",
    "googlenet": "GoogLeNet_Weights",
    "inception_v3": "Inception_V3_Weights",
}
#: models of the offline world (trained and shipped by this project)
OFFLINE = ("shapesnet", "shapesnet-shuffled", "shapes-deconvnet")
NAMES = tuple(TORCHVISION) + OFFLINE

_INFO_ATTR = "_cnnvis_info"
_INFERRED: "weakref.WeakKeyDictionary[nn.Module, ModelInfo]" = weakref.WeakKeyDictionary()  # info() of models not made by load
#: per model: id(module) -> the dotted name layer_name found (checked against the model at each use)
_NAMES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


@dataclass
class ModelInfo:
    """What the book needs to know about a model besides its modules."""

    name: str
    world: str  # "imagenet" or "shapes"
    classes: list = field(repr=False)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    input_size: int = 224
    pretrained: bool = True


def _offline_forced() -> bool:
    return os.environ.get("CNNVIS_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _random_weights() -> bool:
    """Switch used only by the speed measurement of the book: real architectures, random weights."""
    return os.environ.get("CNNVIS_RANDOM_WEIGHTS", "").strip().lower() in {"1", "true", "yes", "on"}


def world_description() -> str:
    if _offline_forced():
        return "offline (CNNVIS_OFFLINE=1: ShapesNet and the shapes scenes)"
    if _random_weights():
        return "ImageNet architectures with RANDOM weights (CNNVIS_RANDOM_WEIGHTS=1, speed measurement only)"
    return "ImageNet (torchvision weights; falls back to the offline world if they cannot be had)"


def imagenet_classes() -> list:
    """The 1000 ImageNet class names, in torchvision's index order (shipped with torchvision)."""
    from torchvision.models import VGG16_Weights

    return list(VGG16_Weights.IMAGENET1K_V1.meta["categories"])


def _check_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("inceptionv3", "inception_v3")
    if key not in NAMES:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(NAMES)}")
    return key


def _build_torchvision(name: str, weights):
    import torchvision

    kwargs = {}
    if weights is None and name in ("googlenet", "inception_v3"):
        # same structure as the pretrained model (transform_input, no aux heads at eval)
        kwargs = {"init_weights": True, "transform_input": True, "aux_logits": False}
    return torchvision.models.get_model(name, weights=weights, **kwargs)


def _pretrained_weights(name: str):
    """The pretrained weights, from torch's cache or downloaded; None when they cannot be had."""
    import torchvision

    enum = getattr(torchvision.models, TORCHVISION[name]).DEFAULT
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(enum.url))
    if os.path.exists(cached):
        return enum
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        enum.get_state_dict(progress=True, check_hash=True)
        return enum
    except Exception:  # no network, refused, interrupted: the offline world takes over
        return None
    finally:
        socket.setdefaulttimeout(old)


def _attach(model: nn.Module, info: ModelInfo) -> nn.Module:
    object.__setattr__(model, _INFO_ATTR, info)
    return model.eval()


def load(name: str = "vgg16", device=None) -> nn.Module:
    """Load a model of the book by name, in eval mode, on ``device`` (default: CPU).

    ``vgg16``, ``vgg19``, ``alexnet``, ``resnet50``, ``googlenet``, ``inception_v3`` come with
    torchvision's ImageNet weights. When those cannot be had, or ``CNNVIS_OFFLINE=1`` is set,
    one line says so and ShapesNet is returned instead. ``shapesnet``, ``shapesnet-shuffled``
    (trained on shuffled labels) and ``shapes-deconvnet`` (segmentation) are the offline world.
    An unknown name raises ``ValueError`` listing the valid names.
    """
    key = _check_name(name)
    if key in TORCHVISION:
        if _offline_forced():
            print(f"Offline world: CNNVIS_OFFLINE=1 is set, so {key} is replaced by ShapesNet.")
            return load("shapesnet", device)
        if _random_weights():
            model = _build_torchvision(key, None)
            pretrained = False
        else:
            weights = _pretrained_weights(key)
            if weights is None:
                print(f"Offline world: the ImageNet weights of {key} cannot be had "
                      "(no network, nothing in torch's cache), so ShapesNet is used instead.")
                return load("shapesnet", device)
            model = _build_torchvision(key, weights)
            pretrained = True
        info = ModelInfo(key, "imagenet", imagenet_classes(), IMAGENET_MEAN, IMAGENET_STD,
                         299 if key == "inception_v3" else 224, pretrained)
        return _attach(model, info).to(device or "cpu")

    from . import shapes

    if key == "shapes-deconvnet":
        from . import segmentation

        model = segmentation.load_model(device=device)
        classes = ["background"] + list(shapes.CLASSES)
    else:
        model = shapes.load_model(key, device=device)
        classes = list(shapes.CLASSES)
    info = ModelInfo(key, "shapes", classes, tuple(shapes.MEAN), tuple(shapes.STD), shapes.SIZE, True)
    return _attach(model, info).to(device or "cpu")


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        hint = f" (models.load({model!r}) makes it)" if isinstance(model, str) else " (models.load(name) makes one)"
        raise TypeError(f"model must be a network, an nn.Module{hint}; got {type(model).__name__}")


def info(model: nn.Module) -> ModelInfo:
    """Name, world, class names, normalisation and input size of a model.

    Models made by :func:`load` carry it; for others it is inferred from the architecture
    (a ShapesNet -> the shapes world; anything else -> ImageNet's pre-processing, with ImageNet's
    class names where the last linear layer has 1000 outputs (or there is none), else the names
    ``class 0`` .. ``class k-1`` for its k outputs).
    """
    _check_model(model)
    found = model.__dict__.get(_INFO_ATTR) or _INFERRED.get(model)
    if found is not None:
        return found
    from . import shapes

    if isinstance(model, shapes.ShapesNet):
        found = ModelInfo("shapesnet", "shapes", list(shapes.CLASSES), tuple(shapes.MEAN),
                          tuple(shapes.STD), shapes.SIZE, False)
    else:
        kind = type(model).__name__.lower()
        size = 299 if kind == "inception3" else 224
        last = next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)
        n = 1000 if last is None else last.out_features      # a fine-tuned head: its own classes
        classes = imagenet_classes() if n == 1000 else [f"class {i}" for i in range(n)]
        found = ModelInfo(kind, "imagenet", classes, IMAGENET_MEAN, IMAGENET_STD, size, False)
    _INFERRED[model] = found        # kept beside the model, not on it: the model is not changed
    return found


def _first_parameter(model: nn.Module):
    """``next(model.parameters(), None)``, found without building the dotted names on the way
    (a cost that shows on every call of a method on a small network at batch 1)."""
    for p in model.__dict__["_parameters"].values():
        if p is not None:
            return p
    for child in model.__dict__["_modules"].values():
        if child is not None:
            p = _first_parameter(child)
            if p is not None:
                return p
    return None


def device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (of its first one); the CPU for a model without any."""
    _check_model(model)
    p = _first_parameter(model)
    return torch.device("cpu") if p is None else p.device


#: A normalised image lies within about +-3 (ImageNet's statistics: -2.1 to 2.6; the shapes world's:
#: -1.9 to 1.9); raw 0..255 pixels, or pixels normalised twice the wrong way, lie far beyond.
INPUT_LIMIT = 20.0


#: False inside :func:`made_from_checked_input`: the inputs are the helpers' own, made from a checked one
_CHECK_RANGE = contextvars.ContextVar("cnnvis_check_range", default=True)


@contextlib.contextmanager
def made_from_checked_input():
    """Within: :func:`as_input` and :func:`check_images` skip the range check. For a helper that
    checked the caller's input and then calls other helpers on inputs of its own making, such as
    SmoothGrad's noisy copies, which may go beyond the limit at a large noise level and are not
    the reader's mistake (nor worth a second check)."""
    token = _CHECK_RANGE.set(False)
    try:
        yield
    finally:
        _CHECK_RANGE.reset(token)


def _check_range(x: torch.Tensor) -> None:
    """``ValueError`` for an input that cannot be a normalised image: values beyond
    :data:`INPUT_LIMIT`, NaN or infinity. One reduction (for one 128 x 128 image on a CPU: 10 us
    in a loop of checks, 25 to 40 us right after a forward pass has left the caches cold, about
    1 to 1.5 % of ShapesNet's forward pass; 0.2 ms for 8 images of 224 x 224), since every
    method's map would otherwise come out plausible-looking and wrong, or NaN, without a word."""
    if x.numel() == 0 or not _CHECK_RANGE.get():
        return
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))     # one pass, no temporary tensor
    if not (-INPUT_LIMIT <= lo and hi <= INPUT_LIMIT):          # NaN compares False: caught too
        peak = max(abs(lo), abs(hi))
        if not math.isfinite(lo) or not math.isfinite(hi):
            raise ValueError("x contains NaN or infinite values: not an image (check how it was made)")
        raise ValueError(f"x has values up to {peak:.4g} in magnitude: a normalised image lies within "
                         f"about +-3 (up to {INPUT_LIMIT:g} is accepted). Raw pixels 0..255? Make the "
                         f"model's input with images.to_tensor(image, model), which scales and normalises")


def as_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` detached, on the model's device and in its parameters' dtype (a float64 batch, numpy's
    default, runs as the model's float32); a model without parameters takes CPU float32. An input
    that cannot be a normalised image (values beyond +-20, NaN, infinity: raw 0..255 pixels, say)
    raises ``ValueError``. Explained in chapter 00, Models and images."""
    _check_model(model)
    _check_range(x)
    p = _first_parameter(model)
    if p is None:
        return x.detach().to(device="cpu", dtype=torch.float32)
    return x.detach().to(device=p.device, dtype=p.dtype)


def _check_layout(x) -> None:
    if (not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or x.shape[0] < 1
            or not x.is_floating_point()):
        what = f"shape {tuple(x.shape)}, {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a normalised float batch [N, 3, H, W] with N >= 1 (images.to_tensor), got {what}")


def check_images(x) -> torch.Tensor:
    """``x`` itself, checked to be a normalised float batch ``[N, 3, H, W]`` with N >= 1 and values
    a normalised image can have (``ValueError`` saying what it got)."""
    _check_layout(x)
    _check_range(x)
    return x


def check_batch(model: nn.Module, x) -> torch.Tensor:
    """:func:`check_images`, then :func:`as_input`: detached, on the model's device and dtype."""
    _check_layout(x)
    return as_input(model, x)                # which checks the range


def positive_int(value, what: str, meaning: str = "", minimum: int = 1) -> int:
    """``value`` as an int, checked to be a whole number >= ``minimum`` (1: a positive int; Python or
    numpy, not a bool), else ``ValueError`` naming ``what`` (``"batch_size"``, ``"steps"``) and, if
    given, its ``meaning``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{what} must be {kind}{f' ({meaning})' if meaning else ''}, got {value!r}")
    return int(value)


def class_names(model: nn.Module) -> list:
    """The model's class names, index order (ImageNet's 1000 or the shapes)."""
    return list(info(model).classes)


def check_target(model: nn.Module, target, n: int | None = None) -> list:
    """Validate a target class (int, or one per image) and return one int per image.

    A class index out of range raises ``ValueError`` naming the valid range.
    """
    n_classes = len(info(model).classes)
    if isinstance(target, torch.Tensor) or type(target).__module__ == "numpy":   # tensors, arrays, numpy ints
        target = target.tolist()
    targets = list(target) if isinstance(target, (list, tuple)) else [target] * (n or 1)
    if n is not None and len(targets) != n:
        raise ValueError(f"got {len(targets)} targets for {n} images; give one class or one per image")
    out = []
    for t in targets:
        if isinstance(t, bool) or not isinstance(t, (int,)) and not hasattr(t, "__index__"):
            raise TypeError(f"a target must be a class index (int), got {t!r}")
        t = int(t)
        if not 0 <= t < n_classes:
            raise ValueError(f"class index {t} is out of range: {info(model).name} has classes 0..{n_classes - 1}")
        out.append(t)
    return out


def _probe_size(model: nn.Module) -> int:
    """Input side for a probing forward pass (layer order, channel counts): small is enough."""
    return min(info(model).input_size, 112)


def _module_names(model: nn.Module) -> list:
    return [n for n, _ in model.named_modules() if n]


def layer(model: nn.Module, name) -> nn.Module:
    """The module for a dotted layer name (``"features.28"``, ``"layer4.2"``, ``"inception4e"``).

    A module of the model is returned as is. An unknown name (or a module that is not part of
    the model) raises ``ValueError`` listing the valid names.
    """
    _check_model(model)
    if isinstance(name, nn.Module):
        if any(m is name for m in model.modules()):
            return name
        raise ValueError(f"the module {type(name).__name__} is not part of this model; "
                         f"give one of its layers or a dotted name: {', '.join(_module_names(model))}")
    if not isinstance(name, str):
        raise TypeError(f"a layer is a module or a dotted name, got {type(name).__name__}")
    if name:
        found = _submodule(model, name)        # follows the dots: no walk over the whole model
        if found is not None:
            return found
    raise ValueError(f"unknown layer {name!r} for {info(model).name}; valid names: "
                     f"{', '.join(_module_names(model))}")


def _submodule(model: nn.Module, name: str):
    """``model.get_submodule(name)`` (None where there is no such module), through the
    ``_modules`` dicts: a fraction of its cost, which counts on every call of a method."""
    m = model
    for part in name.split("."):
        m = m.__dict__["_modules"].get(part)
        if m is None:
            try:                                  # not a registered child: get_submodule decides
                return model.get_submodule(name)
            except AttributeError:
                return None
    return m


def layer_name(model: nn.Module, module) -> str:
    """The dotted name of a module of the model (the inverse of :func:`layer`)."""
    if isinstance(module, str):
        layer(model, module)
        return module
    names = _NAMES.setdefault(model, {})
    name = names.get(id(module))
    if name is not None:                  # found before: still this module's name? (the model may
        if _submodule(model, name) is module:   # have changed since; following the dots is cheap)
            return name
    for n, m in model.named_modules():    # a walk that builds every name: done once per module
        if m is module:
            names[id(module)] = n
            return n
    raise ValueError(f"the module {type(module).__name__} is not part of this model")


def _probe(model: nn.Module, modules, x: torch.Tensor | None = None) -> dict:
    """What each of ``modules`` outputs in one forward pass: ``{module: [(shape, dtype), ...]}``.

    One call per entry, in the order the calls happened (a module that runs more than once, like
    ResNet's shared ``relu``, has several); the dict lists the modules in the order of their first
    call, and a module that did not run is absent. The pass runs in eval mode under
    ``torch.no_grad()`` on ``x`` (default: one black image of side :func:`_probe_size`); the
    model's mode is restored and the probe's hooks removed on exit, also on error. The one
    shape-finding pass behind :func:`conv_layers`, :func:`channels`, :func:`describe` and the
    memory-aware batch of ``helpers.gradients``.
    """
    seen: dict = {}

    def record(m, _inputs, out):
        if isinstance(out, torch.Tensor):
            seen.setdefault(m, []).append((tuple(out.shape), out.dtype))

    handles = [m.register_forward_hook(record) for m in modules]
    modes = [(m, m.training) for m in model.modules()]      # each module's own (a frozen backbone)
    try:
        if x is None:
            size = _probe_size(model)
            p = next(model.parameters())
            x = torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype)
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return seen


def _forward_order(model: nn.Module, kinds) -> list:
    """Names of modules of the given kinds in the order a forward pass runs them."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, kinds)}
    try:
        return [names[m] for m in _probe(model, names)]
    except Exception:
        return list(names.values())


def conv_layers(model: nn.Module) -> list:
    """Dotted names of the model's ``nn.Conv2d`` layers, in forward order."""
    return _forward_order(model, nn.Conv2d)


def channels(model: nn.Module, name) -> int:
    """Number of output channels of a layer (conv, linear, block: found by a forward pass)."""
    module = layer(model, name)
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    calls = _probe(model, [module]).get(module)
    if not calls:
        raise ValueError(f"layer {layer_name(model, module)!r} does not run in a forward pass in eval mode "
                         f"(or gives no tensor); choose another, e.g. {last_conv_layer(model)!r}")
    return int(calls[0][0][1])


def relu_outputs(model: nn.Module) -> list:
    """Dotted names of layers whose output is non-negative and that run once per forward pass.

    Shallow to deep, for the layer pickers of the CAM chapters (Grad-CAM++ and LayerCAM assume
    non-negative activations; a conv's own output is signed). Sequential nets (VGG, AlexNet,
    ShapesNet): the ReLU modules of ``features``. Otherwise the blocks, which end in a ReLU
    or concatenate ReLU'd branches: ResNet's ``layer1``-``layer4`` (a block's ``relu`` module runs
    three times per pass, which ``cam`` refuses), GoogLeNet's ``inception*`` (functional ReLUs),
    Inception v3's ``Mixed*``. Explained in chapter 13, Grad-CAM++.
    """
    feats = getattr(model, "features", None)
    if isinstance(feats, nn.Sequential):
        return [f"features.{i}" for i, m in enumerate(feats) if isinstance(m, nn.ReLU)]
    return [n for n, _ in model.named_children() if n.startswith(("layer", "inception", "Mixed"))]


def last_conv_layer(model: nn.Module) -> str:
    """The name of the module whose output is the last convolutional feature map.

    For the book's models: the block right before global pooling (VGG/AlexNet: ``features``'s
    last ReLU; ResNet: ``layer4``; GoogLeNet: ``inception5b``; Inception v3: ``Mixed_7c``;
    ShapesNet: ``features``' last ReLU).
    """
    kind = type(model).__name__
    if kind == "ResNet":
        return "layer4"
    if kind == "GoogLeNet":
        return "inception5b"
    if kind == "Inception3":
        return "Mixed_7c"
    feats = getattr(model, "features", None)
    if isinstance(feats, nn.Sequential):
        for i in range(len(feats) - 1, -1, -1):
            if isinstance(feats[i], (nn.ReLU, nn.Conv2d)):
                return f"features.{i}"
    return conv_layers(model)[-1]


def scores(out) -> torch.Tensor:
    """The class scores ``[N, classes]`` of a forward pass's result: the tensor itself, or the
    scores inside the tuple (or named tuple) that GoogLeNet and Inception v3 return in training mode."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ValueError(f"the model returned {type(out).__name__}, not a tensor of class scores")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, k: int = 5):
    """Top-k predictions: a list (one per image) of ``(index, name, probability)`` tuples.

    ``x`` a normalised batch ``[N, 3, H, W]``; the model runs in eval mode (its own modes restored)."""
    from . import hooks

    x = check_batch(model, x)
    names = class_names(model)
    with hooks.evaluated(model):
        probs = torch.softmax(scores(model(x)).float(), dim=1).cpu()
    top = probs.topk(min(positive_int(k, 'k'), probs.shape[1]), dim=1)
    return [[(int(i), names[int(i)], float(v)) for v, i in zip(vs, ids)]
            for vs, ids in zip(top.values, top.indices)]


def describe(model: nn.Module, names: Sequence[str] | None = None) -> list:
    """(name, type, output shape) for each conv layer (or the given layers), from one forward pass."""
    names = list(names) if names is not None else conv_layers(model)
    modules = [layer(model, n) for n in names]
    p = next(model.parameters())
    size = info(model).input_size
    seen = _probe(model, modules, torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))
    return [(n, type(m).__name__, seen[m][0][0][1:] if m in seen else None) for n, m in zip(names, modules)]
