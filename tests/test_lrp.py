"""helpers.lrp: the rules against independent references, conservation layer by layer, errors."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import lrp, models, shapes
from model_state import snapshot


@pytest.fixture(scope="module")
def net():
    return models.load("shapesnet")


@pytest.fixture(scope="module")
def data():
    x, y = shapes.batch(range(3))
    return x, y.tolist()


@pytest.fixture(scope="module")
def vgg16():
    torch.manual_seed(0)
    m = models._build_torchvision("vgg16", None).eval()
    for mod in m.modules():  # torchvision starts biases at 0: give them values, so they matter
        if getattr(mod, "bias", None) is not None:
            nn.init.uniform_(mod.bias, -0.05, 0.05)
    return m


def grad_x_input(model, x, target):
    xg = x.clone().requires_grad_(True)
    score = model(xg)[torch.arange(len(x)), torch.tensor(target)].sum()
    (g,) = torch.autograd.grad(score, xg)
    return g * x


def test_lrp0_equals_gradient_x_input(net, data, vgg16):
    """On ReLU networks with winner-take-all pooling, LRP-0 is gradient x input, biases or not."""
    x, y = data
    R = lrp.lrp(net, x, y, rule="zero")
    ref = grad_x_input(net, x, y)
    assert R.shape == x.shape and R.device.type == "cpu"
    torch.testing.assert_close(R, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    torch.manual_seed(1)
    xv = torch.randn(2, 3, 64, 64)
    R = lrp.lrp(vgg16, xv, [3, 7], rule="zero")
    ref = grad_x_input(vgg16, xv, [3, 7])
    torch.testing.assert_close(R, ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()))


def test_exact_conservation_without_biases(net, data):
    """LRP-0 on a bias-free copy: every layer passes on exactly the target logit."""
    x, y = data
    m = copy.deepcopy(net)
    for mod in m.modules():
        if getattr(mod, "bias", None) is not None:
            nn.init.zeros_(mod.bias)
    res = lrp.relevance_trace(m, x, y, rule="zero")
    logits = m(x)[torch.arange(3), torch.tensor(y)].detach()
    torch.testing.assert_close(res.score, logits)
    for L in res.layers:
        torch.testing.assert_close(L.below, logits, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(res.relevance.flatten(1).sum(1), logits, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rule", ["zero", "epsilon", "gamma", "composite"])
def test_bookkeeping_closes_at_every_layer(net, data, rule):
    """above = below + bias + stabiliser at every layer, and layers chain (one's below is the next's above)."""
    x, y = data
    res = lrp.relevance_trace(net, x, y, rule=rule)
    scale = float(res.score.abs().max())
    prev = res.score
    for L in res.layers:
        torch.testing.assert_close(L.above, prev, rtol=1e-5, atol=1e-6 * scale)
        assert float(L.residual.abs().max()) < 1e-4 * scale, (L.name, L.residual)
        if L.rule in ("pass", "winner-take-all", "zB"):
            assert float(L.bias.abs().max()) == 0
        prev = L.below
    torch.testing.assert_close(res.relevance.flatten(1).sum(1), prev, rtol=1e-4, atol=1e-6 * scale)


def test_rule_limits(net, data):
    x, y = data
    r0 = lrp.lrp(net, x, y, rule="zero")

    def rel_l1(a, b):
        return float((a - b).abs().sum() / b.abs().sum())

    assert rel_l1(lrp.lrp(net, x, y, rule="epsilon", epsilon=1e-7), r0) < 1e-3
    torch.testing.assert_close(lrp.lrp(net, x, y, rule="gamma", gamma=0.0), r0, rtol=1e-4,
                               atol=1e-6 * float(r0.abs().max()))
    # LRP-eps with a large epsilon absorbs more relevance than with a small one
    small = lrp.relevance_trace(net, x, y, "epsilon", epsilon=0.01)
    large = lrp.relevance_trace(net, x, y, "epsilon", epsilon=1.0)
    assert float(large.relevance.abs().sum()) < float(small.relevance.abs().sum())


def test_linear_rules_against_loops():
    """LRP-eps and LRP-gamma of one linear layer, written as explicit loops over j and k."""
    torch.manual_seed(4)
    a = torch.rand(2, 5)
    layer = nn.Linear(5, 3)
    R = torch.randn(2, 3)
    w, b = layer.weight.detach(), layer.bias.detach()
    eps_abs = 0.3
    ref = torch.zeros(2, 5)
    for n in range(2):
        for k in range(3):
            z = sum(a[n, j] * w[k, j] for j in range(5)) + b[k]
            den = z + eps_abs * (1 if z >= 0 else -1)
            for j in range(5):
                ref[n, j] += a[n, j] * w[k, j] / den * R[n, k]
    torch.testing.assert_close(lrp.linear_epsilon(a, w, b, R, eps_abs), ref)
    # propagate() uses epsilon relative to the rms of z: choose it so that the absolute value is eps_abs
    z = F.linear(a, w, b)
    rms = z.pow(2).mean(1).sqrt()
    for n in range(2):
        Rn, _, _ = lrp.propagate(layer, a[n:n + 1], R[n:n + 1], "LRP-eps", epsilon=eps_abs / float(rms[n]))
        torch.testing.assert_close(Rn[0], ref[n], rtol=1e-5, atol=1e-6)
    gamma = 0.5
    wg, bg = w + gamma * w.clamp(min=0), b + gamma * b.clamp(min=0)
    refg = torch.zeros(2, 5)
    for n in range(2):
        for k in range(3):
            z = sum(a[n, j] * wg[k, j] for j in range(5)) + bg[k]
            for j in range(5):
                refg[n, j] += a[n, j] * wg[k, j] / z * R[n, k]
    Rg, bias, _ = lrp.propagate(layer, a, R, "LRP-gamma", gamma=gamma)
    torch.testing.assert_close(Rg, refg, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(Rg.sum(1) + bias, R.sum(1), rtol=1e-4, atol=1e-5)


def test_zb_rule_against_unfold_reference():
    """zB on a conv layer, computed independently with unfold/fold over explicit patches."""
    torch.manual_seed(5)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    lo = torch.tensor([-2.0, -1.5, -1.0]).view(1, 3, 1, 1)
    hi = torch.tensor([2.0, 2.5, 1.0]).view(1, 3, 1, 1)
    x = lo + (hi - lo) * torch.rand(1, 3, 6, 6)
    R = torch.rand(1, 4, 6, 6)
    got, bias, _ = lrp.propagate(conv, x, R, "zB", bounds=(lo, hi))
    w = conv.weight.detach().view(4, -1)  # [O, C*k*k]
    px = F.unfold(x, 3, padding=1)[0]  # [C*k*k, L]
    pl = F.unfold(lo.expand_as(x), 3, padding=1)[0]
    ph = F.unfold(hi.expand_as(x), 3, padding=1)[0]
    contrib = (w[:, :, None] * px[None] - w.clamp(min=0)[:, :, None] * pl[None]
               - w.clamp(max=0)[:, :, None] * ph[None])  # [O, C*k*k, L]
    share = contrib / contrib.sum(1, keepdim=True) * R[0].view(4, 1, -1)
    ref = F.fold(share.sum(0)[None], (6, 6), 3, padding=1)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    assert float(contrib.sum(1).min()) >= 0  # zB's denominators are never negative
    assert float(bias.abs().max()) == 0
    torch.testing.assert_close(got.sum(), R.sum(), rtol=1e-5, atol=1e-6)


def test_maxpool_winner_take_all():
    torch.manual_seed(6)
    a = torch.rand(1, 2, 4, 4)
    R = torch.rand(1, 2, 2, 2)
    got, _, _ = lrp.propagate(nn.MaxPool2d(2), a, R, "winner-take-all")
    for c in range(2):
        for i in range(2):
            for j in range(2):
                win = a[0, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                out = got[0, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                k = int(win.argmax())
                assert float(out.flatten()[k]) == pytest.approx(float(R[0, c, i, j]))
                assert float(out.abs().sum()) == pytest.approx(float(R[0, c, i, j]))


def test_composite_rules_of_vgg16(vgg16):
    rules = {n: r for n, _, r in lrp.layer_rules(vgg16, "composite")}
    assert rules["features.0"] == "zB"
    assert all(rules[f"features.{i}"] == "LRP-gamma" for i in (2, 5, 7, 10, 12, 14))
    assert all(rules[f"features.{i}"] == "LRP-eps" for i in (17, 19, 21, 24, 26, 28))
    assert all(rules[f"classifier.{i}"] == "LRP-0" for i in (0, 3, 6))
    assert rules["features.4"] == "winner-take-all" and rules["features.1"] == "pass"


def test_vgg16_and_alexnet_composite_conserve(vgg16):
    torch.manual_seed(7)
    for m, x in [(vgg16, torch.randn(1, 3, 64, 64)),
                 (models._build_torchvision("alexnet", None).eval(), torch.randn(1, 3, 96, 96))]:
        res = lrp.relevance_trace(m, x, 5, rule="composite")
        scale = float(res.score.abs().max()) + 1e-12
        for L in res.layers:
            assert float(L.residual.abs().max()) < 1e-4 * scale, L.name
        assert res.relevance.shape == x.shape


def test_relevance_on_the_object(net):
    """Shapes world: composite LRP puts more positive relevance on the object than its area share."""
    seeds = range(200, 216)
    ss = shapes.scenes(seeds)
    x, y = shapes.batch(seeds)
    R = lrp.lrp(net, x, y, rule="composite")
    better = sum(lrp.mask_share(r, s.masks[0]) > s.masks[0].mean() for r, s in zip(R, ss))
    assert better >= 14, f"relevance concentrated on the object in only {better} of 16 scenes"


def test_batches_and_target_forms(net, data):
    x, y = data
    a = lrp.lrp(net, x, y, rule="composite", batch_size=1)
    b = lrp.lrp(net, x, torch.tensor(y), rule="composite", batch_size=16)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    c = lrp.lrp(net, x, 2)
    d = lrp.lrp(net, x, [2, 2, 2])
    torch.testing.assert_close(c, d)
    # None: the predicted class of each image (as for every method of helpers.gradients)
    with torch.no_grad():
        predicted = net(x).argmax(1).tolist()
    assert len(set(predicted)) > 1, "the check needs images predicted as different classes"
    for size in (1, 16):
        torch.testing.assert_close(lrp.lrp(net, x, None, rule="composite", batch_size=size),
                                   lrp.lrp(net, x, predicted, rule="composite"))
    assert lrp.relevance_trace(net, x, None).score.tolist() == \
        lrp.relevance_trace(net, x, predicted).score.tolist()


def test_model_unchanged_also_after_error(net, data, vgg16, monkeypatch):
    x, y = data
    for m, inp in [(net, x[:1]), (vgg16, torch.randn(1, 3, 32, 32))]:
        before = snapshot(m)
        lrp.lrp(m, inp, 1, rule="composite")
        assert snapshot(m) == before

    def boom(*a, **k):
        raise RuntimeError("boom")

    before = snapshot(vgg16)
    monkeypatch.setattr(lrp, "propagate", boom)
    with pytest.raises(RuntimeError):
        lrp.lrp(vgg16, torch.randn(1, 3, 32, 32), 1)
    assert snapshot(vgg16) == before


def test_errors(net, data):
    x, _ = data
    for name in ("resnet50", "googlenet", "inception_v3"):
        m = models._build_torchvision(name, None)
        with pytest.raises(ValueError, match="sequential conv nets"):
            lrp.lrp(m, torch.zeros(1, 3, 96, 96), 0)
    with pytest.raises(ValueError, match="valid rules"):
        lrp.lrp(net, x, 0, rule="alpha-beta")
    with pytest.raises(ValueError, match="out of range"):
        lrp.lrp(net, x, 10)
    with pytest.raises(ValueError, match="epsilon"):
        lrp.lrp(net, x, 0, epsilon=-1)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        lrp.lrp(net, x[0], 0)
    with pytest.raises(ValueError, match="N >= 1"):
        lrp.lrp(net, x[:0], 0)
    bn = nn.Module()
    bn.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    bn.classifier = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="BatchNorm2d"):
        lrp.lrp(bn, torch.zeros(1, 3, 8, 8), 0)


def test_relevance_image_and_reexport():
    from helpers import gradients

    assert gradients.lrp is lrp.lrp
    img = lrp.relevance_image(torch.tensor([[1.0, -1.0], [0.0, 0.0]]), percentile=100)
    assert img.shape == (2, 2, 3)
    assert img[0, 0, 0] > 0.9 and img[0, 0, 2] < 0.1     # positive: red
    assert img[0, 1, 2] > 0.9 and img[0, 1, 0] < 0.1     # negative: blue
    assert np.allclose(img[1, 0], 1.0, atol=0.01)         # zero: white


def test_mask_share_counts_positive_relevance_summed_over_channels():
    R = torch.zeros(3, 4, 4)
    R[0, 0, 0], R[1, 0, 0] = 2.0, 1.0        # pixel (0, 0): 3 in all, over two channels
    R[2, 3, 3] = 1.0                          # pixel (3, 3): 1
    R[0, 1, 1] = -5.0                         # negative relevance counts nowhere
    R[1, 2, 2], R[2, 2, 2] = 2.0, -1.5        # a pixel's channels are summed first: 0.5
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[1, 1] = True
    assert lrp.mask_share(R, mask) == pytest.approx(3 / 4.5)
    assert lrp.mask_share(R, ~mask) == pytest.approx(1.5 / 4.5)
    # an [H, W] map (numpy too) is taken as it is
    assert lrp.mask_share(R.sum(0).numpy(), mask) == pytest.approx(3 / 4.5)
    assert lrp.mask_share(-R.abs(), mask) == 0.0   # no positive relevance at all


def test_relevance_image_and_mask_share_take_one_image():
    """A batch from lrp.lrp gave a [2, 3, H, W, 3] 'image' and an IndexError deep in mask_share."""
    R = torch.randn(2, 3, 8, 8)
    mask = np.zeros((8, 8), bool)
    with pytest.raises(ValueError, match=r"one image's relevance .*index a batch first \(R\[0\]\)"):
        lrp.relevance_image(R)
    with pytest.raises(ValueError, match=r"index a batch first: R\[0\]"):
        lrp.mask_share(R, mask)
    with pytest.raises(ValueError, match=r"mask \(7, 8\)"):
        lrp.mask_share(R[0], mask[:7])
    assert lrp.relevance_image(R[0]).shape == (8, 8, 3) and lrp.relevance_image(R[:1]).shape == (8, 8, 3)
