"""helpers.gradients: every method against an independent reference, on every architecture.

References are written differently from the helpers on purpose: per-image ``.backward()`` on a
copy of the model (vanilla), backward hooks on ``nn.ReLU`` modules (guided, deconvnet), the
paper's axioms (completeness of integrated gradients), counts of forward passes (speed floor).
"""
import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import gradients, hooks, images, models, shapes
from model_state import snapshot
from relu_nets import FunctionalNet, ModuleNet, hooked_reference

ARCHITECTURES = ["vgg16", "vgg19", "alexnet", "resnet50", "googlenet", "inception_v3"]


@functools.lru_cache(maxsize=None)
def shapesnet():
    return models.load("shapesnet")


@functools.lru_cache(maxsize=None)
def architecture(name):
    torch.manual_seed(0)
    net = models._build_torchvision(name, None).eval()
    if name == "googlenet":  # larger weights than the init, so the input gradient is far from zero
        for p in net.parameters():
            p.data.mul_(1.5)
    return net


# small inputs: the smallest each architecture takes (structure is what these tests check)
SIZES = {"vgg16": 32, "vgg19": 32, "alexnet": 64, "resnet50": 32, "googlenet": 32, "inception_v3": 75,
         "shapesnet": 128}


@functools.lru_cache(maxsize=None)
def scenes_batch(seeds=(11, 12, 13, 14)):
    x, y = shapes.batch(list(seeds))
    return x, y


# ------------------------------------------------------------------------------------------- vanilla
def test_vanilla_equals_per_image_backward_on_a_copy():
    model = shapesnet()
    x, y = scenes_batch()
    targets = [int(t) for t in y]
    before = snapshot(model)
    g = gradients.vanilla(model, x, targets)
    assert snapshot(model) == before
    ref_model = copy.deepcopy(model)
    for i, t in enumerate(targets):
        xi = x[i:i + 1].clone().requires_grad_(True)
        ref_model(xi)[0, t].backward()
        assert torch.allclose(g[i], xi.grad[0], atol=1e-6, rtol=1e-4)
    assert g.shape == x.shape and g.device.type == "cpu"
    # target=None explains the predicted class, from the same forward pass
    with torch.no_grad():
        pred = model(x).argmax(1).tolist()
    assert torch.equal(gradients.vanilla(model, x), gradients.vanilla(model, x, pred))
    # one int for all images = that int repeated
    assert torch.equal(gradients.vanilla(model, x, 3), gradients.vanilla(model, x, [3] * len(x)))


def test_filter_objective_stops_forward_at_the_layer():
    model = shapesnet()
    x, _ = scenes_batch()
    gradients.vanilla(model, x[:1], layer="features.8", channel=5)   # the one probe per layer (hooks.forward_to)
    calls = []
    h = model.classifier.register_forward_hook(lambda *a: calls.append(1))
    try:
        g_sum = gradients.vanilla(model, x, layer="features.8", channel=5)
        g_max = gradients.guided(model, x, layer=model.features[8], channel=5, reduce="max")
    finally:
        h.remove()
    assert calls == []  # the classifier never ran
    xr = x.clone().requires_grad_(True)
    a = model.features[:9](xr)[:, 5]
    (ref_sum,) = torch.autograd.grad(a.sum(), xr, retain_graph=True)
    assert torch.allclose(g_sum, ref_sum, atol=1e-6, rtol=1e-4)
    with hooks.relu_rule(model, "guided"):
        xr = x.clone().requires_grad_(True)
        a = model.features[:9](xr)[:, 5]
        (ref_max,) = torch.autograd.grad(a.flatten(1).amax(1).sum(), xr)
    assert torch.allclose(g_max, ref_max, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------ guided and deconvnet
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_rules_equal_the_paper_rule_on_module_and_functional_relus(rule):
    torch.manual_seed(1)
    fun, mod = FunctionalNet(), ModuleNet()
    mod.load_state_dict(fun.state_dict(), strict=False)
    x = torch.randn(3, 3, 16, 16)
    targets = [0, 2, 4]
    ref = hooked_reference(mod, x, targets, rule)
    method = getattr(gradients, rule)
    for net in (fun, mod):
        before = snapshot(net)
        got = method(net, x, targets)
        assert torch.allclose(got, ref, atol=1e-6), (rule, type(net).__name__)
        assert snapshot(net) == before
    assert not torch.allclose(gradients.vanilla(fun, x, targets), ref, atol=1e-6)
    if rule == "guided":  # guided gradients of a first-layer ReLU net are zero where vanilla is negative-only
        assert (got != 0).any()


def test_guided_on_googlenet_hooks_every_functional_relu():
    net = architecture("googlenet")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    plain = gradients.vanilla(net, x, [7, 8])
    # the naive way: backward hooks on nn.ReLU modules; GoogLeNet has none, so nothing changes
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    assert relus == []
    g = gradients.guided(net, x, [7, 8])
    assert (plain - g).abs().max() > 0.1 * plain.abs().max()
    with hooks.relu_rule(net, "guided") as h:
        xr = x.clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(net(xr)[[0, 1], [7, 8]].sum(), xr)
    assert h.calls > 50
    assert torch.allclose(g, ref, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("name", ARCHITECTURES + ["shapesnet"])
def test_every_method_on_every_architecture_batch_in_batch_out(name):
    net = shapesnet() if name == "shapesnet" else architecture(name)
    s = SIZES[name]
    x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(0))
    before = snapshot(net)
    for method in (gradients.vanilla, gradients.guided, gradients.deconvnet):
        g = method(net, x, [1, 2])
        assert g.shape == x.shape and torch.isfinite(g).all() and g.device.type == "cpu", method.__name__
    g = gradients.guided(net, x, layer=models.last_conv_layer(net), channel=3)
    assert g.shape == x.shape and torch.isfinite(g).all()
    if name in ("googlenet", "shapesnet"):  # the rest is built on the calls above: two architectures suffice
        m = gradients.saliency(net, x, [1, 2])
        assert m.shape == (2, s, s) and m.min() >= 0 and torch.allclose(m.flatten(1).amax(1), torch.ones(2))
        gx = gradients.grad_x_image(net, x, [1, 2])
        ig = gradients.integrated_gradients(net, x, [1, 2], steps=2, progress=False)
        sg = gradients.smoothgrad(net, x, [1, 2], method=gradients.guided, samples=2, progress=False)
        assert gx.shape == ig.shape == sg.shape == x.shape
        assert torch.isfinite(ig).all() and torch.isfinite(sg).all() and torch.isfinite(gx).all()
    assert snapshot(net) == before
    assert all(p.grad is None for p in net.parameters())  # nothing flowed into the weights


# ----------------------------------------------------------------------------------- model unchanged
def test_model_left_as_it_was_also_after_errors():
    net = ModuleNet().train()
    net.c1.bias.requires_grad_(False)
    net.c2.register_forward_hook(lambda *a: None)
    before = snapshot(net)
    relu = F.relu
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="channels 0..11"):
        gradients.guided(net, x, layer="c2", channel=12)  # raised inside the rule's context
    with pytest.raises(ValueError, match="out of range"):
        gradients.deconvnet(net, x, 1000)
    for method in (gradients.vanilla, gradients.guided, gradients.deconvnet):
        method(net, x, 1)
    gradients.integrated_gradients(net, x, 1, steps=4, progress=False)
    gradients.smoothgrad(net, x, 1, method=gradients.guided, samples=3, progress=False)
    assert snapshot(net) == before and net.training and F.relu is relu
    assert "relu" not in torch.Tensor.__dict__


def test_clear_errors():
    model = shapesnet()
    x, _ = scenes_batch()
    cases = [
        (lambda: gradients.vanilla(model, x[0], 1), "x\\[None\\]"),
        (lambda: gradients.vanilla(model, x.numpy(), 1), "torch.Tensor"),
        (lambda: gradients.guided(model, (x * 255).to(torch.uint8), 1), "float"),
        (lambda: gradients.vanilla(model, x, len(shapes.CLASSES)), f"classes 0..{len(shapes.CLASSES) - 1}"),
        (lambda: gradients.vanilla(model, x, [1, 2]), "one per image"),
        (lambda: gradients.guided(model, x, 1, layer="features.8", channel=0), "not both"),
        (lambda: gradients.guided(model, x, layer="features.8"), "needs a channel"),
        (lambda: gradients.guided(model, x, channel=3), "needs a layer"),
        (lambda: gradients.guided(model, x, layer="features.99", channel=3), "valid names"),
        (lambda: gradients.guided(model, x, layer="features.8", channel=3, reduce="mean"), "reduce"),
        (lambda: gradients.integrated_gradients(model, x, 1, baseline="white"), "'blur', 'noise'"),
        (lambda: gradients.integrated_gradients(model, x, 1, baseline=torch.zeros(3, 5, 5)), "broadcast"),
        (lambda: gradients.integrated_gradients(model, x, 1, steps=0), "steps"),
        (lambda: gradients.smoothgrad(model, x, 1, noise=-0.1), "noise"),
        (lambda: gradients.smoothgrad(model, x, 1, samples=0), "samples"),
        (lambda: gradients.smoothgrad(model, x, 1, batch_size=0), "batch_size"),
        (lambda: gradients.smoothgrad(model, x, 1, method="guided"), "method"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


# ---------------------------------------------------------------------------------------- saliency
def test_saliency_is_the_channel_max_and_lies_on_the_object():
    model = shapesnet()
    x, y = scenes_batch()
    g = gradients.vanilla(model, x, y)
    ref = g.abs().max(dim=1).values
    ref = ref / ref.flatten(1).max(1).values[:, None, None]
    assert torch.allclose(gradients.saliency(model, x, y), ref)
    # in the shapes world the map's mass concentrates on the target object
    seeds = list(range(500, 520))
    ss = shapes.scenes(seeds)
    xs, ys = shapes.batch(seeds)
    m = gradients.saliency(model, xs, ys).numpy()
    masks = np.stack([s.masks[0] for s in ss])
    mass = (m * masks).sum((1, 2)) / m.sum((1, 2))
    area = masks.mean((1, 2))
    assert mass.mean() >= 2 * area.mean(), (mass.mean(), area.mean())
    assert (mass > area).mean() >= 0.8


# ---------------------------------------------------------------------------- integrated gradients
def test_black_baseline_is_pixel_zero_not_tensor_zero():
    model = shapesnet()
    x, _ = scenes_batch()
    b = gradients.make_baseline(model, x, "black")
    assert (images.to_image(b, model=model) == 0).all()
    assert not torch.allclose(b, torch.zeros_like(b))
    assert torch.equal(gradients.make_baseline(model, x, None), b)
    blur = gradients.make_baseline(model, x, "blur")
    assert torch.allclose(blur.mean((2, 3)), x.mean((2, 3)), atol=0.05)  # colours stay
    assert blur.diff(dim=-1).abs().mean() < 0.2 * x.diff(dim=-1).abs().mean()  # edges go
    # half precision comes back in its dtype, the float32 blur rounded (computed in float32 on a
    # CPU: torch's float16 convolution there took about a minute per image)
    for dt in (torch.float16, torch.bfloat16):
        half = gradients.make_baseline(model, x.to(dt), "blur")
        assert half.dtype == dt and torch.allclose(half.float(), blur, atol=2e-2)
    noise = images.to_image(gradients.make_baseline(model, x, "noise", generator=torch.Generator().manual_seed(0)),
                            model=model)
    assert noise.min() <= 2 and noise.max() >= 253 and abs(noise.mean() - 127.5) < 3


def test_integrated_gradients_completeness_at_128_steps():
    """Sum of attributions = S(x) - S(x') within 5 % at 128 steps, for the three named baselines.

    Two scenes against black (the paper's baseline), one against blur and one against noise, in
    one call: a baseline tensor may differ per image.
    """
    model = shapesnet()
    x, y = scenes_batch()
    x, y = x[[0, 1, 0, 1]], y[[0, 1, 0, 1]]
    gen = torch.Generator().manual_seed(0)
    ref = torch.cat([gradients.make_baseline(model, x[:2], "black"), gradients.make_baseline(model, x[2:3], "blur"),
                     gradients.make_baseline(model, x[3:], "noise", generator=gen)])
    ig = gradients.integrated_gradients(model, x, y, baseline=ref, steps=128, progress=False)
    with torch.no_grad():
        delta = model(x)[range(len(x)), y] - model(ref)[range(len(x)), y]
    total = ig.flatten(1).sum(1)
    assert ((total - delta).abs() <= 0.05 * delta.abs()).all(), (total, delta)


def test_integrated_gradients_riemann_sum_batching_and_one_step():
    model = shapesnet()
    x, y = scenes_batch()
    x, y = x[:2], y[:2]
    ref = gradients.make_baseline(model, x, "black")
    steps = 6
    # the right Riemann sum, written out one path point at a time
    expected = torch.zeros_like(x)
    for k in range(1, steps + 1):
        expected += gradients.vanilla(model, ref + k / steps * (x - ref), y)
    expected = expected * (x - ref) / steps
    for bs in (None, 5):
        got = gradients.integrated_gradients(model, x, y, steps=steps, batch_size=bs, progress=False)
        assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4), bs
    # one step is gradient x image (both from the black image)
    assert torch.allclose(gradients.integrated_gradients(model, x, y, steps=1, progress=False),
                          gradients.grad_x_image(model, x, y), atol=1e-6)
    # the baseline itself gets zero attribution
    assert gradients.integrated_gradients(model, ref, y, steps=4, progress=False).abs().max() == 0


def test_grad_x_image_is_pixels_times_pixel_gradient():
    model = shapesnet()
    x, y = scenes_batch()
    info = models.info(model)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    pixels = (x * std + mean).requires_grad_(True)
    score = model((pixels - mean) / std)[range(len(x)), y].sum()
    (g_pixels,) = torch.autograd.grad(score, pixels)
    assert torch.allclose(gradients.grad_x_image(model, x, y), pixels.detach() * g_pixels, atol=1e-6, rtol=1e-4)
    naive = gradients.grad_x_image(model, x, y, baseline=torch.zeros(3, 1, 1))
    assert torch.allclose(naive, x * gradients.vanilla(model, x, y), atol=1e-7)


# --------------------------------------------------------------------------------------- smoothgrad
@pytest.mark.parametrize("method,kwargs", [(gradients.vanilla, {}), (gradients.guided, {}),
                                           (gradients.integrated_gradients, {"steps": 8})])
def test_smoothgrad_with_zero_noise_equals_the_wrapped_method(method, kwargs):
    model = shapesnet()
    x, y = scenes_batch()
    x, y = x[:2], y[:2]
    alone = method(model, x, y, **kwargs)
    smooth = gradients.smoothgrad(model, x, y, method=method, samples=4, noise=0.0, progress=False, **kwargs)
    assert torch.allclose(smooth, alone, atol=1e-6, rtol=1e-4)
    noisy = gradients.smoothgrad(model, x, y, method=method, samples=4, noise=0.2, progress=False, **kwargs)
    assert not torch.allclose(noisy, alone, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method", [gradients.vanilla, gradients.guided, gradients.deconvnet])
def test_smoothgrad_of_a_filters_activation(method):
    """layer= and channel= reach the wrapped method (the filter's activation is explained)."""
    model = shapesnet()
    x, _ = scenes_batch()
    x = x[:2]
    alone = method(model, x, layer="features.8", channel=3)
    smooth = gradients.smoothgrad(model, x, method=method, samples=2, noise=0.0, progress=False,
                                  layer="features.8", channel=3)
    torch.testing.assert_close(smooth, alone, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="either a target class, or a layer and a channel"):
        gradients.smoothgrad(model, x, 1, method=method, samples=2, progress=False, layer="features.8", channel=3)


@pytest.mark.parametrize("method,kwargs", [(gradients.vanilla, {}), (gradients.integrated_gradients, {"steps": 4})])
def test_smoothgrad_gives_an_image_the_same_map_alone_as_in_a_batch(method, kwargs):
    """The noise samples are drawn in order and shared by the batch, each scaled to its image."""
    model = shapesnet()
    x, y = scenes_batch()
    x = x[:3] * torch.tensor([1.0, 3.0, 0.5]).view(-1, 1, 1, 1)  # three different ranges
    y = y[:3]

    def seeded():
        return torch.Generator().manual_seed(7)

    together = gradients.smoothgrad(model, x, y, method=method, samples=5, noise=0.1, batch_size=4,
                                    progress=False, generator=seeded(), **kwargs)
    for k in range(3):
        alone = gradients.smoothgrad(model, x[k:k + 1], y[k:k + 1], method=method, samples=5, noise=0.1,
                                     batch_size=2, progress=False, generator=seeded(), **kwargs)
        assert torch.allclose(alone[0], together[k], atol=1e-6, rtol=1e-4), k
    # and an image's map differs from the one with other noise
    other = gradients.smoothgrad(model, x[:1], y[:1], method=method, samples=5, noise=0.1, progress=False,
                                 generator=torch.Generator().manual_seed(8), **kwargs)
    assert not torch.allclose(other[0], together[0], atol=1e-6, rtol=1e-4)


def test_smoothgrad_draws_each_noise_sample_once_in_order():
    model = shapesnet()
    x = torch.rand(3, 3, 8, 8) * torch.tensor([1.0, 2.0, 4.0]).view(-1, 1, 1, 1)
    seen = []

    def probe(model, xx, target):  # returns the noisy input itself
        seen.append(xx.detach().clone())
        return xx.detach()

    samples, noise = 4, 0.2
    gradients.smoothgrad(model, x, [0, 1, 2], method=probe, samples=samples, noise=noise, batch_size=5,
                         progress=False, generator=torch.Generator().manual_seed(3))
    copies = torch.cat(seen).view(samples, 3, 3, 8, 8)  # sample-major: copy j is image j % 3
    sigma = noise * (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)
    eps = (copies - x) / sigma
    g = torch.Generator().manual_seed(3)
    want = torch.stack([torch.randn(3, 8, 8, generator=g) for _ in range(samples)])
    for k in range(3):
        assert torch.allclose(eps[:, k], want, atol=1e-5), k


def test_smoothgrad_noise_is_a_fraction_of_each_images_range():
    """sigma = noise * (max - min) per image: the standard deviation, not its square."""
    model = shapesnet()
    x = torch.randn(2, 3, 16, 16)
    x[1] *= 5  # a five times larger range
    seen = []

    def probe(model, x, target):  # same signature as the methods: returns the noisy input
        seen.append(len(x))
        return x.detach().cpu()

    samples, noise = 2000, 0.1
    mean_sq = gradients.smoothgrad(model, x ** 0, 0, method=lambda m, xx, t: (xx - 1) ** 2,
                                   samples=samples, noise=noise, batch_size=500, progress=False)
    assert torch.allclose(mean_sq.mean(), torch.tensor(0.0), atol=1e-6)  # a constant image has range 0
    sq = gradients.smoothgrad(model, x, [0, 0], method=lambda m, xx, t: xx.cpu() ** 2, samples=samples,
                              noise=noise, batch_size=500, progress=False)
    var = (sq - x ** 2).mean((1, 2, 3))  # E[(x + e)^2] - x^2 = sigma^2
    sigma = noise * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    assert torch.allclose(var.sqrt(), sigma, rtol=0.03), (var.sqrt(), sigma)
    gradients.smoothgrad(model, x, 0, method=probe, samples=10, batch_size=6, progress=False)
    assert seen == [6, 6, 6, 2]  # noisy copies of both images, batched, no per-sample loop


def count_forwards(model, fn):
    calls = []
    h = model.register_forward_pre_hook(lambda m, i: calls.append(len(i[0])))
    try:
        fn()
    finally:
        h.remove()
    return calls


def test_no_extra_forward_passes():
    model = shapesnet()
    x, y = scenes_batch()
    x, y = x[:2], y[:2]
    assert count_forwards(model, lambda: gradients.guided(model, x, y)) == [2]
    assert count_forwards(model, lambda: gradients.deconvnet(model, x)) == [2]
    assert count_forwards(model, lambda: gradients.integrated_gradients(
        model, x, y, steps=16, batch_size=8, progress=False)) == [8, 8, 8, 8]
    assert count_forwards(model, lambda: gradients.smoothgrad(
        model, x, y, samples=10, batch_size=10, progress=False)) == [10, 10]
    assert count_forwards(model, lambda: gradients.smoothgrad(
        model, x, y, method=gradients.integrated_gradients, steps=5, samples=3, batch_size=15,
        progress=False)) == [15, 15]


def test_default_cpu_batch_keeps_each_layer_output_under_32_mb():
    # 64 channels at 224 x 224 are 12.8 MB an image, like VGG16's first layers: 2 a batch;
    # a wide late layer counts as much as an early one; ShapesNet (0.5 MB an image): 8.
    wide = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10)).train()
    before = snapshot(wide)
    x = torch.zeros(5, 3, 224, 224)
    assert gradients._batch_size(None, wide, x, "f") == 2
    assert snapshot(wide) == before and wide.training           # the probe's hooks are gone, mode kept
    calls = count_forwards(wide, lambda: gradients._batch_size(None, wide, x, "f"))
    assert calls == []                                          # remembered per model and input size
    assert gradients._batch_size(None, wide, torch.zeros(1, 3, 64, 64), "f") == 8   # 1 MB an image
    assert gradients._batch_size(3, wide, x, "f") == 3          # an explicit batch_size wins
    assert gradients._batch_size(None, shapesnet(), torch.zeros(1, 3, 128, 128), "f") == 8
    # the default batches give the same integrated gradients as one point at a time
    xs = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    a = gradients.integrated_gradients(wide, xs, 3, steps=5, progress=False)
    b = gradients.integrated_gradients(wide, xs, 3, steps=5, batch_size=1, progress=False)
    assert count_forwards(wide, lambda: gradients.integrated_gradients(wide, xs, 3, steps=5, progress=False)) == [2, 2, 1]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_matches_cpu():
    model = copy.deepcopy(shapesnet())
    x, y = scenes_batch()
    cpu = gradients.guided(model, x, y)
    model.cuda()
    gpu = gradients.guided(model, x.cuda(), y)
    assert gpu.device.type == "cpu" and torch.allclose(gpu, cpu, atol=1e-5, rtol=1e-3)
    ig = gradients.integrated_gradients(model, x, y, steps=8, progress=False)
    sg = gradients.smoothgrad(model, x, y, samples=4, progress=False)
    assert ig.device.type == "cpu" and sg.device.type == "cpu"


@pytest.mark.parametrize("arch", ["shapesnet", "vgg16", "resnet50"])
def test_an_input_laid_out_channels_last_gives_the_same_maps(arch):
    """The helpers take the caller's memory layout as it is (on a CPU a channels-last input runs
    the convolutions faster; see the README's benchmark notes): every map agrees with the one of
    the contiguous input, where the Grad-CAM shortcut's chain check sees a layout it does not
    follow too (VGG16's flatten copies a channels-last map: the full gradient is taken)."""
    from helpers import cam, lrp
    net = shapesnet() if arch == "shapesnet" else architecture(arch)
    size = SIZES[arch]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    xc = x.contiguous(memory_format=torch.channels_last)
    assert not xc.is_contiguous()
    t = [1, 3]
    last = models.last_conv_layer(net)
    runs = {
        "vanilla": lambda z: gradients.vanilla(net, z, t),
        "guided": lambda z: gradients.guided(net, z, t),
        "integrated_gradients": lambda z: gradients.integrated_gradients(net, z, t, steps=4, progress=False),
        "smoothgrad": lambda z: gradients.smoothgrad(net, z, t, samples=2, progress=False,
                                                     generator=torch.Generator().manual_seed(0)),
        "grad_cam": lambda z: cam.grad_cam(net, z, t, last),
        "grad_cam_pp": lambda z: cam.grad_cam_pp(net, z, t, last),
        "layer_cam": lambda z: cam.layer_cam(net, z, t, last),
    }
    if arch != "resnet50":
        runs["lrp"] = lambda z: lrp.lrp(net, z, t, rule="composite")
    for name, run in runs.items():
        for _ in range(2):                   # the second call of Grad-CAM may take the shortcut
            a, b = run(x), run(xc)
            scale = float(a.abs().max())
            assert scale > 0 or name == "grad_cam", name   # (a random VGG16's Grad-CAM may be all 0)
            # the convolutions of the two layouts round differently: a ReLU whose input is within
            # that rounding of 0 may switch (integrated gradients on a random VGG16: 8e-4 of the
            # largest value); a map of the wrong layout would differ by the order of the map itself
            err = float((b - a).abs().max())
            assert err <= 2e-3 * scale, (name, err, scale)
