"""helpers.deconvnet: the explicit reconstruction against the deconvnet rule, top activations, occlusion."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import deconvnet, hooks, images, models, shapes
from model_state import snapshot


@pytest.fixture(scope="module")
def net():
    return models.load("shapesnet")


@pytest.fixture(scope="module")
def scenes_x():
    x, y = shapes.batch(range(4))
    return x, y


@pytest.fixture(scope="module")
def vgg16():
    torch.manual_seed(0)
    return models._build_torchvision("vgg16", None).eval()


@pytest.fixture(scope="module")
def alexnet():
    torch.manual_seed(2)
    return models._build_torchvision("alexnet", None).eval()


def rule_reference(model, x, layer, channel, positions):
    """The deconvnet rule through autograd: backward hooks on every nn.ReLU pass clamp(grad_out, 0).

    Written independently of hooks.relu_rule and of deconvnet.reconstruct: the seed is built here,
    the forward pass is the model's own (stopped by an exception hook), the max-pool and conv
    backward passes are PyTorch's.
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    flags = [m.inplace for m in relus]
    out = {}

    def stop(_m, _i, o):
        out["a"] = o
        raise StopIteration

    def rule(_m, _gin, gout):
        return (gout[0].clamp(min=0),)

    handles = [m.register_full_backward_hook(rule) for m in relus]
    handles.append(models.layer(model, layer).register_forward_hook(stop))
    try:
        for m in relus:
            m.inplace = False
        xg = x.clone().requires_grad_(True)
        try:
            model(xg)
        except StopIteration:
            pass
        a = out["a"]
        seed = torch.zeros_like(a)
        for n, (r, c) in enumerate(positions):
            seed[n, channel, r, c] = a[n, channel, r, c].detach()
        (g,) = torch.autograd.grad(a, xg, seed)
    finally:
        for h in handles:
            h.remove()
        for m, f in zip(relus, flags):
            m.inplace = f
    return g


def argmax_positions(model, x, layer, channel):
    with torch.no_grad():
        a = hooks.forward_to(model, x, layer)[:, channel]
    w = a.shape[-1]
    return [(int(i) // w, int(i) % w) for i in a.flatten(1).argmax(1)]


def test_reconstruction_equals_deconvnet_rule_shapesnet(net, scenes_x):
    x, _ = scenes_x
    for layer in deconvnet.block_layers(net):
        channel = 1
        pos = argmax_positions(net, x, layer, channel)
        rec = deconvnet.reconstruct(net, x, layer, channel)
        ref = rule_reference(net, x, layer, channel, pos)
        assert rec.shape == x.shape and rec.device.type == "cpu"
        assert ref.abs().max() > 0
        torch.testing.assert_close(rec, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


def test_reconstruction_equals_relu_rule_gradient_on_vgg16_architecture(vgg16):
    """Random weights: the equality is a property of the operations, not of the weights."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    for layer, channel in [("features.3", 5), ("features.15", 7), ("features.29", 11)]:
        pos = argmax_positions(vgg16, x, layer, channel)
        rec = deconvnet.reconstruct(vgg16, x, layer, channel)
        with hooks.frozen(vgg16), hooks.relu_rule(vgg16, "deconvnet"):
            xg = x.clone().requires_grad_(True)
            a = hooks.forward_to(vgg16, xg, layer)
            seed = torch.zeros_like(a)
            for n, (r, c) in enumerate(pos):
                seed[n, channel, r, c] = a[n, channel, r, c].detach()
            (g,) = torch.autograd.grad(a, xg, seed)
        assert g.abs().max() > 0
        torch.testing.assert_close(rec, g, rtol=1e-5, atol=1e-6 * float(g.abs().max()))


def test_alexnet_overlapping_pools_and_strided_conv(alexnet):
    """AlexNet: 11x11 stride-4 conv (output padding needed) and overlapping 3x3/2 max-pools."""
    m = alexnet
    torch.manual_seed(2)
    x = torch.randn(1, 3, 99, 99)
    for layer in deconvnet.block_layers(m):
        pos = argmax_positions(m, x, layer, 3)
        rec = deconvnet.reconstruct(m, x, layer, 3)
        ref = rule_reference(m, x, layer, 3, pos)
        torch.testing.assert_close(rec, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max() + 1e-12))


def test_unpool_is_max_unpool_without_overlap_and_maxpool_backward_with_overlap():
    torch.manual_seed(3)
    x = torch.randn(2, 4, 12, 12)
    pool = nn.MaxPool2d(2)
    y, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    s = torch.randn_like(y)
    torch.testing.assert_close(deconvnet.unpool(s, idx, pool, (12, 12)),
                               F.max_unpool2d(s, idx, 2, 2, output_size=(12, 12)))
    # overlapping windows: a constant image makes one pixel win several windows
    pool3 = nn.MaxPool2d(3, 2)
    xc = torch.zeros(1, 1, 7, 7)
    xc[0, 0, 2, 2] = 1.0  # the centre pixel is in four 3x3 windows (stride 2) and wins them all
    xg = xc.clone().requires_grad_(True)
    y3, idx3 = F.max_pool2d(xg, 3, 2, return_indices=True)
    s3 = torch.ones_like(y3)
    (back,) = torch.autograd.grad(y3, xg, s3)
    mine = deconvnet.unpool(s3, idx3, pool3, (7, 7))
    torch.testing.assert_close(mine, back)
    assert float(mine[0, 0, 2, 2]) == 4.0  # the four contributions add up


def test_receptive_fields_of_vgg16(vgg16):
    """Known sizes: conv1_2 5, conv2_2 14, conv3_3 40, conv4_3 92, conv5_3 196 pixels."""
    for layer, size, pos in [("features.3", 5, (100, 100)), ("features.8", 14, (50, 50)),
                             ("features.15", 40, (28, 28)), ("features.22", 92, (14, 14)),
                             ("features.29", 196, (7, 7))]:
        t, l, b, r = deconvnet.receptive_field(vgg16, layer, pos, 448)
        assert (b - t, r - l) == (size, size), layer


def test_reconstruction_is_zero_outside_the_receptive_field(net, scenes_x):
    x, _ = scenes_x
    for layer in deconvnet.block_layers(net)[:3]:
        rec = deconvnet.reconstruct(net, x[:1], layer, 2, position=(5, 6))
        t, l, b, r = deconvnet.receptive_field(net, layer, (5, 6))
        outside = rec[0].clone()
        outside[:, t:b, l:r] = 0
        assert outside.abs().max() == 0


def test_block_layers(vgg16, alexnet):
    assert deconvnet.block_layers(vgg16) == [
        "features.3", "features.8", "features.15", "features.22", "features.29"]
    assert deconvnet.block_layers(alexnet) == ["features.1", "features.4", "features.11"]
    net = shapes.ShapesNet()
    names = deconvnet.block_layers(net)
    pools = [i for i, m in enumerate(net.features) if isinstance(m, nn.MaxPool2d)]
    assert len(names) == len(pools) + 1
    for name, end in zip(names, pools + [len(net.features)]):
        i = int(name.split(".")[1])
        assert isinstance(net.features[i], nn.ReLU) and isinstance(net.features[i - 1], nn.Conv2d)
        assert i == end - 1  # the ReLU right before the pool (or the end of features)


def test_position_and_channel(net, scenes_x):
    x, _ = scenes_x
    layer = "features.9"
    a = hooks.forward_to(net, x, layer).detach()
    pos = [(3, 4), (10, 2), (0, 0), (31, 31)]
    rec = deconvnet.reconstruct(net, x, layer, 5, position=pos)
    ref = rule_reference(net, x, layer, 5, pos)
    torch.testing.assert_close(rec, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max() + 1e-12))
    for n, (r, c) in enumerate(pos):
        if a[n, 5, r, c] == 0:
            assert rec[n].abs().max() == 0  # a dead activation reconstructs to nothing


def test_a_float64_batch_and_a_tensor_channel_are_accepted(net, scenes_x):
    """A float64 batch runs as the model's float32 (models.as_input), as in the other modules; a
    channel may be the 0-d index tensor that features.top_channels gives."""
    x, y = scenes_x
    x, y = x[:2], y[:2].tolist()
    layer = "features.9"
    rec = deconvnet.reconstruct(net, x, layer, 5)
    torch.testing.assert_close(deconvnet.reconstruct(net, x.double(), layer, torch.tensor(5)), rec)
    act, _ = deconvnet.forward_with_switches(net, x.double(), layer)
    assert act.dtype == torch.float32
    top = deconvnet.top_activations(net, x.double(), layer, 5, k=2, progress=False)
    assert [t.value for t in top] == [t.value for t in deconvnet.top_activations(net, x, layer, 5, k=2, progress=False)]
    torch.testing.assert_close(deconvnet.occlusion(net, x.double(), y, size=48, stride=40, progress=False),
                               deconvnet.occlusion(net, x, y, size=48, stride=40, progress=False))
    with pytest.raises(TypeError, match="channel must be an int"):
        deconvnet.reconstruct(net, x, layer, torch.tensor(5.0))


def test_top_activations(net):
    x, _ = shapes.batch(range(16))
    layer, channel = "features.9", 4
    top = deconvnet.top_activations(net, x, layer, channel, k=9, progress=False)
    a = hooks.forward_to(net, x, layer).detach()[:, channel]
    assert len(top) == 9
    vals = [t.value for t in top]
    assert vals == sorted(vals, reverse=True)
    assert abs(vals[0] - float(a.max())) < 1e-5
    for j, t in enumerate(top):
        r, c = t.position
        assert abs(float(a[t.index, r, c]) - t.value) < 1e-5
        tt, ll, bb, rr = t.box
        assert (bb - tt, rr - ll) == (t.box[2] - t.box[0],) * 2 == (top[0].box[2] - top[0].box[0],) * 2
        assert t.patch.shape == (bb - tt, rr - ll, 3) and t.patch.dtype == np.uint8
        inside = deconvnet.receptive_field(net, layer, t.position)  # clipped to the image
        picture = images.to_image(x[t.index], model=net)
        np.testing.assert_array_equal(t.patch[inside[0] - tt:inside[2] - tt, inside[1] - ll:inside[3] - ll],
                                      picture[inside[0]:inside[2], inside[1]:inside[3]])
        if j >= 3:
            continue
        ref = deconvnet.reconstruct(net, x[t.index:t.index + 1], layer, channel, position=t.position)[0]
        torch.testing.assert_close(t.reconstruction, ref)
        assert t.reconstruction_patch.shape[1:] == t.patch.shape[:2]
    # picks of one image are min_distance cells apart
    d = max(1, a.shape[-1] // 4)
    for i, t in enumerate(top):
        for u in top[:i]:
            if u.index == t.index:
                assert max(abs(u.position[0] - t.position[0]), abs(u.position[1] - t.position[1])) >= d


def occlusion_reference(model, x, target, size, stride):
    """One occluded copy at a time, no batching, the average over the squares that cover a pixel."""
    n, _, h, w = x.shape
    tops = sorted(set(list(range(0, h - size + 1, stride)) + [h - size]))
    lefts = sorted(set(list(range(0, w - size + 1, stride)) + [w - size]))
    out = np.zeros((n, h, w))
    cnt = np.zeros((h, w))
    with torch.no_grad():
        for i in range(n):
            for t in tops:
                for l in lefts:
                    xo = x[i:i + 1].clone()
                    xo[:, :, t:t + size, l:l + size] = 0.0
                    p = torch.softmax(model(xo), 1)[0, target[i]].item()
                    out[i, t:t + size, l:l + size] += p
                    if i == 0:
                        cnt[t:t + size, l:l + size] += 1
    return torch.tensor(out / cnt, dtype=torch.float32)


def test_occlusion_equals_reference_and_batching(net, scenes_x):
    x, y = scenes_x
    x, y = x[1:3], y[1:3].tolist()
    m = deconvnet.occlusion(net, x, y, size=48, stride=40, batch_size=7, progress=False)
    ref = occlusion_reference(net, x, y, 48, 40)
    assert m.shape == (2, 128, 128)
    torch.testing.assert_close(m, ref, rtol=1e-4, atol=1e-5)
    m1 = deconvnet.occlusion(net, x, y, size=48, stride=40, batch_size=64, progress=False)
    torch.testing.assert_close(m, m1, rtol=1e-4, atol=1e-6)
    assert 0 <= float(m.min()) and float(m.max()) <= 1


def test_occlusion_minimum_on_the_object(net):
    """The square hurts the class most when it covers the object (shapes world, most scenes)."""
    seeds = range(100, 112)
    ss = shapes.scenes(seeds)
    x, y = shapes.batch(seeds)
    m = deconvnet.occlusion(net, x, y, size=32, stride=16, progress=False)
    hits = 0
    for s, mm in zip(ss, m):
        r, c = np.unravel_index(int(mm.argmin()), mm.shape)
        mask = s.masks[0]
        near = F.max_pool2d(torch.tensor(mask, dtype=torch.float32)[None, None], 17, 1, 8)[0, 0] > 0
        hits += bool(near[r, c])
    assert hits >= 10, f"occlusion minimum on/near the object in only {hits} of 12 scenes"


def test_model_unchanged_and_errors(net, scenes_x, vgg16):
    x, y = scenes_x
    for model, inp in [(net, x[:1]), (vgg16, torch.randn(1, 3, 32, 32))]:
        before = snapshot(model)
        deconvnet.reconstruct(model, inp, deconvnet.block_layers(model)[1], 0)
        assert snapshot(model) == before
        with pytest.raises(ValueError, match="channels 0"):
            deconvnet.reconstruct(model, inp, deconvnet.block_layers(model)[0], 10_000)
        assert snapshot(model) == before
    before = snapshot(net)
    deconvnet.occlusion(net, x[:1], 0, size=64, stride=64, progress=False)
    deconvnet.top_activations(net, x, "features.4", 0, k=3, progress=False)
    assert snapshot(net) == before
    with pytest.raises(ValueError, match="outside"):
        deconvnet.reconstruct(net, x[:1], "features.14", 0, position=(16, 0))
    from helpers import features, segmentation

    for bad in (0, -2, 2.5):                     # a clear message, not range()'s or torch.cat's
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            deconvnet.top_activations(net, x, "features.4", 0, k=3, batch_size=bad, progress=False)
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            features.feature_maps(net, x, "features.4", batch_size=bad)
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            segmentation.segment(net, x, batch_size=bad)
    with pytest.raises(ValueError, match="not in features"):
        deconvnet.reconstruct(net, x[:1], "classifier", 0)
    with pytest.raises(ValueError, match="unknown layer"):
        deconvnet.reconstruct(net, x[:1], "features.99", 0)
    with pytest.raises(ValueError, match="stride"):
        deconvnet.occlusion(net, x[:1], 0, size=16, stride=32)
    with pytest.raises(ValueError, match="out of range"):
        deconvnet.occlusion(net, x[:1], 99)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        deconvnet.reconstruct(net, x[0], "features.1", 0)


def test_non_sequential_networks_raise():
    m = models._build_torchvision("resnet50", None).eval()
    with pytest.raises(ValueError, match="relu_rule"):
        deconvnet.reconstruct(m, torch.zeros(1, 3, 64, 64), "conv1", 0)
    with pytest.raises(ValueError, match="relu_rule"):
        deconvnet.top_activations(m, torch.zeros(1, 3, 64, 64), "layer4", 0)


def test_an_integer_empty_or_numpy_batch_is_refused_by_deconvnet_and_features():
    """What gradients, cam and metrics already refuse: a uint8 tensor ran and came back as uint8
    (deep_dream) or as a map of the wrong input, an empty batch failed deep in torch.cat."""
    from helpers import features
    net = models.load("shapesnet")
    x, _ = shapes.batch(range(1))
    bad = {"uint8": (x * 50).clamp(0, 255).to(torch.uint8), "empty": x[:0], "numpy": x.numpy()}
    for name, b in bad.items():
        for call in (lambda: deconvnet.forward_with_switches(net, b, "features.3"),
                     lambda: deconvnet.reconstruct(net, b, "features.3", 0),
                     lambda: deconvnet.occlusion(net, b, 0)):
            with pytest.raises(ValueError, match=r"normalised float batch \[N, 3, H, W\] with N >= 1"):
                call()
        for call in (lambda: features.feature_maps(net, b, "features.3"),
                     lambda: features.deep_dream(net, b, "features.3", steps=1, progress=False)):
            with pytest.raises((ValueError, TypeError), match=r"normalised"):
                call()
