"""helpers.features: feature maps, filters, activation maximization, deep dream, inversion.

Properties checked against independent references written differently here (slicing the
Sequential by hand, loops over pixels), plus what the papers promise: the activation grows,
the dream raises the layer's norm, the inversion reproduces the representation, and the
model is left exactly as it was (also after an exception).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import features, hooks, models, shapes
from model_state import snapshot


@pytest.fixture(scope="module")
def net():
    return models.load("shapesnet")


@pytest.fixture(scope="module")
def scenes():
    x, y = shapes.batch(range(6))
    return x, y


def valid_range(model):
    info = models.info(model)
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    return -mean / std, (1 - mean) / std


def pixels(model, x):
    info = models.info(model)
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    return x * std + mean


# ------------------------------------------------------------------------------ chapter 01
def test_feature_maps_equal_the_sequential_sliced_by_hand(net, scenes):
    x, _ = scenes
    with torch.no_grad():
        ref = net.features[:4](x)                       # conv, relu, pool, conv
        logits = net(x)
    got = features.feature_maps(net, x, "features.3", batch_size=4)  # two batches
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5)
    cls = features.feature_maps(net, x, "classifier")
    k = len(models.class_names(net))
    assert cls.shape == (6, k, 1, 1) and torch.allclose(cls[:, :, 0, 0], logits, atol=1e-5)
    assert torch.equal(features.feature_maps(net, x.double(), "features.3", batch_size=4), got)  # model's dtype


def test_filters_are_the_first_conv_weights_as_tiles(net):
    tiles = features.filters(net)
    w = net.features[0].weight.detach()
    assert tiles.shape == (w.shape[0], w.shape[2], w.shape[3], 3)
    assert tiles.min() >= 0 and tiles.max() <= 1
    c = 2
    ref = 0.5 + 0.5 * w[c].numpy().transpose(1, 2, 0) / np.abs(w[c].numpy()).max()
    assert np.allclose(tiles[c], ref, atol=1e-6)
    layer_scaled = features.filters(net, scale="layer")
    assert np.isclose(np.abs(layer_scaled - 0.5).max(), 0.5)
    with pytest.raises(ValueError, match="3 input"):
        features.filters(net, "features.3")


def test_top_channels_and_channel_map(net, scenes):
    x, _ = scenes
    maps = features.feature_maps(net, x[:2], "features.8")
    idx, val = features.top_channels(maps, k=5)
    order = np.argsort(-maps[1].mean((1, 2)).numpy())[:5]
    assert idx.shape == (2, 5) and list(idx[1].numpy()) == list(order)
    assert torch.all(val[:, :-1] >= val[:, 1:])
    h = features.channel_map(maps, int(idx[0, 0]), size=128)
    assert h.shape == (2, 128, 128) and h.min() >= 0 and torch.isclose(h.amax((1, 2)), torch.ones(2)).all()
    with pytest.raises(ValueError, match=r"0\.\.%d" % (maps.shape[1] - 1)):
        features.channel_map(maps, maps.shape[1])


# ------------------------------------------------------------------------------ chapter 16
def test_prefix_stops_the_forward_pass_at_the_layer(net, scenes):
    x, _ = scenes
    calls = []
    h = net.classifier.register_forward_hook(lambda *a: calls.append(1))
    try:
        before = snapshot(net)
        with features.prefix(net, "features.8") as run:
            a = run(x[:1])
        assert torch.allclose(a, net.features[:9](x[:1]), atol=1e-5)
        assert calls == [] and snapshot(net) == before
    finally:
        h.remove()


@pytest.mark.parametrize("param", features.PARAMS)
def test_visualize_filter_raises_the_activation_and_stays_valid(net, scenes, param):
    x, _ = scenes
    layer, channel = "features.8", 5
    before = snapshot(net)
    v = features.visualize_filter(net, layer, channel, steps=40, param=param, progress=False)
    assert v.shape == (1, 3, 128, 128) and v.device.type == "cpu"
    p = pixels(net, v)
    assert p.min() >= -1e-5 and p.max() <= 1 + 1e-5            # a valid image
    reached = features.mean_activation(net, v, layer, channel)[0]
    typical = features.mean_activation(net, x, layer, channel).mean()
    assert reached > 3 * max(float(typical), 1e-3), (param, float(reached), float(typical))
    assert snapshot(net) == before
    again = features.visualize_filter(net, layer, channel, steps=40, param=param, progress=False)
    assert torch.equal(v, again)                                 # seeded


def test_regularized_steps_match_hand_written_steps_with_the_papers_blur(net):
    """Four "regularized" steps written out: jitter, clipped gradient, L2 decay, and on the 4th
    step a Gaussian blur of 0.5 pixels (Yosinski et al.'s narrower width), computed by scipy."""
    import random

    from scipy.ndimage import gaussian_filter

    layer, c, seed, size = "features.3", 4, 3, 48
    with features.FilterOptimizer(net, layer, c, param="regularized", seed=seed, size=size) as opt:
        assert opt.blur_sigma == 0.5 and opt.blur_every == 4 and opt.decay > 0
        lr, j, clip, decay = opt.lr, opt.jitter, opt.grad_clip, opt.decay
        x = opt.x.detach().clone()
        for _ in range(4):
            opt.step()
        got = opt.x.detach().clone()
    lo, hi = valid_range(net)
    rng = random.Random(seed)
    for t in range(4):
        shift = (rng.randint(-j, j), rng.randint(-j, j))
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(net.features[:4](torch.roll(xx, shift, (2, 3)))[0, c].mean(), xx)
        g = (g / g.pow(2).mean().sqrt()).clamp(-clip, clip)
        x = (x + lr * g) * (1 - decay)
        if t == 3:   # every 4th step: the blur ('mirror' in scipy is torch's 'reflect' padding)
            x = torch.from_numpy(gaussian_filter(x.numpy(), sigma=(0, 0, 0.5, 0.5), mode="mirror", truncate=4.0))
        x = torch.max(torch.min(x, hi), lo)
    assert torch.allclose(got, x, atol=1e-4), float((got - x).abs().max())
    # the default blur is not a no-op: a pixel-level checkerboard keeps a third (at 0.3 pixels: 97 %)
    checker = ((torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2 * 2.0 - 1).expand(1, 3, -1, -1)
    k = features._gaussian_kernel(0.5, "cpu")
    assert F.conv2d(F.pad(checker, (2, 2, 2, 2), mode="reflect"), k, groups=3).abs().mean() < 0.5


def test_regularized_without_blur(net):
    """blur_sigma=0 is no blur (it made the whole image NaN: a Gaussian of width 0); negative is refused."""
    kw = dict(param="regularized", seed=3, size=32, steps=4)
    with features.FilterOptimizer(net, "features.3", 4, blur_sigma=0, **kw) as opt:
        for _ in range(4):
            opt.step()
        x0 = opt.x.detach().clone()
    with features.FilterOptimizer(net, "features.3", 4, blur_every=0, **kw) as opt:
        for _ in range(4):
            opt.step()
        assert torch.equal(x0, opt.x.detach()) and bool(torch.isfinite(x0).all())
    with pytest.raises(ValueError, match="blur_sigma must be a width in pixels >= 0"):
        features.FilterOptimizer(net, "features.3", 4, blur_sigma=-0.5, **kw)


def test_filter_optimizer_step_matches_a_hand_written_step(net):
    """One pixel step = the normalised gradient of the channel's mean, computed independently."""
    layer, c = "features.3", 4
    with features.FilterOptimizer(net, layer, c, param="pixel", seed=3, lr=0.05) as opt:
        x0 = opt.x.detach().clone()
        opt.step()
        x1 = opt.x.detach().clone()
    xx = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net.features[:4](xx)[0, c].mean(), xx)
    lo, hi = valid_range(net)
    ref = torch.max(torch.min(x0 + 0.05 * g / g.abs().mean(), hi), lo)
    assert torch.allclose(x1, ref, atol=1e-5)
    assert all(p.grad is None for p in net.parameters())       # no gradient ever reached a weight


def test_batched_channels_equal_one_by_one(net):
    many = features.visualize_filters(net, "features.6", [1, 7], steps=5, param="pixel", seed=0,
                                      progress=False)
    one = features.visualize_filter(net, "features.6", 1, steps=5, param="pixel", seed=0, progress=False)
    assert many.shape == (2, 3, 128, 128)
    assert torch.allclose(many[:1], one, atol=1e-4)


def test_bad_channel_and_param_raise_and_leave_the_model(net):
    before = snapshot(net)
    n = net.features[8].out_channels
    for layer in ("features.8", "features.9"):        # a conv (known at once) and a ReLU (found by running)
        with pytest.raises(ValueError, match=rf"{n} channels, 0\.\.{n - 1}"):
            features.visualize_filter(net, layer, n, steps=2, progress=False)
    k = len(models.class_names(net))
    with pytest.raises(ValueError, match=rf"0\.\.{k - 1}"):
        features.visualize_filter(net, "classifier", k, steps=2, progress=False)
    with pytest.raises(ValueError, match="fourier"):
        features.visualize_filter(net, "features.8", 0, steps=2, param="fft", progress=False)
    with pytest.raises(ValueError, match="unknown layer"):
        features.visualize_filter(net, "features.99", 0, steps=2, progress=False)
    assert snapshot(net) == before


def test_filter_optimizer_restores_the_model_after_an_exception(net):
    net.train()
    net.features[0].weight.requires_grad_(False)
    try:
        before = snapshot(net)
        with pytest.raises(RuntimeError, match="boom"):
            with features.FilterOptimizer(net, "features.3", 0, param="fourier") as opt:
                opt.step()
                assert not net.training and not any(p.requires_grad for p in net.parameters())
                raise RuntimeError("boom")
        assert snapshot(net) == before
    finally:
        net.eval()
        net.features[0].weight.requires_grad_(True)


def test_fourier_parameterisation_pieces():
    s = features.fourier_scale(32, 32)
    assert s.shape == (32, 17) and torch.isclose(s.pow(2).mean(), torch.tensor(1.0))
    f = torch.sqrt(torch.fft.fftfreq(32)[:, None] ** 2 + torch.fft.rfftfreq(32)[None] ** 2)
    k = (f > 0.1) & (f < 0.2)
    assert torch.allclose((s * f)[k], (s * f)[k][0])            # s ~ 1/f away from f = 0
    m = features.color_correlation(shapes.ShapesNet())
    assert m.shape == (3, 3) and torch.allclose(m, m.T)
    assert torch.isclose(m.norm(dim=0).max(), torch.tensor(1.0))
    # a square root of the shapes world's colour covariance (up to scale): M M^T is proportional to
    # the covariance of the pixels of the 96 scenes it is estimated from, computed here with numpy
    pixels = np.concatenate([s.image.reshape(-1, 3) for s in shapes.scenes(range(64))]
                            + [s.image.reshape(-1, 3) for s in shapes.scenes(range(64, 96), 2)]) / 255.0
    cov = np.cov(pixels.T)
    mmt = (m @ m.T).double().numpy()
    assert np.allclose(mmt / np.linalg.norm(mmt), cov / np.linalg.norm(cov), atol=1e-5)


def test_torchvision_layers_including_linear_and_blocks():
    torch.manual_seed(0)
    g = models._build_torchvision("googlenet", None).eval()
    before = snapshot(g)
    v = features.visualize_filter(g, "inception3a", 3, steps=2, size=64, param="fourier", progress=False)
    assert v.shape == (1, 3, 64, 64) and snapshot(g) == before
    with pytest.raises(ValueError, match=r"256 channels, 0\.\.255"):
        features.visualize_filter(g, "inception3a", 256, steps=1, size=64, progress=False)
    a = models._build_torchvision("alexnet", None).eval()
    for layer in ("features.0", "classifier.6"):
        x = features.visualize_filter(a, layer, 1, steps=3, size=64, progress=False)
        assert x.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"0\.\.999"):
        features.visualize_filter(a, "classifier.6", 1000, steps=1, size=64, progress=False)


# ------------------------------------------------------------------------------ chapter 17
def test_deep_dream_raises_the_layer_norm_and_returns_a_tensor_like_x(net, scenes):
    x, _ = scenes
    x = x[:2].double()
    before = snapshot(net)
    out, values = features.deep_dream(net, x.float(), "features.8", octaves=2, steps=6,
                                      return_values=True, progress=False)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert snapshot(net) == before
    assert (features.layer_norm(net, out, "features.8") > 1.2 * features.layer_norm(net, x.float(), "features.8")).all()
    assert (values[-1] > values[6]).all()           # the objective grew during the last octave
    p = pixels(net, out)
    assert p.min() >= -1e-5 and p.max() <= 1 + 1e-5
    same_x = features.deep_dream(net, x.float(), "features.8", octaves=3, steps=0, progress=False)
    lo, hi = valid_range(net)
    assert torch.allclose(same_x, torch.max(torch.min(x.float(), hi), lo), atol=1e-6)  # no step: the photo
    with pytest.raises(ValueError, match=r"0\.\.%d" % (net.features[8].out_channels - 1)):
        features.deep_dream(net, x.float(), "features.8", channel=999, steps=1, progress=False)


def test_dream_step_equals_a_hand_written_step(net, scenes):
    x, _ = scenes
    x = x[:1].clone()
    lo, hi = torch.full((1, 3, 1, 1), -2.0), torch.full((1, 3, 1, 1), 2.0)
    with hooks.frozen(net), features.prefix(net, "features.6") as run:
        got = x.clone()
        features.dream_step(run, got, 3, 0.1, (5, -2), lo, hi)
    xs = torch.roll(x, (5, -2), (2, 3)).requires_grad_(True)
    (g,) = torch.autograd.grad(0.5 * net.features[:7](xs)[0, 3].pow(2).mean(), xs)
    g = torch.roll(g, (-5, 2), (2, 3))
    assert torch.allclose(got, (x + 0.1 * g / g.abs().mean()).clamp(-2, 2), atol=1e-5)


# ------------------------------------------------------------------------------ chapter 18
def test_regularisers_equal_loops():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6)
    ref = np.zeros(2)
    a = x.numpy()
    for n in range(2):
        for c in range(3):
            for i in range(4):
                for j in range(5):
                    ref[n] += ((a[n, c, i, j + 1] - a[n, c, i, j]) ** 2 + (a[n, c, i + 1, j] - a[n, c, i, j]) ** 2) ** 1.5
    assert np.allclose(features.total_variation(x, beta=3).numpy(), ref, rtol=1e-4)
    assert torch.allclose(features.alpha_norm(x, 6), (x ** 6).sum((1, 2, 3)))


def test_invert_of_a_batch_is_the_one_image_runs(net, scenes):
    """Image i of a batch starts from the noise of seed + i, and the objective is per image."""
    x, _ = scenes
    both = features.invert(net, x[:2], "features.4", steps=5, seed=3, progress=False)
    alone = features.invert(net, x[1:2], "features.4", steps=5, seed=4, progress=False)
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=1e-5)


def test_invert_early_layer_reproduces_the_representation(net, scenes):
    x, _ = scenes
    before = snapshot(net)
    rec, hist = features.invert(net, x[:2], "features.1", steps=60, return_history=True, progress=False)
    assert rec.shape == (2, 3, 128, 128) and snapshot(net) == before
    err = features.relative_error(net, rec, x[:2], "features.1")
    assert (err < 0.2).all(), err
    assert (hist[-1] < 0.2 * hist[0]).all()
    p = pixels(net, rec)
    assert p.min() >= -1e-5 and p.max() <= 1 + 1e-5
    # the logits can be inverted too (a Linear layer), but the image is far from the photo
    rec_fc = features.invert(net, x[:1], "classifier", steps=10, progress=False)
    assert rec_fc.shape == (1, 3, 128, 128)
    assert (rec_fc - x[:1]).abs().mean() > (rec[:1] - x[:1]).abs().mean()


def test_total_variation_beta_1_has_a_finite_gradient_where_neighbours_are_equal(net, scenes):
    # two flat halves: inside each half every pixel equals its neighbours (like clipped pixels)
    x = torch.zeros(1, 3, 8, 8)
    x[..., 4:, :] = 0.5
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(features.total_variation(x, beta=1.0).sum(), x)
    assert torch.isfinite(g).all(), "NaN/inf gradient of TV_1 where neighbouring pixels are equal"
    assert g[..., :3, :].abs().max() == 0 and g[..., 5:, :].abs().max() == 0   # flat inside: no pull
    assert g[..., 3, :7].abs().min() > 0.9                                     # the step is pulled on
    # the smoothing constant is small: on an image without equal neighbours value and gradient
    # are the paper's (eps=0) ones
    torch.manual_seed(0)
    y = torch.rand(2, 3, 6, 7).requires_grad_(True)
    for beta in (1.0, 2.0):
        v, v0 = features.total_variation(y, beta), features.total_variation(y, beta, eps=0)
        assert torch.allclose(v, v0, rtol=1e-3), (beta, v, v0)
        (ga,) = torch.autograd.grad(v.sum(), y)
        (gb,) = torch.autograd.grad(v0.sum(), y)
        assert (ga - gb).abs().max() < 0.01 and (ga - gb).abs().mean() < 1e-3, beta   # gradients ~1
    # an inversion with beta=1 stays finite (its pixels get clipped, so neighbours become equal)
    x, _ = scenes
    rec = features.invert(net, x[:3], "features.1", steps=80, beta=1.0, progress=False)
    assert torch.isfinite(rec).all(), "the beta=1 inversion produced NaN pixels"
    assert (features.relative_error(net, rec, x[:3], "features.1") < 0.3).all()


def test_selective_channels_finds_the_channel_of_each_colour():
    """A layer whose channel c is the amount of colour c: each colour's channel is found, in order."""
    gen = torch.Generator().manual_seed(0)
    n, labels = 60, torch.arange(60) % 3                           # three labels: red, green, blue images
    maps = torch.rand(n, 5, 4, 4, generator=gen) * 0.2            # channels 3, 4: noise, no label
    for i, j in enumerate(labels.tolist()):
        maps[i, j, 1, 2] += 1.0 + 0.5 * j                          # one position fires: the max sees it
    got = features.selective_channels(maps, labels, k=3)
    assert sorted((c, j) for c, j, _ in got) == [(0, 0), (1, 1), (2, 2)]
    assert all(s > 1 for _, _, s in got) and [s for *_, s in got] == sorted((s for *_, s in got), reverse=True)
    # an independent computation of the selectivity of channel 2 for label 2
    r = maps[:, 2].flatten(1).amax(1).double()
    mu = [float(r[labels == j].mean()) for j in range(3)]
    ref = (mu[2] - (mu[0] + mu[1]) / 2) / float(r.std())
    assert dict(((c, s) for c, _, s in got))[2] == pytest.approx(ref)
    assert len(features.selective_channels(maps, labels, k=1)) == 1
    with pytest.raises(ValueError, match="two different labels"):
        features.selective_channels(maps, torch.zeros(n, dtype=torch.long))
    with pytest.raises(ValueError, match="one int per image"):
        features.selective_channels(maps, labels[:10])


def test_selective_channels_of_shapesnet_respond_to_their_shape(net):
    """On held-out scenes, the chosen channel of the last conv layer fires more for its shape than for any other."""
    x, y = shapes.batch(range(90))                                  # seeds below TRAIN_SEED_START: never trained on
    maps = features.feature_maps(net, x, "features.15")
    x2, y2 = shapes.batch(range(90, 180))                           # fresh scenes: not a fit to the first ones
    maps2 = features.feature_maps(net, x2, "features.15")
    for c, j, s in features.selective_channels(maps, y, k=4):
        r = maps2[:, c].flatten(1).amax(1)
        own, rest = float(r[y2 == j].mean()), max(float(r[y2 == o].mean()) for o in set(y2.tolist()) - {j})
        assert s > 1.5 and own > 1.2 * rest, (c, shapes.CLASSES[j], s, own, rest)


def test_relative_error_against_the_sliced_network(net, scenes):
    """||Phi(x) - Phi(x0)|| / ||Phi(x0)|| per image, with Phi the Sequential sliced by hand."""
    x, _ = scenes
    x0, x1 = x[:3], x[3:6]
    with torch.no_grad():
        phi = lambda t: net.features[:5](t).flatten(1)          # up to and including features.4
        want = (phi(x1) - phi(x0)).norm(dim=1) / phi(x0).norm(dim=1)
    got = features.relative_error(net, x1, x0, "features.4")
    assert got.shape == (3,)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # not symmetric: the reference image's norm divides
    assert not torch.allclose(features.relative_error(net, x0, x1, "features.4"), got)
    assert (features.relative_error(net, x0, x0, "features.4") == 0).all()


def test_counts_and_scales_are_checked_where_they_are_given(net, scenes):
    """steps=-1 failed deep in torch.zeros, octave_scale=0 divided by zero, k=-1 was a topk error."""
    x, _ = scenes
    with pytest.raises(ValueError, match="steps must be an int >= 0, got -1"):
        features.visualize_filter(net, "features.3", 0, steps=-1, progress=False)
    with pytest.raises(ValueError, match="steps must be an int >= 0, got 2.5"):
        features.invert(net, x[:1], "features.1", steps=2.5, progress=False)
    for bad in (0, -1, 0.5, float("nan"), "2"):
        with pytest.raises(ValueError, match="octave_scale must be a number >= 1"):
            features.deep_dream(net, x[:1], "features.3", octave_scale=bad, steps=1, progress=False)
    with pytest.raises(ValueError, match="k must be a positive int, got -1"):
        features.top_channels(features.feature_maps(net, x[:1], "features.1"), k=-1)
    with pytest.raises(ValueError, match="k must be a positive int, got -1"):
        models.predict(net, x[:1], k=-1)
    # what still works: no steps at all, and numpy ints
    assert features.invert(net, x[:1], "features.1", steps=np.int64(0), progress=False).shape == x[:1].shape
    assert features.deep_dream(net, x[:1], "features.3", octaves=1, steps=0, progress=False).shape == x[:1].shape
