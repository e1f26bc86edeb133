"""helpers.synthesis: class images, fooling images, disguised images, against independent references."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import models, shapes, synthesis
from model_state import snapshot

EPS = 8 / 255
K = len(shapes.CLASSES)          # number of shape classes
RANGE = rf"0\.\.{K - 1}"         # how the ValueError names the valid range


@pytest.fixture(scope="module")
def net():
    return models.load("shapesnet")


@pytest.fixture(scope="module")
def scenes():
    """Six held-out single-object scenes the model classifies correctly, and their labels."""
    x, y = shapes.batch(range(40))
    with torch.no_grad():
        ok = models.load("shapesnet")(x).argmax(1) == y
    idx = ok.nonzero().flatten()[:6]
    return x[idx], y[idx]


def assert_unchanged(model, before):
    assert snapshot(model) == before
    assert all(p.grad is None for p in model.parameters())


def pixels(model, x):
    info = models.info(model)
    return x * torch.tensor(info.std).view(1, 3, 1, 1) + torch.tensor(info.mean).view(1, 3, 1, 1)


def assert_valid(model, x):
    p = pixels(model, x)
    assert float(p.min()) >= -1e-5 and float(p.max()) <= 1 + 1e-5


def probs(model, x):
    with torch.no_grad():
        return torch.softmax(model(x), 1)


# ------------------------------------------------------------------------------ class images
def reference_class_image(model, c, steps, lr, weight):
    """Simonyan's L2-regularised score ascent written with .backward() on a private copy."""
    m = copy.deepcopy(model)
    info = models.info(model)
    mean, std = torch.tensor(info.mean).view(1, 3, 1, 1), torch.tensor(info.std).view(1, 3, 1, 1)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    x = torch.zeros(1, 3, info.input_size, info.input_size)
    for _ in range(steps):
        x = x.clone().requires_grad_(True)
        m.zero_grad()
        m(x)[0, c].backward()
        g = x.grad
        with torch.no_grad():
            x = torch.clamp(x + lr * (g / g.abs().mean() - 2 * weight * x), lo, hi)
    return x.detach()


def test_class_image_equals_reference_and_leaves_model(net):
    before = snapshot(net)
    x = synthesis.class_image(net, 3, steps=4, regularization="l2", weight=0.1, lr=0.1, progress=False)
    assert x.shape == (1, 3, 128, 128) and x.device.type == "cpu"
    assert torch.allclose(x, reference_class_image(net, 3, 4, 0.1, 0.1), atol=1e-5)
    assert_unchanged(net, before)


def test_class_image_reaches_confidence_and_score_rises(net):
    x, info = synthesis.class_image(net, list(range(K)), steps=60, regularization="l2", progress=False,
                                    return_info=True)
    assert x.shape == (K, 3, 128, 128)
    assert_valid(net, x)
    p = probs(net, x)
    assert (p.argmax(1) == torch.arange(K)).all()
    assert float(p[torch.arange(K), torch.arange(K)].min()) >= 0.99
    assert (info["score"][-1] > info["score"][0]).all()
    assert torch.allclose(info["final_probability"], p[torch.arange(K), torch.arange(K)], atol=1e-5)


def test_class_image_regularisers_shrink_the_image(net):
    kw = dict(steps=30, progress=False)
    plain = synthesis.class_image(net, 5, **kw)
    l2 = synthesis.class_image(net, 5, regularization="l2", weight=0.3, **kw)
    l1 = synthesis.class_image(net, 5, regularization="l1", weight=0.5, **kw)
    assert l2.norm() < plain.norm()
    assert l1.abs().sum() < plain.abs().sum()
    # L1 makes the image sparse: many pixel values sit exactly at or near zero (the mean colour)
    assert float((l1.abs() < 0.05).float().mean()) > float((plain.abs() < 0.05).float().mean())
    # clip sets the weakest pixels to the mean colour
    clipped = synthesis.class_image(net, 5, clip=30, **kw)
    zero = (clipped.abs().sum(1) == 0).float().mean()
    assert float(zero) >= 0.29
    # blur smooths: neighbouring pixels differ less
    blurred = synthesis.class_image(net, 5, blur=1.0, blur_every=1, **kw)

    def tv(z):
        return float((z[..., 1:, :] - z[..., :-1, :]).abs().mean())
    assert tv(blurred) < tv(plain)
    for z in (plain, l2, l1, clipped, blurred):
        assert_valid(net, z)


def test_class_image_seed_and_jitter(net):
    a = synthesis.class_image(net, 2, steps=5, jitter=6, start="random", seed=1, progress=False)
    b = synthesis.class_image(net, 2, steps=5, jitter=6, start="random", seed=1, progress=False)
    c = synthesis.class_image(net, 2, steps=5, jitter=6, start="random", seed=2, progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # image i of a batch starts from the noise of seed + i: what the one-image run with that seed gives
    both = synthesis.class_image(net, [5, 2], steps=5, start="random", seed=1, progress=False)
    alone = synthesis.class_image(net, 2, steps=5, start="random", seed=2, progress=False)
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=1e-5)


def test_class_image_errors(net):
    before = snapshot(net)
    with pytest.raises(ValueError, match=RANGE):
        synthesis.class_image(net, K, steps=1, progress=False)
    with pytest.raises(ValueError, match=RANGE):
        synthesis.class_image(net, [1, -1], steps=1, progress=False)
    with pytest.raises(ValueError, match="l1"):
        synthesis.class_image(net, 1, regularization="l3", steps=1, progress=False)
    with pytest.raises(ValueError, match="steps"):
        synthesis.class_image(net, 1, steps=0, progress=False)
    assert_unchanged(net, before)


def test_model_restored_after_an_exception_inside(net):
    calls = {"n": 0}

    def boom(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")

    h = net.features[0].register_forward_hook(boom)
    net.train()
    try:
        before = snapshot(net)
        with pytest.raises(RuntimeError, match="boom"):
            synthesis.class_image(net, 1, steps=3, progress=False)
        assert_unchanged(net, before)
        assert net.training
    finally:
        h.remove()
        net.eval()


def test_gaussian_blur_matches_scipy():
    from scipy.ndimage import gaussian_filter

    x = torch.rand(1, 3, 20, 24)
    ours = synthesis.gaussian_blur(x, 1.0)[0]
    ref = np.stack([gaussian_filter(x[0, c].numpy(), 1.0, mode="mirror", truncate=3.0) for c in range(3)])
    assert np.allclose(ours.numpy(), ref, atol=1e-5)
    assert torch.equal(synthesis.gaussian_blur(x, 0), x)


# ----------------------------------------------------------------------------- fooling images
def test_fooling_image_reaches_confidence_and_counts_steps(net):
    x, info = synthesis.fooling_image(net, [0, 7], max_steps=300, progress=False, return_info=True)
    assert x.shape == (2, 3, 128, 128)
    assert info["reached"] == [True, True]
    assert_valid(net, x)
    p = probs(net, x)
    assert float(p[0, 0]) >= 0.99 and float(p[1, 7]) >= 0.99
    # the stop rule: with one step fewer the image had not reached the confidence yet (image i of
    # the batch is the one-image run with seed i)
    for i, c in enumerate((0, 7)):
        s = info["steps"][i]
        assert s >= 1
        alone = synthesis.fooling_image(net, c, max_steps=300, seed=i, progress=False)
        torch.testing.assert_close(alone, x[i:i + 1], rtol=0, atol=1e-5)
        y, inf2 = synthesis.fooling_image(net, c, max_steps=s - 1, seed=i, progress=False, return_info=True)
        assert not inf2["reached"] and inf2["steps"] == s - 1
    # one target -> scalars; the first image of a batch is the same as when alone (same noise)
    y, inf3 = synthesis.fooling_image(net, 0, max_steps=300, progress=False, return_info=True)
    assert isinstance(inf3["steps"], int) and isinstance(inf3["reached"], bool)
    assert inf3["steps"] == info["steps"][0]


def test_fooling_image_starts_from_noise_and_stays_noisy(net):
    x0, info = synthesis.fooling_image(net, 4, max_steps=0, progress=False, return_info=True)
    assert info["steps"] == 0
    p = pixels(net, x0)
    assert abs(float(p.mean()) - 0.5) < 0.01 and abs(float(p.std()) - 1 / math.sqrt(12)) < 0.01
    x = synthesis.fooling_image(net, 4, max_steps=300, progress=False)
    # a fooling image is still noise: far from every shape scene (neighbouring pixels uncorrelated)
    q = pixels(net, x)[0]
    corr = np.corrcoef(q[:, :, 1:].flatten().numpy(), q[:, :, :-1].flatten().numpy())[0, 1]
    assert corr < 0.5


def test_fooling_image_errors(net):
    with pytest.raises(ValueError, match=RANGE):
        synthesis.fooling_image(net, K + 2, progress=False)
    with pytest.raises(ValueError, match="confidence"):
        synthesis.fooling_image(net, 1, confidence=1.5, progress=False)


def test_evolve_takes_one_target_in_any_integer_form(net):
    ref, _ = synthesis.evolve(net, targets=3, generations=2, offspring=2, progress=False)
    for t in (np.int64(3), torch.tensor(3), [3]):
        x, _ = synthesis.evolve(net, targets=t, generations=2, offspring=2, progress=False)
        assert torch.equal(x, ref)


def test_evolve_is_monotone_and_reports_truthfully(net):
    before = snapshot(net)
    x, info = synthesis.evolve(net, targets=[1, 6], generations=15, offspring=6, progress=False)
    assert x.shape == (2, 3, 128, 128)
    h = info["history"]
    assert h.shape == (16, 2)
    assert (h[1:] >= h[:-1]).all()            # elites only get better
    assert (h[-1] > h[0]).all()              # and they did
    p = probs(net, x)
    assert torch.allclose(p[[0, 1], [1, 6]], info["probability"], atol=1e-5)
    assert_valid(net, x)
    assert_unchanged(net, before)
    with pytest.raises(ValueError, match=RANGE):
        synthesis.evolve(net, targets=[3, K], generations=1, progress=False)


# ---------------------------------------------------------------------------- disguised images
def test_disguise_succeeds_within_budget(net, scenes):
    x, y = scenes
    target = [(int(c) + 3) % K for c in y]
    before = snapshot(net)
    xa, info = synthesis.disguise(net, x, target, epsilon=EPS, steps=60, return_info=True)
    assert_unchanged(net, before)
    assert xa.shape == x.shape and xa.dtype == x.dtype
    assert all(info["success"])
    with torch.no_grad():
        assert net(xa).argmax(1).tolist() == target
    d = pixels(net, xa) - pixels(net, x)
    assert float(d.abs().max()) <= EPS + 1e-6
    assert_valid(net, xa)
    # alpha = 1/255 from 8-bit pixels: the disguised image is itself an 8-bit image
    q = pixels(net, xa) * 255
    assert float((q - q.round()).abs().max()) < 1e-3
    # the reported sizes are those of the perturbation
    assert np.allclose(info["linf"], d.flatten(1).abs().max(1).values.numpy(), atol=1e-6)
    assert np.allclose(info["l2"], d.flatten(1).norm(dim=1).numpy(), rtol=1e-4)
    mse = d.flatten(1).pow(2).mean(1)
    assert np.allclose(info["psnr"], (10 * torch.log10(1 / mse)).numpy(), rtol=1e-4)
    # it stops as soon as the prediction is the target: one step fewer and it had not
    i = int(np.argmax(info["steps"]))
    s = info["steps"][i]
    _, short = synthesis.disguise(net, x[i:i + 1], target[i], steps=s - 1, return_info=True)
    assert short["success"] == [False]


def test_disguise_margin_and_original_class(net, scenes):
    x, y = scenes
    # the target already predicted: nothing to do
    xa, info = synthesis.disguise(net, x[:2], y[:2].tolist(), return_info=True)
    assert torch.equal(xa, synthesis.from_pixels(net, synthesis.to_pixels(net, x[:2]))) or \
        torch.allclose(xa, x[:2], atol=1e-5)
    assert info["steps"] == [0, 0]
    target = [(int(c) + 1) % K for c in y[:3]]
    xm, im = synthesis.disguise(net, x[:3], target, margin=2.0, steps=80, return_info=True)
    with torch.no_grad():
        logits = net(xm)
    for k, c in enumerate(target):
        if im["success"][k]:
            others = torch.cat([logits[k, :c], logits[k, c + 1:]])
            assert float(logits[k, c] - others.max()) > 2.0


def reference_pgd(model, x, target, eps, steps, alpha):
    """Targeted PGD without random start, written in normalised space with per-channel bounds."""
    std = torch.tensor(models.info(model).std).view(1, 3, 1, 1)
    mean = torch.tensor(models.info(model).mean).view(1, 3, 1, 1)
    lo, hi = torch.max((0 - mean) / std, x - eps / std), torch.min((1 - mean) / std, x + eps / std)
    z = x.clone()
    for _ in range(steps):
        z.requires_grad_(True)
        loss = F.cross_entropy(model(z), torch.tensor(target), reduction="sum")
        (g,) = torch.autograd.grad(loss, z)
        z = torch.max(torch.min(z.detach() - alpha / std * g.sign(), hi), lo)
    return z


def test_pgd_equals_reference_and_stays_in_ball(net, scenes):
    x, y = scenes
    target = [(int(c) + 5) % K for c in y]
    xa = synthesis.pgd(net, x, target, epsilon=EPS, steps=6, step_size=2 / 255, random_start=False)
    ref = reference_pgd(net, x, target, EPS, 6, 2 / 255)
    # The two compute the same gradient in different coordinates (pixels vs normalised input), so a
    # gradient component within rounding of zero can take the other sign and move that one value
    # differently: allow a handful of values (at most 1 in 10,000) to differ; all others are equal.
    off = (xa - ref).abs() > 1e-4
    assert float(off.float().mean()) <= 1e-4, int(off.sum())
    xr, info = synthesis.pgd(net, x, target, epsilon=EPS, steps=10, random_start=True, seed=3, return_info=True)
    assert max(info["linf"]) <= EPS + 1e-6
    assert_valid(net, xr)
    assert np.mean(info["success"]) >= 0.8
    # PGD spends its budget: its disguise is more confident than the stop-at-once one
    xd = synthesis.disguise(net, x, target, steps=60)
    pt = torch.arange(len(target)), torch.tensor(target)
    assert float(probs(net, xr)[pt].mean()) > float(probs(net, xd)[pt].mean())


def test_attack_errors_and_model_unchanged(net, scenes):
    x, y = scenes
    before = snapshot(net)
    with pytest.raises(ValueError, match=RANGE):
        synthesis.disguise(net, x[:1], K)
    with pytest.raises(ValueError, match="targets for"):
        synthesis.pgd(net, x[:2], [1, 2, 3])
    with pytest.raises(ValueError, match="pixel units"):
        synthesis.disguise(net, x[:1], 1, epsilon=8)
    with pytest.raises(ValueError, match="pixels"):
        synthesis.disguise(net, x[:1] * 10, 1)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        synthesis.pgd(net, x[0], 1)
    assert_unchanged(net, before)


def test_jpeg_and_blur(net, scenes):
    x, _ = scenes
    q100 = synthesis.jpeg(net, x, 100)
    q50 = synthesis.jpeg(net, x, 50)
    d100 = float((pixels(net, q100) - pixels(net, x)).abs().mean())
    d50 = float((pixels(net, q50) - pixels(net, x)).abs().mean())
    assert q100.shape == x.shape and d100 < d50 < 0.1
    assert torch.allclose(synthesis.blur(net, x, 0), x, atol=1e-5)
    b = synthesis.blur(net, x, 1.0)
    assert float((pixels(net, b) - pixels(net, x)).abs().mean()) > 0.003
    with pytest.raises(ValueError, match="quality"):
        synthesis.jpeg(net, x, 101)


# ---------------------------------------------------------------------------- torchvision models
@pytest.mark.parametrize("name", ["alexnet", "resnet50"])
def test_imagenet_architectures(name):
    """Real architectures (random weights, small inputs): shapes, validity, budget, model unchanged.

    ResNet50 has batch norm: the model is in train mode before the call, and must be again after."""
    torch.manual_seed(0)
    model = models._build_torchvision(name, None).train()
    before = snapshot(model)
    x = synthesis.class_image(model, [130, 339], steps=2, size=64, jitter=2, blur=0.5, blur_every=1,
                              progress=False)
    assert x.shape == (2, 3, 64, 64)
    assert_valid(model, x)
    f, fi = synthesis.fooling_image(model, 130, max_steps=2, size=64, progress=False, return_info=True)
    assert_valid(model, f)
    assert fi["steps"] <= 2
    xa, info = synthesis.disguise(model, x, [605, 1], steps=2, return_info=True)
    assert max(info["linf"]) <= EPS + 1e-6
    assert_valid(model, xa)
    assert_unchanged(model, before)
    assert model.training
    with pytest.raises(ValueError, match=r"0\.\.999"):
        synthesis.class_image(model, 1000, steps=1, size=64, progress=False)


def test_what_a_saved_image_goes_through_takes_only_rgb_batches():
    """A grey batch was broadcast to RGB in silence, RGBA and numpy failed deep inside."""
    net = models.load("shapesnet")
    x, _ = shapes.batch(range(1))
    for bad in (x[:, :1], torch.cat([x, x[:, :1]], 1), x[:0]):
        for fn in (synthesis.quantize, synthesis.jpeg, synthesis.blur):
            with pytest.raises(ValueError, match=r"x must be a normalised float batch \[N, 3, H, W\] with N >= 1"):
                fn(net, bad)
    with pytest.raises(TypeError, match="x must be a normalised image tensor"):
        synthesis.quantize(net, x.numpy())
