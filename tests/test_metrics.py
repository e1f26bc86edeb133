"""helpers.metrics: pointing games, deletion/insertion, randomisation sanity checks, the leaderboard."""
import json

import numpy as np
import pytest
import torch
import torchvision
from scipy import ndimage, stats
from torch import nn

from helpers import gradients, hooks, metrics, models, shapes


def square_masks(n=3, size=32):
    m = np.zeros((n, size, size), bool)
    m[:, 8:16, 8:16] = True
    return m


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def net():
    """A ShapesNet with random weights (structure is what these tests need), in eval mode."""
    torch.manual_seed(0)
    return shapes.ShapesNet().eval()


@pytest.fixture(scope="module")
def batch():
    x, y = shapes.batch(metrics.scene_seeds(3))
    return x, y.tolist()


# --------------------------------------------------------------------------- localisation
def test_pointing_game_hits_and_misses():
    masks = square_masks()
    h = np.zeros(masks.shape)
    h[0, 10, 10] = 1          # on the object
    h[1, 20, 20] = 1          # 5 px diagonal from the corner (15, 15): distance ~7.1
    h[2, 31, 31] = 1          # far away
    r = metrics.pointing_game(h, masks, tolerance=0)
    assert list(r.hits) == [True, False, False] and r.accuracy == pytest.approx(1 / 3)
    assert r.points.tolist() == [[10, 10], [20, 20], [31, 31]]
    assert list(metrics.pointing_game(h, masks, tolerance=7).hits) == [True, False, False]
    assert list(metrics.pointing_game(h, masks, tolerance=8).hits) == [True, True, False]
    assert list(metrics.pointing_game(h, masks).hits) == [True, True, False]   # 15 px; (31, 31) is 22.6 px away
    # the distance from the peak to the nearest object pixel (15, 15), computed independently
    assert r.distances == pytest.approx([0.0, np.hypot(5, 5), np.hypot(16, 16)])
    with pytest.raises(ValueError, match="same shape"):
        metrics.pointing_game(h[:, :10], masks)
    with pytest.raises(ValueError, match="tolerance"):
        metrics.pointing_game(h, masks, tolerance=-1)


def test_pointing_game_blank_maps_plateaus_and_classes():
    masks = square_masks(3)
    h = np.zeros(masks.shape)              # map 0: zero everywhere -> points nowhere, a miss
    h[1, 2:16, 2:16] = 1.0                 # map 1: a plateau whose corner is off the object, centre on it
    h[2, 20:24, 20:24] = 1.0               # map 2: a plateau off the object
    r = metrics.pointing_game(h, masks, tolerance=0)
    assert list(r.hits) == [False, True, False]
    assert r.points[0].tolist() == [-1, -1] and r.distances[0] == np.inf and r.distances[1] == 0.0
    assert not metrics.pointing_game(h, masks, tolerance=1000).hits[0]   # a blank map misses at any tolerance
    assert metrics.peak(h[1]) in [(8, 8), (8, 9), (9, 8), (9, 9)]
    # the paper's score: the mean over classes of the per-class hit rates
    r = metrics.pointing_game(h, masks, tolerance=0, classes=[0, 1, 1])
    assert r.per_class == {0: 0.0, 1: 0.5} and r.accuracy == pytest.approx(0.25)


def test_energy_pointing_game_is_the_share_on_the_object():
    masks = square_masks(1)
    h = np.zeros(masks.shape)
    h[0, 10, 10] = 3.0
    h[0, 0, 0] = 1.0
    assert metrics.energy_pointing_game(h, masks).accuracy == pytest.approx(0.75)
    assert metrics.energy_pointing_game(masks.astype(float), masks).accuracy == pytest.approx(1.0)
    assert metrics.energy_pointing_game(np.zeros(masks.shape), masks).accuracy == 0.0
    # the paper's bounding box: a ring-shaped mask's box also holds its hole
    ring = np.zeros((1, 32, 32), bool)
    ring[0, 8:16, 8:16] = True
    ring[0, 10:14, 10:14] = False
    hole = np.zeros((1, 32, 32))
    hole[0, 11, 11] = 1.0
    assert metrics.energy_pointing_game(hole, ring).accuracy == 0.0
    assert metrics.energy_pointing_game(hole, ring, box=True).accuracy == 1.0


def test_as_heatmap_merges_channels():
    g = torch.zeros(1, 3, 4, 4)
    g[0, 0, 1, 1], g[0, 1, 1, 1], g[0, 2, 2, 2] = 2.0, -2.0, 3.0
    s = metrics.as_heatmap(g)                       # sum of |.|: 4 at (1, 1), 3 at (2, 2)
    assert s[0, 1, 1] == 1.0 and s[0, 2, 2] == pytest.approx(0.75)
    m = metrics.as_heatmap(g, reduce="max")          # max of |.|: 2 and 3
    assert m[0, 2, 2] == 1.0 and m[0, 1, 1] == pytest.approx(2 / 3)
    signed = metrics.as_heatmap(g, absolute=False)   # signed sum: 0 and 3
    assert signed[0, 1, 1] == 0.0 and signed[0, 2, 2] == 1.0
    assert metrics.as_heatmap(-torch.ones(4, 4)).shape == (1, 4, 4)
    with pytest.raises(ValueError, match="reduce"):
        metrics.as_heatmap(g, reduce="mean")


# --------------------------------------------------------------------------- faithfulness
class PixelModel(nn.Module):
    """Class 1's score is 6 x the mean of the red channel inside the top-left 8x8 square."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x):
        s = x[:, 0, :8, :8].mean((1, 2)) * 6
        return torch.stack([torch.zeros_like(s), s], 1)


@pytest.fixture
def pixel_model(monkeypatch):
    real = models.info

    def info(m):
        return models.ModelInfo("pixel", "shapes", ["a", "b"]) if isinstance(m, PixelModel) else real(m)

    monkeypatch.setattr(models, "info", info)
    return PixelModel()


def test_deletion_and_insertion_reward_the_right_map(pixel_model):
    model = pixel_model
    x = torch.zeros(1, 3, 16, 16)
    x[:, 0, :8, :8] = 1.0
    right = torch.zeros(1, 16, 16)
    right[:, :8, :8] = 1.0
    wrong = torch.zeros(1, 16, 16)
    wrong[:, 8:, 8:] = 1.0
    d_right = metrics.deletion(model, x, 1, right, steps=16)
    d_wrong = metrics.deletion(model, x, 1, wrong, steps=16)
    assert d_right.scores.shape == (1, 17) and d_right.fractions[0] == 0 and d_right.fractions[-1] == 1
    assert d_right.auc[0] < d_wrong.auc[0] - 0.2  # deleting the evidence first drops the score fast
    assert np.all(np.diff(d_right.scores[0]) <= 1e-6)  # the right map: every step removes evidence
    i_right = metrics.insertion(model, x, 1, right, steps=16, batch_size=5, substrate="zero")
    i_wrong = metrics.insertion(model, x, 1, wrong, steps=16, substrate="zero")
    assert i_right.auc[0] > i_wrong.auc[0] + 0.1
    # the area is the trapezoid rule over the fractions
    assert d_right.auc[0] == pytest.approx(np.trapezoid(d_right.scores[0], d_right.fractions))
    # batching does not change the result
    assert np.allclose(metrics.insertion(model, x, 1, right, steps=16, batch_size=3, substrate="zero").scores,
                       i_right.scores)
    # insertion starts from the blurred image (the paper's substrate): a Gaussian blur, mirrored borders
    blurred = metrics.insertion(model, x, 1, right, steps=4, sigma=2.0)
    red = ndimage.gaussian_filter(x[0, 0].numpy().astype(np.float64), 2.0, mode="mirror", truncate=3.0)
    p0 = 1 / (1 + np.exp(-6 * red[:8, :8].mean()))
    assert blurred.scores[0, 0] == pytest.approx(p0, abs=1e-5) and blurred.scores[0, 0] < blurred.scores[0, -1]


def test_deletion_equals_a_reference_loop(net, batch):
    x, y = batch
    x, y = x[:2], y[:2]
    heat = torch.rand(2, 128, 128, generator=torch.Generator().manual_seed(1))  # no ties
    curve = metrics.deletion(net, x, y, heat, steps=4, batch_size=3)
    for i in range(2):
        order = np.argsort(-heat[i].numpy().ravel(), kind="stable")
        for k in range(5):
            img = x[i].clone().view(3, -1)
            img[:, order[:round(k / 4 * 128 * 128)]] = 0.0
            with torch.no_grad():
                p = torch.softmax(net(img.view(1, 3, 128, 128)), 1)[0, y[i]]
            assert curve.scores[i, k] == pytest.approx(float(p), abs=1e-5)
    ins = metrics.insertion(net, x, y, heat, steps=4)
    with torch.no_grad():
        p_end = torch.softmax(net(x), 1)[torch.arange(2), y]
    assert np.allclose(ins.scores[:, -1], p_end.numpy(), atol=1e-5)     # everything inserted: the image
    assert np.allclose(curve.scores[:, 0], p_end.numpy(), atol=1e-5)    # nothing deleted: the image
    as_f64 = metrics.deletion(net, x.double(), y, heat, steps=4, batch_size=3)  # runs in the model's dtype
    assert np.allclose(as_f64.scores, curve.scores, atol=1e-6)


def test_ties_are_broken_at_random_not_in_raster_order(pixel_model):
    # a blank map ranks every pixel equally: deletion must not remove the top rows first
    x = torch.zeros(1, 3, 16, 16)
    x[:, 0, :8, :8] = 1.0
    blank = torch.zeros(1, 16, 16)
    d = metrics.deletion(pixel_model, x, 1, blank, steps=4)
    raster = metrics.deletion(pixel_model, x, 1, torch.arange(256.0).flip(0).view(1, 16, 16), steps=4)
    assert d.scores[0, 2] > raster.scores[0, 2] + 0.1   # half deleted: raster order took the whole square
    assert np.allclose(metrics.deletion(pixel_model, x, 1, blank, steps=4).scores, d.scores)  # reproducible


def test_curve_errors(pixel_model):
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match="heatmap"):
        metrics.deletion(pixel_model, x, 1, torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="substrate"):
        metrics.insertion(pixel_model, x, 1, torch.zeros(1, 16, 16), substrate="noise")
    for sigma in (0, -1.0, float("nan")):                  # a Gaussian of width 0 divides 0 by 0: NaN areas
        with pytest.raises(ValueError, match="sigma must be a width in pixels > 0"):
            metrics.insertion(pixel_model, x, 1, torch.zeros(1, 16, 16), sigma=sigma)
    with pytest.raises(ValueError, match="steps"):
        metrics.deletion(pixel_model, x, 1, torch.zeros(1, 16, 16), steps=0)
    with pytest.raises(ValueError, match="out of range"):
        metrics.deletion(pixel_model, x, 5, torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        metrics.deletion(pixel_model, x[0], 1, torch.zeros(1, 16, 16))


# --------------------------------------------------------------------------- similarity
def test_spearman_and_ssim():
    rng = np.random.default_rng(0)
    a = rng.random((32, 32))
    b = a + 0.3 * rng.random((32, 32))
    assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel()).statistic)
    ties = np.round(a * 3)  # many ties: average ranks, as scipy
    assert metrics.spearman(ties, b) == pytest.approx(stats.spearmanr(ties.ravel(), b.ravel()).statistic)
    assert metrics.spearman(a, a ** 3) == pytest.approx(1.0)           # any increasing function: 1
    assert metrics.spearman(a, -a) == pytest.approx(-1.0)
    assert metrics.spearman(a, np.zeros_like(a)) == 0.0                # a constant map has no ranking
    assert abs(metrics.spearman(a, rng.random((32, 32)))) < 0.1
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.ssim(a, 5 * a + 2) == pytest.approx(1.0)             # scaled to [0, 1] first
    assert metrics.ssim(a, rng.random((32, 32))) < 0.2
    # batches: one value per pair, equal to the pairs one by one
    A, B = rng.random((3, 16, 16)), rng.random((3, 16, 16))
    assert np.allclose(metrics.spearman(A, B), [metrics.spearman(p, q) for p, q in zip(A, B)])
    assert np.allclose(metrics.ssim(A, B), [metrics.ssim(p, q) for p, q in zip(A, B)])
    with pytest.raises(ValueError):
        metrics.spearman(A, B[:2])


def test_ssim_equals_the_formula_written_out_pixel_by_pixel():
    """Wang et al.'s SSIM with a Gaussian window (sigma 1.5, cut at 4 sigma, borders mirrored as
    scipy's 'reflect' = numpy's 'symmetric'), each window's weighted statistics summed by hand."""
    rng = np.random.default_rng(3)
    from scipy.ndimage import uniform_filter

    n1, n2 = rng.random((20, 18)), rng.random((20, 18))
    a, b = uniform_filter(n1, 3), uniform_filter(0.7 * n1 + 0.3 * n2, 3)     # related, smooth maps
    sigma, r = 1.5, int(4 * 1.5 + 0.5)
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    w = np.outer(g, g) / g.sum() ** 2
    ua, ub = [(m - m.min()) / (m.max() - m.min()) for m in (a, b)]
    pa, pb = np.pad(ua, r, mode="symmetric"), np.pad(ub, r, mode="symmetric")
    values = []
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            wa, wb = pa[i:i + 2 * r + 1, j:j + 2 * r + 1], pb[i:i + 2 * r + 1, j:j + 2 * r + 1]
            ma, mb = (w * wa).sum(), (w * wb).sum()
            va, vb = (w * (wa - ma) ** 2).sum(), (w * (wb - mb) ** 2).sum()
            cov = (w * (wa - ma) * (wb - mb)).sum()
            values.append((2 * ma * mb + 0.01 ** 2) * (2 * cov + 0.03 ** 2)
                          / ((ma ** 2 + mb ** 2 + 0.01 ** 2) * (va + vb + 0.03 ** 2)))
    reference = float(np.mean(values))
    assert 0.2 < reference < 0.99                             # a pair where the formula's details matter
    assert metrics.ssim(a, b) == pytest.approx(reference, abs=1e-9)


# --------------------------------------------------------------------------- sanity checks
def test_randomize_layers_copies_and_is_order_free(net):
    before = state(net)
    layers = metrics.parameter_layers(net)
    assert layers[0] == "classifier" and layers[-1] == "features.0"
    assert layers == [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][::-1]
    one = metrics.randomize_layers(net, layers[:2], seed=3)
    assert same(before, state(net))                                     # the caller's model is untouched
    assert not torch.equal(one.classifier.weight, net.classifier.weight)
    assert torch.equal(one.features[0].weight, net.features[0].weight)  # layers not named keep their weights
    # the cascade's weights do not depend on the order of randomisation
    two = metrics.randomize_layers(metrics.randomize_layers(net, layers[1:2], seed=3), layers[:1], seed=3)
    assert same(state(one), state(two))
    w = metrics.randomize_layers(net, "features.0").features[0].weight
    assert float(w.detach().std()) == pytest.approx((2 / 27) ** 0.5, rel=0.3)      # He initialisation
    # a block randomises every layer in it, each as if named alone; a layer without weights is refused
    block = metrics.randomize_layers(net, "features", seed=3)
    alone = metrics.randomize_layers(net, [n for n in layers if n.startswith("features.")], seed=3)
    assert same(state(block), state(alone)) and not torch.equal(block.features[0].weight, net.features[0].weight)
    assert torch.equal(block.classifier.weight, net.classifier.weight)
    with pytest.raises(ValueError, match="'features.1' has no weights to randomise; choose one of classifier, "):
        metrics.randomize_layers(net, "features.1")


def test_randomization_test_destroys_the_gradient_not_the_image(net, batch):
    x, y = batch
    x, y = x[:2], y[:2]
    before = state(net)

    def grad(m, x, target):
        x = x.clone().requires_grad_(True)
        t = torch.as_tensor(models.check_target(m, target, x.shape[0]))
        with hooks.frozen(m):
            (g,) = torch.autograd.grad(m(x).gather(1, t[:, None]).sum(), x)
        return g

    r = metrics.randomization_test(net, grad, x, y)
    assert r.layers == metrics.parameter_layers(net)
    assert r.spearman.shape == r.ssim.shape == r.spearman_signed.shape == (len(r.layers), 2)
    assert len(r.maps) == len(r.layers) + 1 and r.maps[0].shape == (2, 128, 128)
    assert r.spearman[-1].mean() < 0.5 and r.sensitivity > 0.5
    # one definition: 1 - the mean over every step and image (the area under the cascade's curve),
    # computed here from the per-step means, not the last step's alone
    assert r.sensitivity == pytest.approx(1 - np.mean([row.mean() for row in r.spearman]))
    late = metrics.Randomization(r.layers, np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]), r.spearman_signed,
                                 r.ssim, r.maps)   # maps that change at the last step only
    assert late.sensitivity == pytest.approx(1 / 3)
    assert same(before, state(net))

    def image(m, x, target):  # a "method" that ignores the model fails the sanity check
        return x.clone()

    r = metrics.randomization_test(net, image, x, y, layers=["classifier", "features.0"], cascading=False)
    assert np.allclose(r.spearman, 1.0) and np.allclose(r.ssim, 1.0) and r.sensitivity == pytest.approx(0.0)


def test_randomization_test_leaves_the_model_after_an_error(net, batch):
    x, y = batch
    before = state(net)
    handles = len(net._forward_hooks)

    def broken(m, x, target):
        m.register_forward_hook(lambda *a: None)
        m.train()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        metrics.randomization_test(net, broken, x[:1], y[:1])
    assert same(before, state(net)) and not net.training and len(net._forward_hooks) == handles
    with pytest.raises(ValueError, match="unknown layer"):
        metrics.randomization_test(net, broken, x[:1], y[:1], layers=["nope"])


def test_data_randomization_test(net, batch):
    x, y = batch
    g = metrics.methods(names=["vanilla"])["vanilla"]
    same_model = metrics.data_randomization_test(net, net, g, x[:2], y[:2])
    assert np.allclose(same_model.spearman, 1.0) and np.allclose(same_model.ssim, 1.0)
    torch.manual_seed(5)
    other = shapes.ShapesNet().eval()
    d = metrics.data_randomization_test(net, other, g, x[:2], y[:2])
    assert d.spearman.shape == (2,) and d.maps.shape == d.other_maps.shape == (2, 128, 128)
    assert d.spearman.mean() < 0.9


# --------------------------------------------------------------------------- every method, the leaderboard
def test_methods_give_maps_of_every_image(net, batch):
    x, y = batch
    before = state(net)
    table = metrics.methods(ig_steps=2, smoothgrad_samples=2)
    assert tuple(table) == metrics.METHODS and len(metrics.METHODS) == 15
    for name, fn in table.items():
        m = fn(net, x[:2], y[:2])
        heat = metrics.as_heatmap(m)
        assert heat.shape == (2, 128, 128), name
        assert torch.isfinite(heat).all() and heat.min() >= 0, name
    assert same(before, state(net)) and not net.training
    assert float(table["occlusion"](net, x[:1], y[:1]).min()) >= 0   # a drop of probability, clipped at 0
    # each name is wired to its own method (a swapped entry would still give valid-looking maps)
    from helpers import cam, gradients

    direct = {"vanilla": gradients.vanilla, "saliency": gradients.saliency, "guided": gradients.guided,
              "deconvnet": gradients.deconvnet, "grad_x_image": gradients.grad_x_image,
              "integrated_gradients": lambda m_, x_, y_: gradients.integrated_gradients(m_, x_, y_, steps=2,
                                                                                          progress=False),
              "lrp": lambda m_, x_, y_: gradients.lrp(m_, x_, y_, rule="epsilon"), "cam": cam.cam,
              "grad_cam": cam.grad_cam, "guided_grad_cam": cam.guided_grad_cam, "grad_cam_pp": cam.grad_cam_pp,
              "layer_cam": cam.layer_cam,
              "score_cam": lambda m_, x_, y_: cam.score_cam(m_, x_, y_, progress=False)}
    for name, fn in direct.items():
        torch.testing.assert_close(table[name](net, x[:2], y[:2]), fn(net, x[:2], y[:2]), msg=name)
    with pytest.raises(ValueError, match="unknown method"):
        metrics.methods(names=["gradcam"])
    # SmoothGrad's noise is seeded at every call: two calls give the same map
    assert torch.equal(table["smoothgrad"](net, x[:1], y[:1]), table["smoothgrad"](net, x[:1], y[:1]))


def test_smoothgrad_noise_of_the_leaderboard_is_chapter_08s(net, batch):
    # ShapesNet loses its answer at the paper's 15 %: the leaderboard uses chapter 08's 3 %
    x, y = batch
    assert metrics.default_smoothgrad_noise(net) == 0.03
    assert metrics.default_smoothgrad_noise(torchvision.models.alexnet(weights=None)) == 0.15
    got = metrics.methods(smoothgrad_samples=2, names=["smoothgrad"])["smoothgrad"](net, x[:1], y[:1])
    want = {level: gradients.smoothgrad(net, x[:1], y[:1], samples=2, noise=level, progress=False,
                                        generator=torch.Generator().manual_seed(0)) for level in (0.03, 0.15)}
    assert torch.equal(got, want[0.03]) and not torch.allclose(got, want[0.15])
    forced = metrics.methods(smoothgrad_samples=2, smoothgrad_noise=0.15, names=["smoothgrad"])["smoothgrad"]
    assert torch.equal(forced(net, x[:1], y[:1]), want[0.15])


def test_leaderboard_table_json_and_agreement(net, batch, tmp_path):
    x, y = batch
    masks = np.stack([s.masks[0] for s in shapes.scenes(metrics.scene_seeds(3))])
    table = metrics.methods(names=["vanilla", "grad_cam"])
    torch.manual_seed(7)
    other = shapes.ShapesNet().eval()
    board = metrics.leaderboard(net, x, y, masks, table, n_faithfulness=2, n_randomization=1, steps=4,
                                shuffled=other, n_data=2, keep_maps=True)
    assert board.methods == ["vanilla", "grad_cam"]
    row = board.rows["grad_cam"]
    for key in ("pointing", "pointing_15", "energy", "deletion", "insertion", "sensitivity", "spearman_all",
                "data_sensitivity", "shuffled_pointing", "time"):
        assert np.isfinite(row[key]), key
    per = board.per_image["vanilla"]
    assert len(per["pointing"]) == 3 and len(per["deletion"]) == 2 and len(per["data_spearman"]) == 2
    steps = len(metrics.parameter_layers(net))
    assert per["random_spearman"].shape == (steps, 1) and len(board.cascade["grad_cam"]["spearman"]) == steps
    # the per-image peak distance gives the hits at both tolerances
    assert np.array_equal(per["distance"] <= 0, per["pointing"] > 0.5)
    assert np.array_equal(per["distance"] <= 15, per["pointing_15"] > 0.5)
    assert board.settings["targets"] == list(y)
    # the sensitivity is 1 - the mean Spearman over the cascade, the same as randomization_test's
    rt = metrics.randomization_test(net, table["grad_cam"], x[:1], y[:1])
    assert row["sensitivity"] == pytest.approx(1 - rt.spearman.mean(), abs=1e-6)
    assert row["sensitivity"] == pytest.approx(rt.sensitivity, abs=1e-6)
    assert board.maps["grad_cam"].shape == (3, 128, 128) and board.maps["grad_cam/shuffled"].shape == (2, 128, 128)
    part = metrics.leaderboard(net, x[:1], y[:1], masks[:1], table, n_faithfulness=0, n_randomization=1, steps=2,
                               randomize=["grad_cam"])
    assert "sensitivity" in part.rows["grad_cam"] and "sensitivity" not in part.rows["vanilla"]
    assert "deletion" not in part.rows["vanilla"] and list(part.cascade) == ["grad_cam"]
    text = board.table()
    assert "grad_cam" in text and "pointing" in text and "deletion AUC" in text
    board.to_json(tmp_path / "b.json")
    back = metrics.Leaderboard.from_json(tmp_path / "b.json")
    assert back.rows["vanilla"]["deletion"] == pytest.approx(board.rows["vanilla"]["deletion"], abs=1e-6)
    agree = metrics.agreement(board, back)
    assert agree["grad_cam"].keys() >= {"pointing", "distance", "deletion", "random_spearman", "data_ssim"}
    assert all(v <= 1e-5 for cols in agree.values() for v in cols.values())
    small = metrics.leaderboard(net, x[:2], y[:2], masks[:2], table, n_faithfulness=1, n_randomization=1, steps=4,
                                shuffled=other, n_data=1)
    agree = metrics.agreement(small, board)   # a smaller run on the same images: the same numbers
    assert all(v <= 1e-4 for cols in agree.values() for v in cols.values()), agree
    assert set(agree) == {"vanilla", "grad_cam"} and all(len(cols) == 13 for cols in agree.values()), agree
    json.loads((tmp_path / "b.json").read_text())  # plain JSON (no NaN)
    # without masks there are no localisation columns; an unsupported method is skipped with its reason
    vgg_like = metrics.leaderboard(net, x[:1], y[:1], None, {"nope": _unsupported}, n_faithfulness=1,
                                   n_randomization=1, steps=2)
    assert vgg_like.skipped["nope"].startswith("CAM needs") and not vgg_like.rows
    with pytest.raises(FileNotFoundError, match="python -m helpers.metrics"):
        metrics.Leaderboard.from_json(tmp_path / "missing.json")


def _board(per_image):
    return metrics.Leaderboard(rows={m: {} for m in per_image}, per_image=per_image, curves={}, settings={})


def test_agreement_compares_everything_or_says_why():
    shipped = _board({"vanilla": {"deletion": np.array([0.1, 0.2, 0.3]), "pointing": np.array([1.0, 0.0, 1.0]),
                                  "random_spearman": np.array([[0.5, 0.4, 0.3], [0.2, 0.1, np.nan]])}})
    live = _board({"vanilla": {"deletion": np.array([0.1, 0.25]), "pointing": np.array([1.0, 1.0]),
                               "random_spearman": np.array([[0.5, 0.4], [0.2, 0.1]])}})
    got = metrics.agreement(live, shipped)
    assert got["vanilla"]["deletion"] == pytest.approx(0.05) and got["vanilla"]["pointing"] == pytest.approx(0.5)
    assert got["vanilla"]["random_spearman"] == pytest.approx(0.0)
    # nan on one side only is a difference, on both sides an agreement
    nan_live = _board({"vanilla": {"random_spearman": np.array([[0.5, 0.4, np.nan], [0.2, 0.1, 0.0]])}})
    assert metrics.agreement(nan_live, shipped)["vanilla"]["random_spearman"] == np.inf
    both = _board({"vanilla": {"random_spearman": np.array([[0.5, 0.4, 0.3], [0.2, 0.1, np.nan]])}})
    assert metrics.agreement(both, shipped)["vanilla"]["random_spearman"] == 0.0
    # what cannot be compared raises instead of being skipped
    bad = [({"deletion": np.zeros(4)}, "shape"),              # more live images than shipped
           ({"random_spearman": np.zeros((3, 2))}, "shape"),   # another number of cascade steps
           ({"deletion": np.zeros((1, 2))}, "shape"),          # another number of dimensions
           ({"deletion": np.zeros(0)}, "empty"),
           ({"energy": np.zeros(2)}, "not in the shipped")]    # a column the shipped file lacks
    for cols, why in bad:
        with pytest.raises(ValueError, match=why):
            metrics.agreement(_board({"vanilla": cols}), shipped)
    with pytest.raises(ValueError, match="not in the shipped"):
        metrics.agreement(_board({"grad_cam": {"deletion": np.zeros(2)}}), shipped)


def test_shapes_leaderboard_uses_the_callers_models():
    try:
        sn, shuffled = models.load("shapesnet"), models.load("shapesnet-shuffled")
    except FileNotFoundError:
        pytest.skip("ShapesNet's weights are not there yet")
    before, before_shuffled = state(sn), state(shuffled)
    board = metrics.shapes_leaderboard(1, 1, 0, 2, n_data=1, shuffled=shuffled, names=["vanilla"], model=sn)
    assert board.settings["weights"] == metrics.weights_digest("shapesnet")
    assert board.settings["weights_shuffled"] == metrics.weights_digest("shapesnet-shuffled")
    assert same(before, state(sn)) and same(before_shuffled, state(shuffled))
    # the models passed are the ones measured: a changed copy is not the shipped ShapesNet
    changed = metrics.randomize_layers(sn, ["classifier"])
    other = metrics.shapes_leaderboard(1, 0, 0, 2, shuffled=False, names=["vanilla"], model=changed)
    assert other.settings["weights"] == "not the shipped weights" and other.settings["weights_shuffled"] == ""
    assert other.rows["vanilla"]["energy"] != board.rows["vanilla"]["energy"]
    with pytest.raises(ValueError, match="shuffled"):
        metrics.shapes_leaderboard(1, 0, 0, 2, shuffled="yes", names=["vanilla"], model=sn)


def _unsupported(model, x, target):
    raise ValueError("CAM needs global average pooling; use Grad-CAM")


def test_trained_shapesnet_grad_cam_points_at_the_object():
    try:
        model = models.load("shapesnet")
    except FileNotFoundError:
        pytest.skip("ShapesNet's weights are not there yet (python -m helpers.shapes train)")
    seeds = metrics.scene_seeds(24)
    x, y = shapes.batch(seeds)
    masks = np.stack([s.masks[0] for s in shapes.scenes(seeds)])
    from helpers import cam

    heat = cam.grad_cam(model, x, y.tolist())
    assert metrics.pointing_game(heat, masks).accuracy >= 0.95             # the paper's 15 px
    assert metrics.pointing_game(heat, masks, tolerance=0).accuracy >= 0.6  # rings: the peak can lie in the hole
    # deletion follows the map's order: Grad-CAM's order deletes faster than its reverse; with the blurred
    # substrate also faster than a random order (with the grey fill of the paper's code a deleted blob keeps
    # the object's outline, which ShapesNet still recognises: chapter 24 shows it)
    rand = torch.rand(8, 128, 128, generator=torch.Generator().manual_seed(0))
    x8, y8 = x[:8], y[:8].tolist()
    auc = {name: metrics.deletion(model, x8, y8, m, substrate=sub).mean_auc
           for name, m, sub in [("gc", heat[:8], "zero"), ("rev", 1 - heat[:8], "zero"), ("gc_blur", heat[:8], "blur"),
                                ("rand_blur", rand, "blur"), ("rev_blur", 1 - heat[:8], "blur")]}
    assert auc["gc"] + 0.2 < auc["rev"], auc
    assert auc["gc_blur"] + 0.2 < auc["rand_blur"] < auc["rev_blur"], auc


def test_command_line_writes_the_leaderboard(tmp_path, monkeypatch, net):
    monkeypatch.setattr(models, "load", lambda name, device=None: net)   # no weights needed: structure only
    out = tmp_path / "board.json"
    assert metrics._main(["leaderboard", "--out", str(out), "--scenes", "2", "--faithfulness", "1",
                          "--randomization", "1", "--data", "1", "--steps", "2", "--methods", "grad_cam"]) == 0
    board = metrics.Leaderboard.from_json(out)
    assert board.methods == ["grad_cam"] and board.settings["images"] == 2
    assert board.settings["command"].startswith("python -m helpers.metrics leaderboard --scenes 2")
    assert board.settings["seeds"] == [metrics.SCENE_SEED, metrics.SCENE_SEED + 1]
    # --methods on an existing file redoes those rows and keeps the others, recording the redo
    common = ["leaderboard", "--out", str(out), "--scenes", "2", "--faithfulness", "1", "--randomization", "1",
              "--data", "1", "--steps", "2"]
    assert metrics._main(common + ["--methods", "vanilla"]) == 0
    two = metrics.Leaderboard.from_json(out)
    assert two.methods == ["vanilla", "grad_cam"]                           # chapter order
    assert two.rows["grad_cam"] == board.rows["grad_cam"]
    assert two.settings["recomputed"]["vanilla"]["previous"]["row"] is None   # added in a run of its own
    assert metrics._main(common + ["--methods", "grad_cam", "--why", "a test"]) == 0
    three = metrics.Leaderboard.from_json(out)
    assert three.rows["vanilla"] == two.rows["vanilla"]
    assert three.settings["recomputed"]["grad_cam"]["why"] == "a test"
    assert three.settings["recomputed"]["grad_cam"]["previous"]["row"] == board.rows["grad_cam"]
    assert "--methods grad_cam" in three.settings["recomputed"]["grad_cam"]["command"]
    assert "earlier" not in three.settings["recomputed"]["grad_cam"]
    # a second redo of the same row keeps the first redo's record, with the row that one replaced
    assert metrics._main(common + ["--methods", "grad_cam", "--why", "again"]) == 0
    four = metrics.Leaderboard.from_json(out)
    assert four.settings["recomputed"]["grad_cam"]["why"] == "again"
    assert four.settings["recomputed"]["grad_cam"]["earlier"] == three.settings["recomputed"]["grad_cam"]
    assert four.settings["recomputed"]["grad_cam"]["earlier"]["previous"]["row"] == board.rows["grad_cam"]


def test_merged_refuses_leaderboards_made_differently():
    a = metrics.Leaderboard(rows={"vanilla": {"pointing": 1.0}}, per_image={"vanilla": {"pointing": [1.0]}}, curves={},
                            settings={"images": 1, "steps": 16, "methods": {"smoothgrad_noise": 0.15}})
    b = metrics.Leaderboard(rows={"smoothgrad": {"pointing": 0.5}}, per_image={"smoothgrad": {"pointing": [0.0]}},
                            curves={}, settings={"images": 1, "steps": 16, "methods": {"smoothgrad_noise": 0.03}})
    m = a.merged(b, "why")
    assert m.methods == ["vanilla", "smoothgrad"] and m.settings["methods"]["smoothgrad_noise"] == 0.03
    assert m.settings["recomputed"]["smoothgrad"]["previous"] == {"methods": {"smoothgrad_noise": 0.15}, "row": None}
    assert "recomputed" not in a.settings                                    # the original is unchanged
    b.settings["steps"] = 8
    with pytest.raises(ValueError, match="steps"):
        a.merged(b)
