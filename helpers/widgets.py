"""Widgets: pickers for image, class, layer, filter and parameters, and one ``explore``.

Explained in chapter 00, Models and images.

The explorer follows one rule: the plotting function is a plain function. A chapter calls it
once with the defaults (that figure is what the static book shows and what the tests run),
then ``explore(fn, ...)`` wires the same function to the controls for a live reader.
"""
from __future__ import annotations

import html
import traceback

import ipywidgets as W
from IPython.display import display

from . import images, models

_WIDE = W.Layout(width="420px")
_STYLE = {"description_width": "90px"}


class _Picker:
    """Mixin: ``parse`` turns the widget's raw value into what the plotting function gets."""

    companions: tuple = ()

    def parse(self, value):
        return value


class ImagePicker(_Picker, W.Dropdown):
    """Dropdown of the model's example images plus an upload button (size-bounded).

    The value passed to the plotting function is an :class:`helpers.images.Example`.
    """

    def __init__(self, model, value=None, **kwargs):
        options = [(e.name, e) for e in images.examples(model)]
        super().__init__(options=options, description="image", style=_STYLE, layout=_WIDE, **kwargs)
        if value is not None:
            found = [e for n, e in options if n == value or e is value]
            if not found:
                raise ValueError(f"no example image {value!r}; the examples: {', '.join(n for n, _ in options)}")
            self.value = found[0]
        self.upload = W.FileUpload(accept="image/*", multiple=False, description="upload")
        self.message = W.HTML()
        self.upload.observe(self._on_upload, names="value")
        self.companions = (W.HBox([self.upload, self.message]),)

    def _on_upload(self, change):
        files = change["new"]
        if not files:
            return
        if isinstance(files, dict):       # ipywidgets 7 (Colab): {name: {"metadata": {...}, "content": bytes}}
            name, f = next(iter(files.items()))
        else:                             # ipywidgets 8: a tuple of {"name": ..., "content": ...}
            f = files[0]
            name = f["name"] if isinstance(f, dict) else getattr(f, "name", "upload")
        content = f["content"] if isinstance(f, dict) else f.content
        try:
            data = bytes(content)
            if len(data) > images.MAX_BYTES:
                raise ValueError(f"{name}: {len(data) / 1e6:.1f} MB is too large; "
                                 f"accepted: images up to {images.MAX_BYTES / 1e6:.0f} MB")
            img = images.load(data, name=name)
        except ValueError as e:
            self.message.value = f"<span style='color:#b00'>{html.escape(str(e))}</span>"
            return
        self.message.value = f"loaded {html.escape(name)} ({img.shape[1]} x {img.shape[0]})"
        # a name of its own: the chapters' explorers keep their work per image name, and phones and
        # screenshots reuse file names (a second "photo.png" is "upload: photo.png (2)")
        taken = {label for label, _ in self.options}
        label, k = f"upload: {name}", 1
        while label in taken:
            k += 1
            label = f"upload: {name} ({k})"
        ex = images.Example(name=label, image=img, target=None)
        self.options = list(self.options) + [(ex.name, ex)]
        self.value = ex


class ClassPicker(_Picker, W.Combobox):
    """Searchable class picker: type part of a name ("tabby", "espresso", "star").

    The value passed to the plotting function is the class index (int).
    """

    def __init__(self, model, value: int = 0, **kwargs):
        self._names = models.class_names(model)
        options = [f"{i}: {n}" for i, n in enumerate(self._names)]
        models.check_target(model, value)
        super().__init__(options=options, value=options[int(value)], ensure_option=True,
                         placeholder="type to search a class", description="class", style=_STYLE,
                         layout=_WIDE, continuous_update=False, **kwargs)
        self._last = int(value)

    def parse(self, value):
        try:
            self._last = int(str(value).split(":", 1)[0])
        except ValueError:
            pass  # half-typed text: keep the last valid class
        return self._last


class LayerPicker(_Picker, W.Dropdown):
    """Dropdown of layer names (default: the conv layers, shallow to deep)."""

    def __init__(self, model, layers=None, value=None, **kwargs):
        layers = list(layers) if layers is not None else models.conv_layers(model)
        if not layers:
            raise ValueError("layers is empty: give layer names (e.g. models.conv_layers(model)), or None for the conv layers")
        for name in layers + ([] if value is None else [value]):
            models.layer(model, name)            # a typo is a ValueError listing the valid names
        if value is not None and value not in layers:
            raise ValueError(f"value {value!r} is not one of the layers offered: {', '.join(layers)}")
        super().__init__(options=layers, value=value if value is not None else layers[-1],
                         description="layer", style=_STYLE, layout=_WIDE, **kwargs)


class FilterPicker(_Picker, W.IntSlider):
    """Channel slider whose range follows a :class:`LayerPicker`."""

    def __init__(self, model, layer_picker: W.Dropdown | str, value: int = 0, **kwargs):
        self._model = model
        name = layer_picker.value if isinstance(layer_picker, W.Widget) else layer_picker
        n = models.channels(model, name)
        super().__init__(value=min(value, n - 1), min=0, max=n - 1, description="filter", style=_STYLE,
                         layout=_WIDE, continuous_update=False, **kwargs)
        if isinstance(layer_picker, W.Widget):
            layer_picker.observe(self._follow, names="value")

    def _follow(self, change):
        n = models.channels(self._model, change["new"])
        self.value = min(self.value, n - 1)
        self.max = n - 1


def image_picker(model, value=None):
    """Example images of the model's world, and an upload button."""
    return ImagePicker(model, value)


def class_picker(model, value: int = 0):
    """Searchable class picker over the model's class names (1000 for ImageNet)."""
    return ClassPicker(model, value)


def layer_picker(model, layers=None, value=None):
    """Layer dropdown (conv layers by default)."""
    return LayerPicker(model, layers, value)


def filter_picker(model, layer, value: int = 0):
    """Filter (channel) slider; its range follows ``layer`` (a layer picker or a name)."""
    return FilterPicker(model, layer, value)


def slider(value, lo, hi, step=None, description="", log=False):
    """An int or float slider that updates only on release."""
    kw = dict(value=value, min=lo, max=hi, description=description, style=_STYLE, layout=_WIDE,
              continuous_update=False)
    if not log and isinstance(value, int) and not isinstance(value, bool) and (step is None or isinstance(step, int)):
        return W.IntSlider(step=step or 1, **kw)
    if log:
        import math
        kw.update(value=value, min=math.log10(lo), max=math.log10(hi))
        return W.FloatLogSlider(step=step or 0.1, base=10, **kw)
    return W.FloatSlider(step=step or (hi - lo) / 100, **kw)


def dropdown(options, value=None, description=""):
    """A dropdown of fixed options."""
    options = list(options)
    if value is None:
        value = options[0][1] if isinstance(options[0], tuple) else options[0]
    return W.Dropdown(options=options, value=value, description=description, style=_STYLE, layout=_WIDE)


def _value(w):
    if isinstance(w, W.Widget):
        return w.parse(w.value) if isinstance(w, _Picker) else w.value
    return w


def explore(fn, run_button: bool = False, **controls):
    """Wire ``fn(**values)`` to the controls and draw it below them.

    ``controls`` are widgets (pickers, sliders) or fixed values. Sliders update on release
    (``continuous_update=False``); with ``run_button=True`` nothing runs until the button is
    pressed (for optimisations that take seconds; the chapter has already drawn the defaults by
    calling the function directly). Without a button the default output is drawn at once.
    Returns the container widget.
    """
    out = W.Output()
    wids = [w for w in controls.values() if isinstance(w, W.Widget)]
    for w in wids:
        if hasattr(w, "continuous_update"):
            w.continuous_update = False
    button = W.Button(description="Run", button_style="primary", icon="play") if run_button else None

    def render(*_):
        with out:
            out.clear_output(wait=True)
            try:
                fn(**{k: _value(v) for k, v in controls.items()})
                import matplotlib.pyplot as plt

                plt.show()
            except Exception:  # show the error in the output, keep the widget alive
                traceback.print_exc()

    if button is not None:
        button.on_click(render)
    else:
        for w in wids:
            w.observe(render, names="value")
    rows = []
    for w in wids:
        rows.append(w)
        rows.extend(getattr(w, "companions", ()))
    if button is not None:
        rows.append(button)
    box = W.VBox([W.VBox(rows), out])
    display(box)
    if button is None:  # with a Run button nothing runs until it is pressed
        render()
    return box
