"""Plots: gradients as images, heatmap overlays, and grids of images with titles.

Explained in chapter 02, Vanilla backpropagation (gradient images) and chapter 10, CAM (overlays).
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch

COLORMAPS = {
    "jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS, "magma": cv2.COLORMAP_MAGMA, "hot": cv2.COLORMAP_HOT,
    "plasma": cv2.COLORMAP_PLASMA, "parula": cv2.COLORMAP_PARULA, "bone": cv2.COLORMAP_BONE,
}


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _chw_to_hwc(grad) -> np.ndarray:
    """``[3, H, W]`` (or ``[1, 3, H, W]``) -> ``[H, W, 3]``. A tensor is always channels-first (the
    book's layout), also where its shape alone would allow both readings: a 3 x 3 patch ``[3, 3, 3]``,
    a 3-pixel-wide crop ``[3, H, 3]``. An array is read as ``[H, W, 3]`` when it ends in 1 or 3."""
    channels_first = isinstance(grad, torch.Tensor)
    g = _np(grad)
    if g.ndim == 4:
        if g.shape[0] != 1:
            raise ValueError(f"one image at a time: got a batch of {g.shape[0]}; index it first")
        g = g[0]
    if g.ndim == 3 and g.shape[0] in (1, 3) and (channels_first or g.shape[-1] not in (1, 3)):
        g = g.transpose(1, 2, 0)
    return g


def gradient_image(grad, percentile: float = 99.0) -> np.ndarray:
    """Signed input-space map ``[3, H, W]`` -> colour image ``[H, W, 3]`` in [0, 1].

    Zero maps to grey 0.5; values are scaled by the ``percentile`` of their absolute values
    and clipped, so a few extreme pixels do not wash the picture out.
    """
    g = _chw_to_hwc(grad).astype(np.float64)
    scale = np.percentile(np.abs(g), percentile)
    if scale <= 0:
        return np.full(g.shape, 0.5)
    return np.clip(0.5 + 0.5 * g / scale, 0.0, 1.0)


def grayscale(grad, percentile: float = 99.0) -> np.ndarray:
    """Signed ``[3, H, W]`` map -> ``[H, W]`` in [0, 1]: sum of absolute values over colour channels."""
    g = _chw_to_hwc(grad).astype(np.float64)
    g = np.abs(g).sum(axis=-1) if g.ndim == 3 else np.abs(g)
    scale = np.percentile(g, percentile)
    if scale <= 0:
        return np.zeros(g.shape)
    return np.clip(g / scale, 0.0, 1.0)


def positive_negative(grad, percentile: float = 99.0):
    """Signed ``[3, H, W]`` map -> (positive part, negative part), each ``[H, W]`` in [0, 1].

    Both parts share one scale, so their strengths can be compared.
    """
    g = _chw_to_hwc(grad).astype(np.float64)
    g = g.sum(axis=-1) if g.ndim == 3 else g
    pos, neg = np.maximum(g, 0), np.maximum(-g, 0)
    scale = np.percentile(np.abs(g), percentile)
    if scale <= 0:
        return np.zeros(g.shape), np.zeros(g.shape)
    return np.clip(pos / scale, 0, 1), np.clip(neg / scale, 0, 1)


def normalize(m) -> np.ndarray:
    """Any map -> [0, 1] by min-max (a constant map becomes zeros)."""
    m = _np(m).astype(np.float64)
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def _one_map(m) -> np.ndarray:
    """``[H, W]`` (or ``[1, H, W]``) as a numpy map; a batch of maps is a ValueError saying so."""
    m = _np(m)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        what = f"a batch of {m.shape[0]} maps" if m.ndim == 3 else f"shape {m.shape}"
        raise ValueError(f"one map [H, W] at a time: got {what}; index it first (maps[0])")
    return m


def heatmap(m, colormap: str = "jet") -> np.ndarray:
    """A ``[H, W]`` map in [0, 1] -> RGB ``uint8`` image through an OpenCV colormap."""
    m = _one_map(m)
    if isinstance(colormap, str) and colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; the names: {', '.join(COLORMAPS)}")
    cmap = COLORMAPS[colormap] if isinstance(colormap, str) else colormap
    u8 = np.clip(np.nan_to_num(m) * 255.0, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cmap), cv2.COLOR_BGR2RGB)


def overlay(image, m, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend a ``[h, w]`` heatmap in [0, 1] over an RGB ``uint8`` image (resized to the image)."""
    image = _np(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be one RGB picture [H, W, 3], got shape {image.shape}; a normalised "
                         f"tensor becomes one with images.to_image(x, model=model)[0]")
    if image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    m = _one_map(m).astype(np.float32)
    if m.shape != image.shape[:2]:
        m = cv2.resize(m, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = heatmap(m, colormap).astype(np.float32)
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * heat, 0, 255).astype(np.uint8)


def outline(image, mask, color=(255, 255, 255), thickness: int = 1) -> np.ndarray:
    """Draw the contour of a boolean mask on a copy of an RGB ``uint8`` image."""
    out = np.ascontiguousarray(_np(image).copy())
    contours, _ = cv2.findContours(_np(mask).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, color, thickness)
    return out


def _as_displayable(img):
    a = _np(img)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return a


def _aspect(img) -> float:
    """Height / width of a picture as :func:`grid` draws it (kept within 1/4 and 4)."""
    a = _as_displayable(img)
    return min(4.0, max(0.25, a.shape[0] / a.shape[1])) if a.ndim >= 2 and a.shape[1] else 1.0


_DIVERGING = {"coolwarm", "bwr", "seismic", "RdBu", "RdBu_r", "PiYG", "PRGn", "BrBG", "PuOr", "RdGy",
              "RdYlBu", "RdYlGn", "Spectral", "coolwarm_r", "bwr_r", "seismic_r"}


def grid(images, titles=None, row_titles=None, ncols: int | None = None, size: float = 2.4,
         cmap="inferno", suptitle: str | None = None, colorbar: bool = False):
    """Show images in a grid and return the figure.

    ``images`` is a flat list (laid out in ``ncols`` columns) or a list of rows (the seeds'
    tables: rows are variants, columns are examples). Titles follow the same shape (a flat list
    for a flat grid, a list per row, or a single list used as column titles for the first row).
    2-D arrays are drawn with ``cmap`` in [0, 1]; RGB arrays as they are. No ticks. A 2-D array
    drawn with a diverging colormap (``"coolwarm"``, ``"bwr"``, ...) gets limits symmetric about
    zero, so that the middle colour means zero in every panel, also in one without negative
    values (else its zeros would take the colour of the most negative value). ``cmap`` is one
    colormap for every cell, or one per cell laid out like ``images`` (``None`` entries:
    ``"inferno"``), for a figure that mixes, say, a non-negative activation and a signed gradient.
    """
    import matplotlib.pyplot as plt

    rows = images if images and isinstance(images[0], (list, tuple)) else None
    per_cell = isinstance(cmap, (list, tuple))
    if rows is None:
        n = len(images)
        ncols = ncols or min(n, 6)
        nrows = math.ceil(n / ncols)
        cells = [list(images[r * ncols:(r + 1) * ncols]) for r in range(nrows)]
        flat_titles = list(titles) if titles is not None else [None] * n
        cell_titles = [flat_titles[r * ncols:(r + 1) * ncols] for r in range(nrows)]
        if per_cell:
            cmap = [list(cmap)[r * ncols:(r + 1) * ncols] for r in range(nrows)]
    else:
        cells = [list(r) for r in rows]
        nrows, ncols = len(cells), max(len(r) for r in cells)
        if titles is None:
            cell_titles = [[None] * len(r) for r in cells]
        elif titles and isinstance(titles[0], (list, tuple)):
            cell_titles = [list(t) for t in titles]
        else:
            cell_titles = [list(titles)] + [[None] * len(r) for r in cells[1:]]
    if per_cell and [len(r) for r in cmap] != [len(r) for r in cells]:
        raise ValueError("cmap must be one colormap name, or one per image laid out like the images")
    # each row as tall as its most upright picture (height / width), so wide pictures leave no gaps,
    # plus room for titles: a line for the titles of each row after the first that has them, and
    # the extra lines of titles of more than one line (else a row's titles touch the row above)
    aspect = [max([_aspect(a) for a in row if a is not None] or [1.0]) for row in cells]
    lines = [max([str(t).count("\n") for t in row if t] or [0]) for row in cell_titles]
    titled = sum(any(row) for row in cell_titles)
    height = size * sum(aspect) + 0.35 + 0.17 * (sum(lines) + max(0, titled - 1))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + (0.6 if row_titles else 0), height), squeeze=False)
    for r in range(nrows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cells[r]) or cells[r][c] is None:
                if c == 0 and row_titles is not None and r < len(row_titles):
                    ax.set_facecolor("none")      # empty, but keeps the row's title on its left
                    for s in ax.spines.values():
                        s.set_visible(False)
                else:
                    ax.axis("off")
                continue
            a = _as_displayable(cells[r][c])
            if a.ndim == 2:
                name = (cmap[r][c] or "inferno") if per_cell else cmap
                if name in _DIVERGING:
                    lim = float(np.abs(a).max()) or 1.0          # an all-zero panel: the middle colour
                    vmin, vmax = -lim, lim
                else:
                    vmin, vmax = (0, 1) if a.min() >= 0 and a.max() <= 1 else (0 if a.min() >= 0 else None, None)
                im = ax.imshow(a, cmap=name, vmin=vmin, vmax=vmax)
                if colorbar:
                    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            else:
                ax.imshow(np.clip(a, 0, 255 if a.dtype == np.uint8 else 1))
            t = cell_titles[r][c] if r < len(cell_titles) and c < len(cell_titles[r]) else None
            if t:
                ax.set_title(str(t), fontsize=9)
            for s in ax.spines.values():
                s.set_visible(False)
        if row_titles is not None and r < len(row_titles):
            axes[r][0].set_ylabel(str(row_titles[r]), fontsize=10, rotation=90)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show(images, titles=None, **kwargs):
    """:func:`grid` then ``plt.show()`` (so figures do not stack up in widgets)."""
    import matplotlib.pyplot as plt

    grid(images, titles, **kwargs)
    plt.show()
