"""Tests of helpers.images: reading every kind of image file, geometry, tensors, the photos.

All test images are generated here, into pytest's tmp_path (no binary fixtures in the repo).
"""
import io
import json
import re
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, features

from helpers import images

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def rng_image(h=24, w=32, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    f = io.BytesIO()
    img.save(f, fmt, **kw)
    return f.getvalue()


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def png_rgb16(a: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write those), encoded by hand."""
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def check_rgb(a, shape=None):
    assert isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    assert a.flags["C_CONTIGUOUS"]
    if shape is not None:
        assert a.shape[:2] == shape


# ---------------------------------------------------------------------------------- formats

LOSSLESS = ["PNG", "BMP", "TIFF"] + (["WEBP"] if features.check("webp") else [])


@pytest.mark.parametrize("fmt", LOSSLESS)
def test_lossless_formats_round_trip(tmp_path, fmt):
    a = rng_image()
    kw = {"lossless": True} if fmt == "WEBP" else {}
    path = write(tmp_path, f"img.{fmt.lower()}", encode(Image.fromarray(a), fmt, **kw))
    out = images.load(path)
    check_rgb(out, a.shape[:2])
    np.testing.assert_array_equal(out, a)
    np.testing.assert_array_equal(images.load(str(path)), a)  # str path too


def test_jpeg(tmp_path):
    a = np.zeros((16, 24, 3), np.uint8)
    a[:, :12] = (200, 40, 40)
    a[:, 12:] = (30, 60, 220)
    path = write(tmp_path, "img.jpg", encode(Image.fromarray(a), "JPEG", quality=95))
    out = images.load(path)
    check_rgb(out, (16, 24))
    assert np.abs(out[4:12, 2:8].astype(int) - (200, 40, 40)).max() < 12
    assert np.abs(out[4:12, 16:22].astype(int) - (30, 60, 220)).max() < 12


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 8), c).convert("P") for c in (RED, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = images.load(write(tmp_path, "anim.gif", data))
    check_rgb(out, (8, 10))
    assert (out == RED).all()


def test_bytes_and_memoryview_input():
    a = rng_image()
    data = encode(Image.fromarray(a), "PNG")
    np.testing.assert_array_equal(images.load(data), a)
    np.testing.assert_array_equal(images.load(bytearray(data)), a)
    np.testing.assert_array_equal(images.load(memoryview(data)), a)  # ipywidgets' upload
    np.testing.assert_array_equal(images.load(io.BytesIO(data)), a)


# ---------------------------------------------------------------------------------- modes


@pytest.mark.parametrize("mode", ["1", "L"])
def test_grayscale_becomes_rgb(tmp_path, mode):
    g = (np.arange(12 * 16).reshape(12, 16) % 256).astype(np.uint8)
    img = Image.fromarray(g).convert(mode)
    out = images.load(write(tmp_path, "gray.png", encode(img, "PNG")))
    check_rgb(out, (12, 16))
    expected = np.asarray(img.convert("L"))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


def test_rgba_is_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255  # red everywhere
    a[0, :, 3] = 0  # top row fully transparent
    a[1, :, 3] = 128  # half transparent
    a[2:, :, 3] = 255  # opaque
    out = images.load(write(tmp_path, "rgba.png", encode(Image.fromarray(a, "RGBA"), "PNG")))
    check_rgb(out, (4, 4))
    assert (out[0] == WHITE).all()
    assert (out[2:] == RED).all()
    assert (out[1, :, 0] == 255).all() and (np.abs(out[1, :, 1:].astype(int) - 127) <= 1).all()


def test_la_is_composited_on_white(tmp_path):
    a = np.zeros((2, 2, 2), np.uint8)  # black
    a[0, :, 1] = 0  # transparent
    a[1, :, 1] = 255  # opaque
    out = images.load(write(tmp_path, "la.png", encode(Image.fromarray(a, "LA"), "PNG")))
    assert (out[0] == WHITE).all() and (out[1] == 0).all()


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    p.putpixel((1, 2), 1)  # x=1, y=2 blue
    out = images.load(write(tmp_path, "pal.png", encode(p, "PNG")))
    check_rgb(out, (4, 4))
    assert tuple(out[0, 0]) == (0, 255, 0) and tuple(out[2, 1]) == BLUE
    # index 0 transparent: green turns white, blue stays
    out = images.load(write(tmp_path, "pal_t.png", encode(p, "PNG", transparency=0)))
    assert tuple(out[0, 0]) == WHITE and tuple(out[2, 1]) == BLUE
    out = images.load(write(tmp_path, "pal_t.gif", encode(p, "GIF", transparency=0)))
    assert tuple(out[0, 0]) == WHITE and tuple(out[2, 1]) == BLUE


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_gray_is_scaled_not_clipped(tmp_path, fmt):
    a = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(a)
    assert img.mode.startswith("I;16")
    out = images.load(write(tmp_path, f"deep.{fmt.lower()}", encode(img, fmt)))
    check_rgb(out, (1, 4))
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 1 and out[0, 3, 0] == 255
    assert abs(int(out[0, 2, 0]) - 128) <= 1
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()


def test_16bit_gray_png_with_a_transparent_level_is_white_there(tmp_path):
    img = Image.fromarray(np.array([[0, 65535, 30000]], dtype=np.uint16))
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=30000)        # tRNS: the grey level 30000 is transparent
    assert Image.open(io.BytesIO(buf.getvalue())).info.get("transparency") == 30000
    out = images.load(write(tmp_path, "deep_trns.png", buf.getvalue()))
    assert out[0, :, 0].tolist() == [0, 255, 255] and out[0, 2].tolist() == [255, 255, 255]


def test_16bit_rgb_png(tmp_path):
    a = np.zeros((2, 2, 3), np.uint16)
    a[0, 0] = (65535, 32768, 0)
    a[1, 1] = (0, 65535, 32768)
    out = images.load(write(tmp_path, "deep_rgb.png", png_rgb16(a)))
    check_rgb(out, (2, 2))
    assert np.abs(out[0, 0].astype(int) - (255, 128, 0)).max() <= 1
    assert np.abs(out[1, 1].astype(int) - (0, 255, 128)).max() <= 1


def test_32bit_int_and_float_gray(tmp_path):
    i = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), "I")
    out = images.load(write(tmp_path, "int.tif", encode(i, "TIFF")))
    assert tuple(out[0, :, 0]) == (0, 255)
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    out = images.load(write(tmp_path, "float.tif", encode(f, "TIFF")))
    assert abs(int(out[0, 1, 0]) - 128) <= 1 and out[0, 2, 0] == 255


def test_cmyk_jpeg(tmp_path):
    img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    out = images.load(write(tmp_path, "cmyk.jpg", encode(img, "JPEG", quality=95)))
    check_rgb(out, (8, 8))
    assert np.abs(out.astype(int) - RED).max() < 16


def test_exif_orientation(tmp_path):
    # stored 20 high x 40 wide, with a red top-left corner; orientation 6 = "rotate 90 degrees
    # clockwise to display": the shown image is 40 high x 20 wide, red at the top-right corner
    a = np.full((20, 40, 3), 255, np.uint8)
    a[:5, :5] = RED
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6
    path = write(tmp_path, "rotated.jpg", encode(img, "JPEG", quality=95, exif=exif.tobytes()))
    out = images.load(path)
    check_rgb(out, (40, 20))
    assert np.abs(out[1, 18].astype(int) - RED).max() < 40  # top-right
    assert (out[1, 1] > 200).all() and (out[38, 1] > 200).all() and (out[38, 18] > 200).all()


def test_pil_image_input():
    a = rng_image()
    np.testing.assert_array_equal(images.load(Image.fromarray(a)), a)


# ---------------------------------------------------------------------------------- errors

NAMED = re.compile(r"Accepted: .*PNG.*JPEG")


def assert_clear(excinfo, name):
    message = str(excinfo.value)
    assert name in message, message
    assert NAMED.search(message), message
    err = excinfo.value  # no PIL traceback chained to it
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "cat.jpg"
    with pytest.raises(FileNotFoundError, match="cat.jpg"):
        images.load(path)


def test_folder(tmp_path):
    with pytest.raises(ValueError, match="folder") as e:
        images.load(tmp_path)
    assert_clear(e, str(tmp_path))


def test_empty_file(tmp_path):
    with pytest.raises(ValueError, match="empty") as e:
        images.load(write(tmp_path, "empty.png", b""))
    assert_clear(e, "empty.png")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path, fmt):
    data = encode(Image.fromarray(rng_image(64, 64)), fmt)
    name = f"cut.{fmt.lower()}"
    with pytest.raises(ValueError, match="truncated") as e:
        images.load(write(tmp_path, name, data[: len(data) // 2]))
    assert_clear(e, name)


def test_truncated_file_fails_even_if_pil_is_told_to_allow_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = encode(Image.fromarray(rng_image(64, 64)), "JPEG")
    with pytest.raises(ValueError, match="truncated"):
        images.load(write(tmp_path, "cut.jpg", data[: len(data) // 2]))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is put back


def test_text_file_named_jpg(tmp_path):
    with pytest.raises(ValueError, match="text file") as e:
        images.load(write(tmp_path, "notes.jpg", b"this is not a picture\n" * 10))
    assert_clear(e, "notes.jpg")


def test_random_bytes(tmp_path):
    data = np.random.RandomState(1).randint(0, 256, 1000, dtype=np.uint8).tobytes()
    with pytest.raises(ValueError, match="not an image") as e:
        images.load(write(tmp_path, "noise.png", data))
    assert_clear(e, "noise.png")


def png_header_only(width, height) -> bytes:
    """A PNG of a few hundred bytes that declares width x height 1-bit pixels (its data holds
    only the first rows)."""
    raw = zlib.compress(b"\x00" * (width // 8 + 1) * 4)

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def test_decompression_bomb_png_made_by_pil(tmp_path):
    data = encode(Image.new("1", (8000, 8000)), "PNG")  # 64 megapixels in 8 KB
    assert len(data) < 100_000
    with pytest.raises(ValueError, match="too large") as e:
        images.load(write(tmp_path, "bomb.png", data))
    assert_clear(e, "bomb.png")


# 8000: above MAX_PIXELS, below PIL's own limit; 20000 and 100000: above PIL's limit too
@pytest.mark.parametrize("side", [8000, 20000, 100_000])
def test_decompression_bomb(tmp_path, side, monkeypatch):
    data = png_header_only(side, side)
    assert len(data) < 1000

    def no_decoding(self):
        raise AssertionError("the pixels were decoded before the size was checked")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ValueError, match="too large") as e:
        images.load(write(tmp_path, "bomb.png", data))
    assert_clear(e, "bomb.png")


def test_too_many_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_BYTES", 1000)
    data = encode(Image.fromarray(rng_image(64, 64)), "PNG")
    assert len(data) > 1000
    with pytest.raises(ValueError, match="too many bytes") as e:
        images.load(write(tmp_path, "big.png", data))
    assert_clear(e, "big.png")
    with pytest.raises(ValueError, match="too many bytes") as e:
        images.load(data, name="upload.png")
    assert_clear(e, "upload.png")


def test_upload_errors_name_the_upload():
    with pytest.raises(ValueError, match="uploaded image"):
        images.load(b"GIF89a broken")
    with pytest.raises(ValueError, match="holiday.png"):
        images.load(b"\x89PNG\r\n\x1a\n broken", name="holiday.png")


def test_wrong_type():
    with pytest.raises(TypeError):
        images.load(42)


# ---------------------------------------------------------------------------------- geometry


def test_resize_shorter_side_and_exact():
    a = rng_image(30, 60)
    out = images.resize(a, 15)
    assert out.shape == (15, 30, 3) and out.dtype == np.uint8
    assert images.resize(rng_image(60, 30), 15).shape == (30, 15, 3)
    assert images.resize(a, (7, 9)).shape == (7, 9, 3)
    np.testing.assert_array_equal(images.resize(a, 30), a)  # already that size: unchanged
    g = np.random.RandomState(0).rand(10, 20).astype(np.float32)
    assert images.resize(g, 5).shape == (5, 10)
    assert images.resize(np.zeros((10, 20, 2), np.float32) + 0.5, (4, 4)).shape == (4, 4, 2)
    with pytest.raises(ValueError):
        images.resize(a, 0)


def test_resize_pixels_are_pils_bilinear_resampling():
    """The pixels, not only the shape: PIL's own bilinear resize of the same array (width, height
    order), and a left-to-right ramp stays a left-to-right ramp (rows and columns not swapped)."""
    from PIL import Image as PILImage

    a = rng_image(30, 60)
    for size, (h, w) in ((15, (15, 30)), ((7, 9), (7, 9)), (45, (45, 90))):
        ref = np.asarray(PILImage.fromarray(a).resize((w, h), PILImage.BILINEAR))
        assert np.abs(images.resize(a, size).astype(int) - ref.astype(int)).max() <= 1, size
    ramp = np.repeat(np.repeat(np.linspace(0, 255, 40).astype(np.uint8)[None, :, None], 20, 0), 3, 2)
    out = images.resize(ramp, (10, 25)).astype(int)
    assert (np.diff(out[5, :, 0]) >= 0).all() and np.ptp(out[:, 0, 0]) <= 1 and out[5, -1, 0] - out[5, 0, 0] > 200


def test_center_crop():
    a = rng_image(10, 20)
    out = images.center_crop(a, 6)
    np.testing.assert_array_equal(out, a[2:8, 7:13])
    np.testing.assert_array_equal(images.center_crop(a, (10, 4)), a[:, 8:12])
    with pytest.raises(ValueError, match="larger"):
        images.center_crop(a, 12)


# ---------------------------------------------------------------------------------- tensors

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def test_to_tensor_values_and_round_trip():
    a = rng_image(20, 30)
    x = images.to_tensor(a, mean=MEAN, std=STD)
    assert x.shape == (1, 3, 20, 30) and x.dtype == torch.float32
    expected = (a[5, 7, 1] / 255 - MEAN[1]) / STD[1]
    assert abs(float(x[0, 1, 5, 7]) - expected) < 1e-5
    back = images.to_image(x, mean=MEAN, std=STD)
    assert back.shape == (1, 20, 30, 3) and back.dtype == np.uint8
    assert np.abs(back[0].astype(int) - a).max() <= 1
    single = images.to_image(x[0], mean=MEAN, std=STD)
    assert single.shape == (20, 30, 3)
    assert np.abs(single.astype(int) - a).max() <= 1


def test_to_tensor_size_resizes_and_crops():
    a = rng_image(40, 80)
    x = images.to_tensor(a, size=20, mean=MEAN, std=STD)
    assert x.shape == (1, 3, 20, 20)
    expected = images.center_crop(images.resize(a, 20), 20)
    assert np.abs(images.to_image(x, mean=MEAN, std=STD)[0].astype(int) - expected).max() <= 1
    assert images.to_tensor(a, size=(10, 12)).shape == (1, 3, 10, 12)
    square = rng_image(16, 16)  # already the input size: untouched
    back = images.to_image(images.to_tensor(square, size=16))
    assert np.abs(back[0].astype(int) - square).max() <= 1


def test_to_tensor_batch_and_inputs(tmp_path):
    a, b = rng_image(20, 30, 1), rng_image(30, 20, 2)
    x = images.to_tensor([a, b], size=16)
    assert x.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="different sizes"):
        images.to_tensor([a, b])
    path = write(tmp_path, "a.png", encode(Image.fromarray(a), "PNG"))
    torch.testing.assert_close(images.to_tensor(path), images.to_tensor(a))
    gray = a[..., 0]
    torch.testing.assert_close(images.to_tensor(gray),
                               images.to_tensor(np.repeat(gray[..., None], 3, 2)))


def test_to_tensor_arrays_of_other_dtypes_read_like_files():
    a = rng_image(6, 7)
    ref = images.to_tensor(a)
    torch.testing.assert_close(images.to_tensor(a / 255.0), ref)                  # floats in [0, 1]
    torch.testing.assert_close(images.to_tensor(a.astype(np.float32)), ref)       # floats in [0, 255]
    torch.testing.assert_close(images.to_tensor(a.astype(np.int64)), ref)         # integers 0..255
    torch.testing.assert_close(images.to_tensor(a.astype(np.uint16) * 257), ref)  # 16 bits, as a file
    normalised = images.to_tensor(a)[0].permute(1, 2, 0).numpy()
    with pytest.raises(ValueError, match="normalised tensor"):                    # was clipped to black
        images.to_tensor(normalised)
    for bad, match in ((np.full((4, 4, 3), np.nan), "NaN"), (a > 128, "boolean"),
                       (a.astype(np.int64) + 300, "spanning")):
        with pytest.raises(ValueError, match=match):
            images.to_tensor(bad)


def test_to_image_defaults_grad_and_clipping():
    a = rng_image(8, 8)
    x = images.to_tensor(a).requires_grad_(True)  # ImageNet statistics by default
    out = images.to_image(x * 1.0)  # a non-leaf that requires grad
    assert np.abs(out[0].astype(int) - a).max() <= 1
    wild = torch.full((3, 4, 4), 100.0)
    wild[:, 0] = -100.0
    out = images.to_image(wild)
    assert (out[1:] == 255).all() and (out[0] == 0).all()
    with pytest.raises(ValueError):
        images.to_image(torch.zeros(1, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_round_trip():
    a = rng_image(8, 8)
    x = images.to_tensor(a, device="cuda")
    assert x.is_cuda
    assert np.abs(images.to_image(x)[0].astype(int) - a).max() <= 1


def test_to_tensor_with_model_uses_its_info(monkeypatch):
    models = pytest.importorskip("helpers.models")
    fake = SimpleNamespace(input_size=12, mean=MEAN, std=STD, world="shapes", classes=["a"])
    monkeypatch.setattr(models, "info", lambda model: fake)
    model = torch.nn.Conv2d(3, 1, 1)
    a = rng_image(24, 36)
    x = images.to_tensor(a, model=model)
    assert x.shape == (1, 3, 12, 12) and x.device == torch.device("cpu")
    expected = images.center_crop(images.resize(a, 12), 12)
    assert np.abs(images.to_image(x, model=model)[0].astype(int) - expected).max() <= 1
    torch.testing.assert_close(x, images.to_tensor(a, size=12, mean=MEAN, std=STD))


def test_to_tensor_with_a_plain_imagenet_model():
    models = pytest.importorskip("helpers.models")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    info = models.info(model)
    x = images.to_tensor(rng_image(300, 400), model=model)
    assert x.shape == (1, 3, info.input_size, info.input_size)


# ---------------------------------------------------------------------------------- photos


def test_every_shipped_photo_loads():
    names = images.photo_names()
    assert {"chelsea", "coffee", "astronaut", "rocket", "cat_and_coffee"} <= set(names)
    for name in names:
        a = images.photo(name)
        check_rgb(a)
        assert min(a.shape[:2]) >= 224
        assert (images.IMAGES / f"{name}.jpg").stat().st_size < 250_000
    np.testing.assert_array_equal(images.photo("cat"), images.photo("chelsea.jpg"))
    with pytest.raises(ValueError, match="chelsea"):
        images.photo("no such photo")


def test_sources_lists_every_file():
    sources = (images.IMAGES / "SOURCES.md").read_text(encoding="utf-8")
    files = [p.name for p in images.IMAGES.iterdir() if p.name not in ("SOURCES.md",)]
    for name in files:
        if name == "examples.json":
            continue
        assert re.search(rf"^\| `{re.escape(name)}` \|", sources, re.M), f"{name} not in SOURCES.md"
    assert "composed by this project" in sources


def test_examples_json():
    from torchvision.models import VGG16_Weights

    categories = VGG16_Weights.IMAGENET1K_V1.meta["categories"]
    examples = json.loads((images.IMAGES / "examples.json").read_text(encoding="utf-8"))
    assert {e["file"] for e in examples} == {p.name for p in images.IMAGES.iterdir()
                                            if p.suffix == ".jpg"}
    for e in examples:
        assert (images.IMAGES / e["file"]).exists() and e["name"]
        if e["target"] is not None:
            assert categories[e["target"]] == e["label"]
        for t, label in zip(e.get("targets", []), e.get("labels", [])):
            assert categories[t] == label
    two = [e for e in examples if e["file"] == "cat_and_coffee.jpg"][0]
    assert two["targets"] == [281, 967]


def test_a_tensor_given_to_the_array_functions_says_to_use_to_image():
    """images.resize(x[0], 64) with a [3, H, W] tensor returned a (64, 2730, 128) array in silence."""
    x = torch.rand(3, 128, 128)
    with pytest.raises(TypeError, match=r"not a tensor \(3, 128, 128\).*images.to_image"):
        images.resize(x, 64)


def test_the_shared_examples_cannot_be_changed_by_a_cell():
    """examples() hands out the same cached objects to every call: a cell that painted into
    ``ex.image`` (or set ``ex.target``) changed the picture for every later cell and widget."""
    from helpers import models

    shapes_model = models.load("shapesnet")
    for world in (images._shapes_examples(), images._imagenet_examples()):
        assert world, "no examples"
        for ex in world:
            for a in (ex.image, ex.mask, ex.masks):
                if a is not None:
                    with pytest.raises(ValueError, match="read-only"):
                        a[0, 0] = 0
            with pytest.raises(AttributeError):
                ex.target = 0
            assert isinstance(ex.targets, tuple), ex          # no .append to the shared classes
    two = images.Example("made by hand", np.zeros((4, 4, 3)), 1, targets=[1, 2])
    assert two.targets == (1, 2) and "targets=[1, 2]" in repr(two)
    first = images.examples(shapes_model)[0]
    before = first.image.copy()
    mine = first.image.copy()                     # what a reader does to draw on one
    mine[:] = 0
    again = images.examples(shapes_model)[0]
    assert again is first and np.array_equal(again.image, before) and before.any()
    # the tensor made from a read-only example is the model's input as before, and writable
    x = images.to_tensor(first.image, shapes_model)
    x.add_(0)
