"""Images in, images out: reading any image file, resizing, and the tensors a model eats.

Explained in chapter 00, Models and images.

Everything a chapter does with a picture goes through this module:

* :func:`load` reads a file (or the bytes of an upload) into an RGB ``uint8`` array
  ``H x W x 3``, whatever the file holds: grayscale, transparency (composited on white),
  16-bit samples, a palette, CMYK, a camera's EXIF rotation.  A file that cannot be read
  gives a ``ValueError`` that names the file, the problem and the formats accepted.
* :func:`resize` and :func:`center_crop` are the two geometric steps of the standard
  ImageNet evaluation pipeline.
* :func:`to_tensor` turns one image (or a list) into the normalised batch ``[N, 3, H, W]``
  that a model takes; :func:`to_image` turns such a tensor back into ``uint8`` pictures.
* :func:`photo` and :func:`photo_names` give the example photos shipped in ``data/images``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from . import models

__all__ = [
    "DATA",
    "IMAGES",
    "MAX_PIXELS",
    "MAX_BYTES",
    "ACCEPTED",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "load",
    "resize",
    "center_crop",
    "to_tensor",
    "to_image",
    "photo",
    "photo_names",
]

#: The project's data folder (example photos, offline weights).
DATA = Path(__file__).resolve().parent.parent / "data"
#: The example photos, with ``SOURCES.md`` (origin, licence) and ``examples.json`` (targets).
IMAGES = DATA / "images"

#: Largest image accepted, in pixels (width x height), checked before the pixels are decoded:
#: a small file can declare a huge image (a "decompression bomb") that would fill the memory.
MAX_PIXELS = 50_000_000
#: Largest file (or upload) accepted, in bytes.
MAX_BYTES = 20 * 1024 * 1024

#: The file formats :func:`load` reads (what the error messages say is accepted).
ACCEPTED = "PNG, JPEG, GIF (first frame), BMP, TIFF, WebP"

#: Mean and standard deviation of the ImageNet training set per RGB channel, on the [0, 1]
#: scale: what torchvision's pretrained models were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PathOrBytes = Union[str, os.PathLike, bytes, bytearray, memoryview]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp"}


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _bad(name: str, problem: str) -> ValueError:
    return ValueError(f"{name}: {problem}. Accepted: {ACCEPTED} files of at most "
                      f"{MAX_BYTES // (1024 * 1024)} MB and {MAX_PIXELS // 1_000_000} megapixels")


def _read_bytes(source, name: str | None) -> tuple[bytes, str]:
    """The raw bytes of `source` and the name that error messages use for it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or f"uploaded image ({len(data):,} bytes)"
        if len(data) > MAX_BYTES:
            raise _bad(name, f"too many bytes ({len(data):,} > {MAX_BYTES:,})")
        return data, name
    if hasattr(source, "read"):  # an open binary file
        name = name or str(getattr(source, "name", "image stream"))
        data = source.read(MAX_BYTES + 1)
        if isinstance(data, str):
            raise _bad(name, "the stream is open in text mode; open it with 'rb'")
        if len(data) > MAX_BYTES:
            raise _bad(name, f"too many bytes (more than {MAX_BYTES:,})")
        return bytes(data), name
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"load() takes a path or the bytes of an image file, "
                        f"not {type(source).__name__}")
    path = Path(source).expanduser()
    name = name or str(source)
    if not path.exists():
        hint = ""
        if str(source).lower().startswith(("http://", "https://")):
            hint = "; load() reads files, not web addresses: download the image first"
        raise FileNotFoundError(f"{name}: no such file (looked for {path.resolve()}){hint}")
    if path.is_dir():
        raise _bad(name, "this is a folder, not an image file")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise _bad(name, f"too many bytes ({size:,} > {MAX_BYTES:,})")
    with open(path, "rb") as f:
        return f.read(MAX_BYTES + 1), name


def _what_is_it(data: bytes) -> str:
    """A short guess at what a file that PIL cannot identify holds, for the error message."""
    head = data[:512].lstrip()
    lower = head.lower()
    if lower.startswith(b"<svg") or (lower.startswith(b"<?xml") and b"<svg" in lower):
        return "this is an SVG drawing (a vector format); export it as PNG"
    if lower.startswith((b"<!doctype html", b"<html")):
        return "this is an HTML page, not an image (did a download save the web page?)"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif", b"ftypmsf1"):
        return "this is a HEIC/AVIF photo, which is not supported; convert it to JPEG or PNG"
    if head.startswith(b"%PDF"):
        return "this is a PDF document, not an image"
    try:
        head.decode("utf-8")
        if head and all(c >= 32 or c in (9, 10, 13) for c in head):
            return "this is a text file, not an image"
    except UnicodeDecodeError:
        pass
    return "not an image file in a format that can be read"


def _open(data: bytes, name: str) -> Image.Image:
    """Open and fully decode the first frame, turning every PIL failure into ValueError."""
    if not data:
        raise _bad(name, "the file is empty (0 bytes)")
    with warnings.catch_warnings():
        # PIL warns above Image.MAX_IMAGE_PIXELS and fails above twice that; both mean "too big".
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _bad(name, "the image is too large (a decompression bomb?)") from None
        except UnidentifiedImageError:
            raise _bad(name, _what_is_it(data)) from None
        except Exception as e:  # broken headers raise all sorts of things
            raise _bad(name, f"the file is corrupt or truncated ({_short(e)})") from None
        # Checked BEFORE decoding: the header alone says how large the image is.
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise _bad(name, f"the image is too large ({w} x {h} = {w * h:,} pixels "
                             f"> {MAX_PIXELS:,})")
        if w == 0 or h == 0:
            raise _bad(name, f"the image has no pixels ({w} x {h})")
        try:
            # Image.open stands on the first frame of an animated GIF/WebP or a multi-page
            # TIFF (n_frames is not asked: counting frames would read the whole file).
            # A truncated file must fail here, whatever a caller set globally.
            truncated_ok = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            try:
                img.load()
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _bad(name, "the image is too large (a decompression bomb?)") from None
        except Exception as e:
            message = _short(e)
            if "truncated" in message.lower() or isinstance(e, EOFError):
                detail = message.replace("image file is truncated", "").strip(" ()")
                raise _bad(name, "the file is truncated: it ends before all its pixels"
                                 + (f" ({detail})" if detail else "")) from None
            raise _bad(name, f"the file is corrupt or truncated ({message})") from None
    return img


def _short(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if len(text) < 200 else text[:200] + "..."


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite an RGBA uint8 array on a white background."""
    rgb = rgba[..., :3].astype(np.float32)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    out = rgb * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _high_depth_to_uint8(img: Image.Image) -> np.ndarray:
    """Gray images with more than 8 bits per sample (I;16*, I, F) to uint8 ``H x W``."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        a = a.astype(np.float64) / 257.0  # 65535 -> 255, 32768 -> 127.5 -> 128
    elif img.mode == "I":
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 65535:
            a = a / 257.0  # 16-bit samples (how PIL opens 16-bit PNG/PGM)
        else:
            a = (a - lo) / max(hi - lo, 1e-12) * 255.0
    else:  # "F": 32-bit float samples
        a = np.nan_to_num(a.astype(np.float64))
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 1:
            a = a * 255.0
        elif not (lo >= 0 and hi <= 255):
            a = (a - lo) / max(hi - lo, 1e-12) * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _pil_to_rgb(img: Image.Image, name: str) -> np.ndarray:
    """Any PIL image to an RGB uint8 array, transparency composited on white."""
    try:
        img = ImageOps.exif_transpose(img)  # a camera's "rotate me" tag
    except Exception:
        pass  # malformed EXIF: keep the pixels as stored
    mode = img.mode
    try:
        if mode in ("I", "F") or mode.startswith("I;16"):
            gray = _high_depth_to_uint8(img)
            key = img.info.get("transparency")
            if isinstance(key, (int, float)):          # a transparent grey level (PNG tRNS): white
                gray = np.where(np.asarray(img) == key, np.uint8(255), gray)
            return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
        has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in img.info
        if has_alpha:
            return _on_white(np.asarray(img.convert("RGBA")))
        if mode != "RGB":
            img = img.convert("RGB")
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    except Exception as e:
        raise _bad(name, f"cannot convert its {mode} pixels to RGB ({_short(e)})") from None


def load(source: PathOrBytes, name: str | None = None) -> np.ndarray:
    """Read an image file into an RGB ``uint8`` array of shape ``H x W x 3``.

    Explained in chapter 00, Models and images.

    `source` is a path (``str`` or ``Path``), the raw bytes of an image file (what an upload
    widget gives), an open binary file, or a ``PIL.Image``.  `name` is what error messages call
    it (useful for uploads: ``load(content, name="cat.jpg")``).

    Whatever the file holds comes back as 8-bit RGB: grayscale is repeated on the three
    channels, transparency (alpha or a palette's transparent colour) is composited on white,
    16-bit samples are scaled to 8 bits (65535 -> 255), palettes and CMYK are converted, a
    camera's EXIF orientation is applied, and of an animation only the first frame is kept.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (naming the file, the
    problem and what is accepted) for an empty, truncated, corrupt, non-image or too large
    file: more than :data:`MAX_BYTES` bytes or :data:`MAX_PIXELS` pixels, which is checked
    from the header before any pixel is decoded.
    """
    if isinstance(source, Image.Image):
        name = name or "PIL image"
        w, h = source.size
        if w * h > MAX_PIXELS:
            raise _bad(name, f"the image is too large ({w} x {h} pixels > {MAX_PIXELS:,})")
        return _pil_to_rgb(source, name)
    data, name = _read_bytes(source, name)
    img = _open(data, name)
    return _pil_to_rgb(img, name)


# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------


def _check_array(image, what: str, any_channels: bool = False) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = load(image)
    if isinstance(image, torch.Tensor):
        raise TypeError(f"{what}() takes an image array [H, W, 3] (uint8, as images.load gives), not a "
                        f"tensor {tuple(image.shape)}; a normalised batch becomes one with images.to_image(x, model=model)")
    a = np.asarray(image)
    if a.ndim not in (2, 3) or (a.ndim == 3 and not any_channels and a.shape[2] not in (1, 3, 4)):
        raise ValueError(f"{what}() takes an image array H x W or H x W x C "
                         f"({'C >= 1' if any_channels else 'C = 1, 3 or 4'}), "
                         f"got shape {tuple(a.shape)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{what}() got an empty image of shape {tuple(a.shape)}")
    return a


def _size_pair(size, what: str) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        pair = (int(size), int(size))
    else:
        try:
            pair = tuple(int(s) for s in size)
        except TypeError:
            pair = ()
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{what}: size must be a positive int or a pair (height, width) "
                         f"of positive ints, got {size!r}")
    return pair  # type: ignore[return-value]


def resize(image: np.ndarray, size) -> np.ndarray:
    """Resize an image array.

    Explained in chapter 00, Models and images.

    ``size`` an int: the shorter side becomes ``size`` and the aspect ratio is kept (the
    longer side is ``int(size * long / short)``, as in torchvision's ``Resize``).
    ``size`` a pair ``(height, width)``: exactly that size.  Resampling is bilinear with
    antialiasing (PIL), the standard ImageNet evaluation pipeline.  ``uint8`` arrays stay
    ``uint8``; other arrays (H x W or H x W x C, e.g. heatmaps) come back as float32.
    An image already of the requested size is returned as a copy, unchanged.
    """
    a = _check_array(image, "resize", any_channels=True)
    h, w = a.shape[:2]
    if isinstance(size, (int, np.integer)):
        if size < 1:
            raise ValueError(f"resize: size must be positive, got {size}")
        if h <= w:
            new_h, new_w = int(size), int(size * w / h)
        else:
            new_h, new_w = int(size * h / w), int(size)
    else:
        new_h, new_w = _size_pair(size, "resize")
    if (new_h, new_w) == (h, w):
        return a.copy()
    if a.dtype == np.uint8 and (a.ndim == 2 or a.shape[2] in (1, 3, 4)):
        channels = a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a
        out = np.asarray(Image.fromarray(channels).resize((new_w, new_h), Image.BILINEAR))
        return out.reshape(new_h, new_w, *a.shape[2:])
    f = a.astype(np.float32)
    planes = [f] if f.ndim == 2 else [f[..., c] for c in range(f.shape[2])]
    out = [np.asarray(Image.fromarray(p).resize((new_w, new_h), Image.BILINEAR))
           for p in planes]
    r = out[0] if f.ndim == 2 else np.stack(out, axis=2)
    if a.dtype == np.uint8:
        return np.clip(np.rint(r), 0, 255).astype(np.uint8)
    return r


def center_crop(image: np.ndarray, size) -> np.ndarray:
    """Cut the central ``size x size`` (int) or ``height x width`` (pair) part of an image.

    Explained in chapter 00, Models and images.

    The offsets are rounded as in torchvision's ``CenterCrop``.  A crop larger than the image
    raises ``ValueError`` (resize first: ``center_crop(resize(img, 224), 224)``).
    """
    a = _check_array(image, "center_crop", any_channels=True)
    ch, cw = _size_pair(size, "center_crop")
    h, w = a.shape[:2]
    if ch > h or cw > w:
        raise ValueError(f"center_crop: the crop {ch} x {cw} is larger than the image "
                         f"{h} x {w}; resize it first, e.g. center_crop(resize(image, {max(ch, cw)}), "
                         f"{size!r})")
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    return a[top:top + ch, left:left + cw].copy()


# --------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------


def _triple(v, what: str) -> tuple[float, float, float]:
    t = tuple(float(x) for x in (v.tolist() if hasattr(v, "tolist") else v))
    if len(t) != 3:
        raise ValueError(f"{what} must have 3 values (R, G, B), got {v!r}")
    return t  # type: ignore[return-value]


def _as_rgb_uint8(image) -> np.ndarray:
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        return load(image)
    if isinstance(image, torch.Tensor):
        raise ValueError(f"to_tensor() takes pictures (uint8 arrays H x W x 3, paths, bytes), "
                         f"not a tensor (shape {tuple(image.shape)}): a tensor made by "
                         f"to_tensor() is already the model's input; to_image() turns it back")
    a = _check_array(image, "to_tensor")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        if a.dtype != np.uint8:
            raise ValueError("to_tensor: an RGBA array must be uint8")
        a = _on_white(a)
    if a.dtype != np.uint8:
        a = _array_to_uint8(a)
    return a


def _array_to_uint8(a: np.ndarray) -> np.ndarray:
    """Pixels of another dtype to uint8, as :func:`load` reads files; ambiguous arrays are refused.

    uint16 samples are scaled (65535 -> 255, as a 16-bit file); other integers must be 0..255;
    floats in [0, 1] are pixels / 255, floats up to 255 are pixels. Negative values (most often a
    normalised tensor turned into an array), values above 65535 or 255, NaN and booleans (a mask,
    not a picture) raise a ValueError instead of being clipped into a wrong picture.
    """
    accepted = ("accepted: uint8 0..255, uint16 0..65535, other integers 0..255, floats in [0, 1] "
                "or [0, 255]")
    if a.dtype == np.bool_:
        raise ValueError(f"to_tensor() got a boolean array (a mask?), not a picture; {accepted}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"to_tensor() got an array of dtype {a.dtype}; {accepted}")
    f = a.astype(np.float64)
    if not np.isfinite(f).all():
        raise ValueError(f"to_tensor() got an image with NaN or infinite values; {accepted}")
    lo, hi = float(f.min()), float(f.max())
    if a.dtype == np.uint16:
        f = f / 257.0                                           # 65535 -> 255, as 16-bit files
    elif np.issubdtype(a.dtype, np.floating) and lo >= 0 and hi <= 1.0:
        f = f * 255.0                                           # float pictures in [0, 1]
    elif lo < 0 or hi > 255:
        hint = (" (negative values: is it a normalised tensor? images.to_image turns one back)"
                if lo < 0 else "")
        raise ValueError(f"to_tensor() got {a.dtype} pixels spanning [{lo:g}, {hi:g}]{hint}; {accepted}")
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def to_tensor(image, model=None, size=None, mean=None, std=None, device=None) -> torch.Tensor:
    """Turn an image (or a list of images) into the normalised batch a model takes.

    Explained in chapter 00, Models and images.

    `image` is an RGB ``uint8`` array ``H x W x 3`` (grayscale ``H x W`` and RGBA arrays are
    accepted too, and float arrays with values in [0, 1], which are taken as pixels / 255),
    a path or the bytes of a file (read with :func:`load`), or a list of these.
    Returns a float32 tensor ``[1, 3, H, W]`` (``[N, 3, H, W]`` for a list of N images)::

        x = (pixels / 255 - mean) / std      # per channel

    With `model`, the input size, mean and std come from ``helpers.models.info(model)`` and
    the tensor goes to the model's device.  `size` (default: the model's input size) an int:
    the shorter side is resized to `size`, then the centre ``size x size`` is cropped (an
    image already ``size x size`` is left untouched); `size` a pair ``(height, width)``: the
    image is resized to exactly that.  Without `model` and `size` the image keeps its size.
    Explicit `mean`, `std`, `device` win over the model's; without either, the ImageNet
    statistics :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` are used.
    """
    info = models.info(model) if model is not None else None
    if size is None and info is not None:
        size = int(info.input_size)
    if mean is None:
        mean = info.mean if info is not None else IMAGENET_MEAN
    if std is None:
        std = info.std if info is not None else IMAGENET_STD
    mean, std = _triple(mean, "mean"), _triple(std, "std")
    if min(abs(s) for s in std) == 0:
        raise ValueError(f"std must not contain 0, got {std}")
    if device is None:
        device = models.device(model) if isinstance(model, torch.nn.Module) else torch.device("cpu")

    batch = isinstance(image, (list, tuple))
    images = list(image) if batch else [image]
    if not images:
        raise ValueError("to_tensor: got an empty list of images")
    arrays = []
    for img in images:
        a = _as_rgb_uint8(img)
        if size is not None:
            if isinstance(size, (int, np.integer)):
                a = center_crop(resize(a, int(size)), int(size))
            else:
                a = resize(a, _size_pair(size, "to_tensor"))
        arrays.append(a)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"to_tensor: the images have different sizes {sorted(shapes)}; "
                         f"give size=... (or a model) to bring them to one size")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (x - m) / s
    return x.contiguous().to(device)


def to_image(x, mean=None, std=None, model=None) -> np.ndarray:
    """Undo :func:`to_tensor`: a normalised ``[3, H, W]`` or ``[N, 3, H, W]`` tensor to pictures.

    Explained in chapter 00, Models and images.

    Returns ``uint8`` numpy arrays ``H x W x 3`` (or ``N x H x W x 3``): ``x * std + mean``,
    scaled to [0, 255], rounded and clipped.  Works on CPU and GPU tensors, and on tensors that
    require grad (they are detached).  Mean and std: explicit, else from
    ``helpers.models.info(model)``, else the ImageNet statistics.
    """
    if (mean is None or std is None) and model is not None:
        info = models.info(model)
        mean = info.mean if mean is None else mean
        std = info.std if std is None else std
    mean = _triple(IMAGENET_MEAN if mean is None else mean, "mean")
    std = _triple(IMAGENET_STD if std is None else std, "std")
    t = torch.as_tensor(x).detach().to("cpu", torch.float32)
    if t.ndim not in (3, 4) or t.shape[-3] != 3:
        raise ValueError(f"to_image takes a tensor [3, H, W] or [N, 3, H, W], "
                         f"got shape {tuple(t.shape)}")
    shape = (3, 1, 1) if t.ndim == 3 else (1, 3, 1, 1)
    t = t * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)
    t = torch.nan_to_num(t).mul(255.0).round().clamp(0, 255).to(torch.uint8)
    t = t.permute(1, 2, 0) if t.ndim == 3 else t.permute(0, 2, 3, 1)
    return np.ascontiguousarray(t.numpy())


# --------------------------------------------------------------------------------------
# The example photos
# --------------------------------------------------------------------------------------


def _examples_json() -> list[dict]:
    path = IMAGES / "examples.json"
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _photo_files() -> list[Path]:
    if not IMAGES.is_dir():
        return []
    files = {p.name: p for p in IMAGES.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES}
    ordered = [files.pop(e["file"]) for e in _examples_json() if e.get("file") in files]
    return ordered + [files[k] for k in sorted(files)]


def photo_names() -> list[str]:
    """The short names of the example photos shipped in ``data/images`` (file names, no suffix).

    Explained in chapter 00, Models and images.
    """
    return [p.stem for p in _photo_files()]


def photo(name: str) -> np.ndarray:
    """Load a shipped example photo by short name, e.g. ``photo("chelsea")``.

    Explained in chapter 00, Models and images.

    `name` is a file name with or without its suffix (``"chelsea"``, ``"chelsea.jpg"``) or the
    human name given in ``data/images/examples.json`` (``"cat"``).  Returns what :func:`load`
    returns; an unknown name raises ``ValueError`` listing the names there are.
    """
    key = str(name).strip().lower()
    files = _photo_files()
    for p in files:
        if key in (p.stem.lower(), p.name.lower()):
            return load(p)
    for e in _examples_json():
        if str(e.get("name", "")).lower() == key and (IMAGES / e["file"]).exists():
            return load(IMAGES / e["file"])
    raise ValueError(f"no example photo called {name!r}; there are: "
                     f"{', '.join(p.stem for p in files) or '(none: data/images is missing)'}")


# ======================================================================================
# Examples for a model: examples(model) is written by the lead below this line.
# ======================================================================================


@dataclass(eq=False, frozen=True)   # compared by identity: the generated == would compare the image arrays
class Example:
    """One example image of a world, with what is known about it.

    ``target`` is the class to explain (an index, or None when the image has no single class);
    ``targets`` lists every class present, a tuple (two-object images have two); in the shapes world
    ``mask``/``masks`` are the exact pixels of the target object / of each object in ``targets``.

    The examples are made once per session and shared by every call of :func:`examples`, so they
    cannot be changed: the fields are frozen and the arrays read-only (``ex.image.copy()`` gives
    an array of your own to draw on). A cell that painted into ``ex.image`` would otherwise
    change the picture for every later cell and widget.

    Explained in chapter 00, Models and images.
    """

    name: str
    image: np.ndarray
    target: int | None
    label: str | None = None
    mask: np.ndarray | None = None
    targets: tuple = ()
    masks: np.ndarray | None = None

    def __post_init__(self):
        # a tuple, so that no cell can append to the shared example's classes either
        object.__setattr__(self, "targets", tuple(self.targets))

    def __repr__(self) -> str:
        return (f"Example({self.name!r}, image {self.image.shape[1]}x{self.image.shape[0]}, "
                f"target={self.target} {self.label!r}, targets={list(self.targets)})")


def _kept(a):
    """``a`` made read-only (an example's array, shared by every call of :func:`examples`)."""
    if a is not None:
        a.flags.writeable = False
    return a


#: seeds of the shapes world's example scenes start here (held-out range, never used in training)
EXAMPLE_SEED = 100


@functools.lru_cache(maxsize=4)
def _shapes_examples() -> tuple:
    from . import shapes

    out, seed = [], EXAMPLE_SEED
    wanted = list(range(len(shapes.CLASSES)))
    found = {}
    while wanted:
        s = shapes.scene(seed)
        c = s.labels[0]
        if c in wanted:
            found[c] = Example(f"{shapes.CLASSES[c]} (scene {seed})", _kept(s.image), c, shapes.CLASSES[c],
                               _kept(s.masks[0]), (c,), _kept(s.masks))
            wanted.remove(c)
        seed += 1
    out = [found[c] for c in range(len(shapes.CLASSES))]
    seed, used = EXAMPLE_SEED + 400, set()
    while len(out) < len(shapes.CLASSES) + 2:  # two two-object scenes with four different classes
        s = shapes.scene(seed, n_objects=2)
        seed += 1
        if used & set(s.labels):
            continue
        used |= set(s.labels)
        names = " and ".join(s.names)
        out.append(Example(f"{names} (scene {seed - 1}, two objects)", _kept(s.image), s.labels[0], s.names[0],
                           _kept(s.masks[0]), tuple(s.labels), _kept(s.masks)))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _imagenet_examples() -> tuple:
    names = models.imagenet_classes()
    out = []
    for e in _examples_json():
        path = IMAGES / e["file"]
        if not path.exists():
            continue
        target = e.get("target")
        targets = tuple(e.get("targets") or ([target] if target is not None else []))
        out.append(Example(e.get("name", path.stem), _kept(load(path)), target,
                           names[target] if target is not None else None, None, targets, None))
    return tuple(out)


def examples(model) -> list:
    """The example images of the model's world, as :class:`Example` objects.

    Shapes world: one single-object scene per class (the first held-out scene of that class from
    seed 100 on) and two scenes with two objects of different classes, each with exact masks.
    ImageNet world: the photos listed in ``data/images/examples.json`` (see SOURCES.md), among
    them one image with two objects of different classes.

    Explained in chapter 00, Models and images.
    """
    world = models.info(model).world
    return list(_shapes_examples() if world == "shapes" else _imagenet_examples())


def two_objects(model) -> Example:
    """The first example with two objects of different classes (for class-discriminative maps)."""
    return next(e for e in examples(model) if len(e.targets) >= 2)
