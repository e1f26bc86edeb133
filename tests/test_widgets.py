"""helpers.widgets: pickers and the explorer (no frontend needed)."""
import io

import ipywidgets as W
import numpy as np
import pytest
from PIL import Image

from helpers import images, models, widgets


@pytest.fixture(scope="module")
def model():
    return models.load("shapesnet")


def test_pickers(model):
    ip = widgets.image_picker(model)
    assert len(ip.options) == len(images.examples(model)) and isinstance(ip.parse(ip.value), images.Example)
    cp = widgets.class_picker(model, 3)
    assert cp.parse(cp.value) == 3
    assert cp.parse("7: arrow") == 7 and cp.parse("arr") == 7  # half-typed text keeps the last class
    with pytest.raises(ValueError):
        widgets.class_picker(model, 10_000)
    lp = widgets.layer_picker(model)
    assert list(lp.options) == models.conv_layers(model) and lp.value == lp.options[-1]
    fp = widgets.filter_picker(model, lp, value=500)
    assert fp.max == models.channels(model, lp.value) - 1 and fp.value == fp.max
    lp.value = lp.options[0]  # the filter range follows the layer
    assert fp.max == models.channels(model, lp.options[0]) - 1


def test_explore_draws_defaults_and_redraws_on_change(model):
    calls = []
    lp = widgets.layer_picker(model)
    box = widgets.explore(lambda layer, k: calls.append((layer, k)), layer=lp, k=widgets.slider(3, 1, 9))
    assert calls == [(lp.value, 3)]
    lp.value = lp.options[0]
    assert calls[-1] == (lp.options[0], 3)
    assert box.children


def test_explore_with_run_button_waits(model):
    calls = []
    s = widgets.slider(0.5, 0.0, 1.0)
    box = widgets.explore(lambda a: calls.append(a), run_button=True, a=s)
    assert calls == []  # nothing runs before the button is pressed
    s.value = 0.7
    assert calls == []
    button = box.children[0].children[-1]
    button.click()
    assert calls == [0.7]


def test_upload_too_large_or_broken_is_reported(model):
    ip = widgets.image_picker(model)
    ip._on_upload({"new": [{"name": "x.jpg", "content": b"not an image"}]})
    assert "x.jpg" in ip.message.value and len(ip.options) == len(images.examples(model))
    ip._on_upload({"new": [{"name": "big.png", "content": b"0" * (images.MAX_BYTES + 1)}]})
    assert "too large" in ip.message.value


def test_upload_the_same_file_name_twice_and_names_shown_as_text(model):
    def png(side):
        buf = io.BytesIO()
        Image.fromarray(np.full((side, side + 10, 3), 90, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    ip = widgets.image_picker(model)
    for side, label in ((10, "upload: cat.png"), (20, "upload: cat.png (2)")):   # the second is selected
        ip._on_upload({"new": [{"name": "cat.png", "content": png(side)}]})
        assert ip.value.name == label and ip.value.image.shape == (side, side + 10, 3)
        assert ip.message.value == f"loaded cat.png ({side + 10} x {side})"
    # each upload has a name of its own (the explorers cache their work per image name)
    labels = [label for label, _ in ip.options]
    assert len(labels) == len(set(labels)) and labels[-2:] == ["upload: cat.png", "upload: cat.png (2)"]
    # ipywidgets 7 (Colab's): a dict from the file name to its metadata and content
    ip._on_upload({"new": {"dog.png": {"metadata": {"name": "dog.png", "size": 1}, "content": png(30)}}})
    assert ip.value.name == "upload: dog.png" and ip.value.image.shape == (30, 40, 3)
    ip._on_upload({"new": [{"name": "<b>x</b>.jpg", "content": b"not an image"}]})
    assert "<b>" not in ip.message.value and "&lt;b&gt;x&lt;/b&gt;.jpg" in ip.message.value


def test_picker_and_slider_arguments(model):
    with pytest.raises(ValueError, match="no example image 'no such image'; the examples: "):
        widgets.image_picker(model, value="no such image")
    first = images.examples(model)[0]
    assert widgets.image_picker(model, value=first.name).value is first
    s = widgets.slider(1, 0.01, 10, log=True)                      # an int start on a log scale
    assert isinstance(s, W.FloatLogSlider) and (s.min, s.max, s.value) == (-2, 1, 1)


def test_layer_and_filter_pickers_check_names_and_ranges(model):
    """A typo in a layer name was accepted (and failed later) or a TraitError. (A filter beyond the
    layer's count is clamped to its last one, by design: a chapter's filter number then works in both
    worlds; test_pickers checks it.)"""
    with pytest.raises(ValueError, match="features.16"):            # the valid names are listed
        widgets.layer_picker(model, value="feature.16")
    with pytest.raises(ValueError, match="features.16"):
        widgets.layer_picker(model, layers=["feature.16"])
    with pytest.raises(ValueError, match="layers is empty"):
        widgets.layer_picker(model, layers=[])
    with pytest.raises(ValueError, match=r"not one of the layers offered"):
        widgets.layer_picker(model, layers=["features.3"], value="features.6")
