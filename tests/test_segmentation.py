"""helpers.segmentation: GrabCut from saliency seeds, and the DeconvNet (switches, unpooling,
training, loading, IoU)."""
import inspect
import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import models, segmentation, shapes


def _model_state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, model.training,
            [p.requires_grad for p in model.parameters()],
            [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
             for m in model.modules()])


def _same_state(a, b):
    sa, ta, ra, ha = a
    sb, tb, rb, hb = b
    return (ta == tb and ra == rb and ha == hb and sa.keys() == sb.keys()
            and all(torch.equal(sa[k], sb[k]) for k in sa))


# ---------------------------------------------------------------------------------------- seeds
def test_seeds_follow_the_quantiles():
    rng = np.random.default_rng(0)
    sal = rng.random((64, 80))
    seeds = segmentation.grabcut_seeds(sal, foreground=0.9, background=0.25)
    assert seeds.shape == sal.shape and seeds.dtype == np.uint8
    assert set(np.unique(seeds)) == {cv2.GC_BGD, cv2.GC_FGD, cv2.GC_PR_BGD}
    # an independent reference: rank the pixels
    order = np.argsort(np.argsort(sal, axis=None)).reshape(sal.shape) / (sal.size - 1)
    assert np.array_equal(seeds == cv2.GC_FGD, order >= 0.9 - 1e-9)
    assert np.array_equal(seeds == cv2.GC_BGD, order <= 0.25 + 1e-9)
    assert abs((seeds == cv2.GC_FGD).mean() - 0.1) < 0.01
    assert abs((seeds == cv2.GC_BGD).mean() - 0.25) < 0.01


def test_seeds_with_ties_stay_apart():
    """A map that is zero on most of the image (a Grad-CAM blob): both quantiles are 0."""
    m = np.zeros((50, 50))
    m[20:25, 20:25] = np.linspace(0.1, 1, 25).reshape(5, 5)   # 1 % of the pixels
    seeds = segmentation.grabcut_seeds(m)
    assert np.array_equal(seeds == cv2.GC_FGD, m > 0)
    assert np.array_equal(seeds == cv2.GC_BGD, m == 0)


@pytest.mark.parametrize("fg,bg", [(0.3, 0.5), (1.0, 0.3), (0.9, 0.0), (0.5, 0.5)])
def test_bad_quantiles(fg, bg):
    with pytest.raises(ValueError, match="background < foreground"):
        segmentation.grabcut_seeds(np.random.rand(8, 8), fg, bg)


def test_bad_inputs_are_named():
    sc = shapes.scene(1)
    with pytest.raises(ValueError, match="RGB uint8"):
        segmentation.grabcut_from_saliency(sc.image.astype(np.float32), np.random.rand(128, 128))
    with pytest.raises(ValueError, match="not a normalised"):
        segmentation.grabcut_from_saliency(torch.zeros(3, 128, 128), np.random.rand(128, 128))
    with pytest.raises(ValueError, match="image's resolution"):
        segmentation.grabcut_from_saliency(sc.image, np.random.rand(64, 64))
    with pytest.raises(ValueError, match="one map"):
        segmentation.grabcut_from_saliency(sc.image, np.random.rand(2, 128, 128))
    with pytest.raises(ValueError, match="NaN"):
        segmentation.grabcut_from_saliency(sc.image, np.full((128, 128), np.nan))
    with pytest.raises(ValueError, match="seeds"):
        segmentation.grabcut_from_saliency(sc.image, np.zeros((128, 128)))
    with pytest.raises(ValueError, match="iterations"):
        segmentation.grabcut_from_saliency(sc.image, np.random.rand(128, 128), iterations=0)


# -------------------------------------------------------------------------------------- grabcut
def _oracle_saliency(sc, seed=0, noise=0.9):
    """A noisy map: 1 on the object plus uniform noise in [0, noise) everywhere, so that the top
    5 % are the object's pixels and, for a small object, salient background pixels too."""
    m = sc.masks[0].astype(np.float64)
    return m + noise * np.random.default_rng(seed).random(m.shape)


def test_grabcut_from_saliency_finds_the_object_and_is_deterministic():
    ious, alone = [], []
    for s in range(6):
        sc = shapes.scene(s)
        sal = _oracle_saliency(sc, s)
        out = segmentation.grabcut_from_saliency(sc.image, torch.from_numpy(sal))
        assert out.dtype == bool and out.shape == sc.masks[0].shape
        assert np.array_equal(out, segmentation.grabcut_from_saliency(sc.image, sal))
        ious.append(segmentation.iou(out, sc.masks[0]))
        alone.append(segmentation.iou(sal >= np.quantile(sal, 0.95), sc.masks[0]))
    # the colour models fill the object and drop the salient background pixels: far better
    # than the foreground seeds themselves
    assert min(ious) > 0.95, ious
    assert np.mean(ious) > np.mean(alone) + 0.2


def test_seeds_set_the_colour_models_hard_seeds_stay():
    sc = shapes.scene(5)                       # a small object: the top 5 % spill off it
    sal = _oracle_saliency(sc, 1)
    seeds = segmentation.grabcut_seeds(sal)
    stray = (seeds == cv2.GC_FGD) & ~sc.masks[0]
    assert stray.sum() > 50                    # salient background pixels among the seeds
    soft = segmentation.grabcut_from_saliency(sc.image, sal, largest=False)
    assert (soft & stray).sum() < 0.05 * stray.sum()   # the paper: the cut decides every pixel
    hard = segmentation.grabcut_from_saliency(sc.image, sal, largest=False, hard=True)
    assert hard[seeds == cv2.GC_FGD].all() and not hard[seeds == cv2.GC_BGD].any()
    out = segmentation.grabcut_from_saliency(sc.image, sal, hard=True)
    n, _ = cv2.connectedComponents(out.astype(np.uint8), connectivity=8)
    assert n == 2  # background + one component
    assert out.sum() <= hard.sum() and not (out & ~hard).any()
    assert segmentation.iou(out, sc.masks[0]) > 0.9


def test_largest_component_reference():
    m = np.zeros((20, 20), bool)
    m[1:4, 1:4] = True        # 9 pixels
    m[10:15, 10:15] = True    # 25 pixels
    m[15, 15] = True          # touches the square diagonally: 8-connected
    out = segmentation.largest_component(m)
    assert out.sum() == 26 and not out[1:4, 1:4].any()
    assert not segmentation.largest_component(np.zeros((5, 5), bool)).any()


def test_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert segmentation.iou(a, b) == pytest.approx(4 / 12)
    assert segmentation.iou(a, a) == 1.0 and segmentation.iou(b & False, a & False) == 1.0
    with pytest.raises(ValueError):
        segmentation.iou(a, b[:2])


# ------------------------------------------------------------------------------------ DeconvNet
@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return segmentation.DeconvNet().eval()


def test_deconvnet_structure(net):
    x = torch.randn(2, 3, 64, 96)
    out = net(x)
    assert out.shape == (2, len(segmentation.CLASSES), 64, 96)
    pools = [m for m in net.modules() if isinstance(m, nn.MaxPool2d)]
    assert pools and all(p.return_indices for p in pools)
    assert any(isinstance(m, nn.MaxUnpool2d) for m in net.modules())
    deconvs = [m for m in net.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    convs = [m for m in net.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(deconvs) == len(convs)  # the decoder mirrors the encoder
    # block by block: decoder block i has as many deconvolutions as encoder block -1-i convolutions
    assert [sum(isinstance(m, nn.ConvTranspose2d) for m in b) for b in net.decoder] == \
        [sum(isinstance(m, nn.Conv2d) for m in b) for b in net.encoder][::-1]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) >= 2 * len(convs)
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.randn(1, 3, 60, 64))
    with pytest.raises(ValueError, match="multiple"):
        segmentation.DeconvNet(widths=(8, 8, 8, 8), convs=(1, 1, 1, 1), decoder_widths=(12, 8, 8, 8))


def test_decoder_unpools_at_the_switches(net):
    """Every unpooled map is zero except where the encoder's maxima came from."""
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        code, switches = net.encode(x)
        idx, size = switches[-1]
        y = net.deconv_fc6(net.fc7(net.fc6(code)))
        up = net.unpool_at(y, idx, size)
        # independent reference: scatter the values into a zero map by their flat indices
        ref = torch.zeros(y.shape[0], y.shape[1], size[0] * size[1])
        ref.scatter_(2, idx.flatten(2), y.flatten(2))
        assert torch.equal(up, ref.view_as(up))
        # 2 x 2 pooling with stride 2: one switch per window, so exactly 1 in 4 may be non-zero
        assert (up != 0).float().mean() <= 0.25 + 1e-6


def test_a_wide_decoder_shares_the_switches():
    torch.manual_seed(1)
    wide = segmentation.DeconvNet(widths=(4, 4, 8, 8), convs=(1, 1, 1, 1), fc=8,
                                  decoder_widths=(12, 8, 16, 8)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        code, switches = wide.encode(x)
        out, stages = wide.decode(wide.deconv_fc6(wide.fc7(wide.fc6(code))), switches, keep=True)
    assert out.shape == (2, 12, 32, 32) and wide(x).shape == (2, 10, 32, 32)
    u, _ = stages[-1]                          # unpooled at full resolution: 12 channels, 4 switches
    idx = switches[0][0]                       # [2, 4, 16, 16]
    assert u.shape[1] == 12
    for c in range(12):                        # channel c uses the switches of encoder channel c // 3
        allowed = torch.zeros(2, 32 * 32, dtype=torch.bool)
        allowed.scatter_(1, idx[:, c // 3].flatten(1), True)
        assert not (u[:, c].flatten(1)[~allowed] != 0).any()


def test_init_encoder_reproduces_the_classifier():
    sn = shapes.load_model("shapesnet")
    theirs = [m.out_channels for m in sn.features if isinstance(m, nn.Conv2d)]
    with pytest.raises(ValueError, match="at least the classifier's"):
        segmentation.deconvnet_like(sn, widths=(4, 16, 32, 96))
    torch.manual_seed(0)
    model = segmentation.deconvnet_like(sn, widths=(16, 24, 32, 96))
    calib, _ = segmentation.label_batch(range(shapes.TRAIN_SEED_START, shapes.TRAIN_SEED_START + 16), 1)
    segmentation.init_encoder(model, sn, calib)
    assert model.training  # mode restored
    model.eval()
    x, _ = segmentation.label_batch(range(20, 26), 2)
    with torch.no_grad():
        # independent reference: ShapesNet's own features, block by block, against ours
        h, ref, k = x, x, 0
        for i, block in enumerate(model.encoder):
            h = block(h)
            for m in sn.features[k:]:
                k += 1
                if isinstance(m, nn.MaxPool2d):
                    break
                ref = m(ref)
            c = ref.shape[1]
            assert torch.allclose(h[:, :c], ref, atol=1e-4), i
            if i < 3:
                ref = F.max_pool2d(ref, 2)
            h = model.pool(h)[0]
        # the extra channels of the first block are normalised on the calibration batch
        z = model.encoder[0][0](calib)
        bn = model.encoder[0][1]
        assert torch.allclose(bn.running_mean[8:], z[:, 8:].mean((0, 2, 3)), atol=1e-5)
        assert torch.allclose(bn.weight[8:], torch.ones(8)) and torch.allclose(bn.bias[8:], torch.zeros(8))
    assert theirs == [8, 16, 32, 32, 96, 96, 96]


def test_segment_is_argmax_and_leaves_model_unchanged(net):
    net.train()
    before = _model_state(net)
    x = torch.randn(5, 3, 64, 64)
    out = segmentation.segment(net, x, batch_size=2)
    assert _same_state(before, _model_state(net))
    assert out.dtype == torch.long and out.shape == (5, 64, 64)
    net.eval()
    with torch.no_grad():
        ref = torch.cat([net(x[i:i + 1]) for i in range(5)]).argmax(1)
    assert torch.equal(out, ref)
    assert torch.equal(segmentation.segment(net, x.double(), batch_size=2), ref)   # runs in the model's dtype
    net.train()
    before = _model_state(net)
    with pytest.raises(ValueError, match="divisible"):
        segmentation.segment(net, torch.randn(1, 3, 50, 50))
    assert _same_state(before, _model_state(net))
    net.eval()
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        segmentation.segment(net, torch.randn(3, 64, 64))


def test_label_map_and_batch():
    sc = shapes.scene(11, 3)
    lab = segmentation.label_map(sc)
    assert lab.dtype == np.int64 and lab.shape == sc.image.shape[:2]
    for cls, m in zip(sc.labels, sc.masks):
        assert (lab[m] == 1 + cls).all()
    assert (lab[~sc.masks.any(0)] == 0).all()
    x, y = segmentation.label_batch([11, 12], [3, 1])
    assert x.shape == (2, 3, 128, 128) and y.shape == (2, 128, 128)
    assert torch.equal(y[0], torch.from_numpy(lab))
    assert torch.allclose(x[1], shapes.batch([12])[0][0])


def test_confusion_and_class_iou_against_numpy():
    rng = np.random.default_rng(3)
    t = rng.integers(0, 4, (3, 10, 10))
    p = np.where(rng.random(t.shape) < 0.7, t, rng.integers(0, 4, t.shape))
    conf = segmentation.confusion(torch.from_numpy(p), torch.from_numpy(t), num_classes=5)
    ious = segmentation.class_iou(conf)
    for c in range(4):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        assert ious[c].item() == pytest.approx(inter / union)
    assert torch.isnan(ious[4])  # a class that never occurs


# ------------------------------------------------------------------------ training and loading
TINY = {"widths": (4, 4, 8, 8), "convs": (1, 1, 1, 1), "fc": 8, "decoder_widths": (8, 4, 8, 8)}


def test_training_is_deterministic_and_loads(tmp_path):
    kw = dict(steps=3, batch_size=2, lr=1e-2, held_out=2, progress=False, arch=TINY,
              pretrained=False, threads=1)
    m1 = segmentation.train(out_dir=tmp_path / "a", **kw)
    m2 = segmentation.train(out_dir=tmp_path / "b", **kw)
    s1 = torch.load(tmp_path / "a" / "shapes-deconvnet.pt", weights_only=True)
    s2 = torch.load(tmp_path / "b" / "shapes-deconvnet.pt", weights_only=True)
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    meta = json.loads((tmp_path / "a" / "shapes-deconvnet.json").read_text())
    assert meta["classes"] == ["background"] + shapes.CLASSES
    assert meta["held_out_mean_iou"] == m1["held_out_mean_iou"] == m2["held_out_mean_iou"]
    assert set(meta["held_out_per_class_iou"]) == set(meta["classes"])
    for key in ("steps", "train_seconds", "train_cpu_seconds", "torch", "train_seeds",
                "held_out_seeds", "seed", "threads", "architecture"):
        assert key in meta
    assert meta["train_seeds"][0] >= shapes.TRAIN_SEED_START
    model = segmentation.load_model(models_dir=tmp_path / "a")
    assert not model.training and model.widths == TINY["widths"]
    assert model.decoder_widths == TINY["decoder_widths"]
    assert all(torch.equal(model.state_dict()[k], s1[k]) for k in s1)
    assert not torch.are_deterministic_algorithms_enabled()  # restored


def test_training_from_scratch_with_the_default_architecture_gives_back_the_global_state(tmp_path):
    """pretrained=False with the default arch trains ShapesNet's encoder shape from random weights
    (it failed: the default decoder widths did not fit DeconvNet's default encoder); the caller's
    global random state and deterministic-algorithms settings are as they were."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        segmentation.train(out_dir=tmp_path, steps=1, batch_size=2, held_out=1, progress=False, threads=1,
                           pretrained=False)
        assert torch.equal(torch.rand(3), expected)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    model = segmentation.load_model(models_dir=tmp_path)
    assert model.widths == tuple(b[-1].out_channels for b in segmentation._classifier_blocks(shapes.ShapesNet()))
    assert model.decoder_widths == segmentation.DEFAULT_ARCH["decoder_widths"]


def test_training_lowers_the_loss(tmp_path):
    """30 steps of the tiny network: the pixel-wise cross-entropy goes down (2.30 -> 1.49 measured)."""
    losses = []
    segmentation.train(out_dir=tmp_path, steps=30, batch_size=4, lr=1e-2, held_out=1, progress=False, arch=TINY,
                       pretrained=False, threads=1, log=lambda step, loss, model: losses.append(loss))
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_unpooling_can_be_swapped_for_a_training_run(tmp_path, monkeypatch):
    """Chapter 23, exercise 1: patching DeconvNet.unpool_at reaches every unpooling of train."""
    kw = dict(steps=2, batch_size=2, lr=1e-2, held_out=1, progress=False, arch=TINY,
              pretrained=False, threads=1)
    segmentation.train(out_dir=tmp_path / "switches", **kw)
    sizes = []

    def nearest(self, h, idx, size):
        sizes.append(tuple(size))
        return F.interpolate(h, size=tuple(size))

    monkeypatch.setattr(segmentation.DeconvNet, "unpool_at", nearest)
    segmentation.train(out_dir=tmp_path / "nearest", **kw)
    # every decoder level, in training (2 steps) and in the held-out evaluation after it
    assert {(128, 128), (64, 64), (32, 32), (16, 16)} <= set(sizes) and len(sizes) >= 4 * 3
    a = torch.load(tmp_path / "switches" / "shapes-deconvnet.pt", weights_only=True)
    b = torch.load(tmp_path / "nearest" / "shapes-deconvnet.pt", weights_only=True)
    assert not torch.equal(a["score.weight"], b["score.weight"])   # another decoder, other gradients


def test_training_keeps_the_frozen_encoder(tmp_path):
    """Started from ShapesNet and frozen: after training, the encoder is still init_encoder's."""
    seen = []
    meta = segmentation.train(out_dir=tmp_path, steps=2, batch_size=2, held_out=1, progress=False,
                              threads=1, freeze_encoder=True,
                              log=lambda step, loss, model: seen.append(loss))
    assert len(seen) == 2 and all(np.isfinite(seen))
    assert meta["encoder_init"]["model"] == "shapesnet" and meta["encoder_init"]["frozen"]
    trained = segmentation.load_model(models_dir=tmp_path)
    sn = shapes.load_model("shapesnet")
    torch.manual_seed(0)
    fresh = segmentation.deconvnet_like(sn, widths=meta["architecture"]["widths"],
                                        decoder_widths=meta["architecture"]["decoder_widths"])
    a, b = meta["encoder_init"]["calibration_seeds"]
    segmentation.init_encoder(fresh, sn, segmentation.label_batch(range(a, b + 1), 1)[0])
    for (k, v), (k2, v2) in zip(trained.encoder.state_dict().items(), fresh.encoder.state_dict().items()):
        assert k == k2 and torch.allclose(v.float(), v2.float()), k
    assert not torch.equal(trained.score.weight, fresh.score.weight)  # the rest was trained


def test_missing_weights_name_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m helpers.segmentation train"):
        segmentation.load_model(models_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m helpers.segmentation train"):
        segmentation.metadata(models_dir=tmp_path)


def test_evaluate_rejects_training_seeds(net):
    with pytest.raises(ValueError, match="held-out"):
        segmentation.evaluate(net, [shapes.TRAIN_SEED_START])


# ---------------------------------------------------------------------- the shipped network
_SHIPPED = (shapes.MODELS_DIR / "shapes-deconvnet.pt").exists()


@pytest.mark.skipif(not _SHIPPED, reason="weights not trained: python -m helpers.segmentation train")
def test_shipped_network():
    pt = shapes.MODELS_DIR / "shapes-deconvnet.pt"
    assert pt.stat().st_size <= 10 * 2 ** 20
    model = models.load("shapes-deconvnet")
    assert not model.training and isinstance(model, segmentation.DeconvNet)
    assert models.class_names(model) == ["background"] + shapes.CLASSES
    meta = segmentation.metadata()
    assert meta["train_seconds"] <= 600 and meta["threads"] == 2
    assert meta["architecture"]["decoder_widths"] == list(segmentation.DEFAULT_ARCH["decoder_widths"])
    # the shipped weights are what the default command makes: `python -m helpers.segmentation train`
    defaults = {k: v.default for k, v in inspect.signature(segmentation.train).parameters.items()}
    for key in ("steps", "batch_size", "lr", "background_weight", "seed", "threads", "bf16"):
        assert meta[key] == defaults[key], key
    assert meta["encoder_init"]["model"] == "shapesnet"
    assert meta["encoder_init"]["frozen"] == defaults["freeze_encoder"]
    # a fresh look at held-out scenes that the json's 900 did not include
    result = segmentation.evaluate(model, range(500, 530), n_objects=(1, 3))
    assert result["mean_iou"] > 0.85 and result["pixel_accuracy"] > 0.98
    assert abs(result["mean_iou"] - meta["held_out_mean_iou"]) < 0.05


@pytest.mark.skipif(not _SHIPPED, reason="weights not trained: python -m helpers.segmentation train")
def test_shipped_network_reaches_the_bar():
    """Issue 7's bar: mean IoU over classes >= 0.9 on held-out scenes with 1-3 objects, measured
    again here on the json's 900 scenes (so the json cannot claim what the weights do not do)."""
    meta = segmentation.metadata()
    a, b = meta["held_out_seeds"]
    result = segmentation.evaluate(models.load("shapes-deconvnet"), range(a, b + 1),
                                   n_objects=tuple(meta["held_out_objects"]))
    assert result["scenes"] == meta["held_out_scenes"] >= 900
    assert result["mean_iou"] == pytest.approx(meta["held_out_mean_iou"], abs=1e-4)
    assert result["mean_iou"] >= 0.9, result["per_class"]
