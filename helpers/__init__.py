"""helpers: the single source of the code that the chapters of the book show and run.

Every technique of the book lives here once; chapters import the modules by namespace
(``from helpers import cam`` then ``cam.grad_cam(...)``) so a reader always sees where a
name comes from. Modules are imported lazily, so ``import helpers`` stays fast.
"""
from __future__ import annotations

import importlib
import inspect
import os
import random

__all__ = [
    "setup",
    "full_float32",
    "show_source",
    "device",
    "models",
    "images",
    "hooks",
    "plots",
    "widgets",
    "shapes",
    "gradients",
    "cam",
    "features",
    "synthesis",
    "segmentation",
    "metrics",
]

_SUBMODULES = {
    "models", "images", "hooks", "plots", "widgets", "shapes", "gradients", "cam",
    "features", "synthesis", "segmentation", "metrics", "assignments",
}


def __getattr__(name):  # lazy submodules: helpers.cam works without importing everything
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'helpers' has no attribute {name!r}")


def device():
    """The device the chapters use: CUDA when available, else the CPU.

    Explained in chapter 00, Models and images.
    """
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def full_float32():
    """Full float32 on a GPU too: TF32 off for cuDNN's convolutions and for matrix products.

    By default cuDNN runs convolutions in TF32 on Ampere and newer GPUs (about 1e-3 relative
    error), more than the chapters' checks allow where they compare two computations of the same
    quantity (a walkthrough and its helper, relevance conservation). :func:`setup` calls this; the
    test suite too. Returns a function that puts the previous settings back.
    """
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    def restore():
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    return restore


def setup(seed: int = 0, quiet: bool = False):
    """First cell of every chapter: seeds, plotting defaults, device; prints the world in use.

    Returns the device (CUDA when available, else CPU). Computations stay in full float32 on a
    GPU (TF32 off), so that the chapters' checks hold there as on the CPU. Explained in chapter 00.
    """
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        import matplotlib as mpl

        mpl.rcParams.update({
            "figure.dpi": 100,
            "savefig.dpi": 100,
            "figure.figsize": (8, 4),
            "axes.titlesize": 10,
            "font.size": 10,
            "image.interpolation": "nearest",
        })
    except ImportError:  # pragma: no cover - matplotlib is a requirement
        pass
    full_float32()
    dev = device()
    if not quiet:
        from . import models

        print(f"torch {torch.__version__} | device: {dev} | world: {models.world_description()}")
    return dev


def show_source(obj) -> None:
    """Display the real source code of a helper, syntax-highlighted.

    Works in Jupyter, Colab and the rendered HTML book (the highlighted HTML is stored in
    the notebook's output; a plain-text copy is kept for terminals). Explained in chapter 00.
    """
    source = inspect.getsource(obj)
    try:
        from IPython.display import Code, display

        module = inspect.getmodule(obj)
        where = f"# {module.__name__}.{obj.__qualname__}" if module else ""
        display(Code(where + "\n" + source if where else source, language="python"))
    except ImportError:  # pragma: no cover - outside IPython
        print(source)


def offline() -> bool:
    """True when the environment forces the offline world (``CNNVIS_OFFLINE=1``)."""
    return os.environ.get("CNNVIS_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
