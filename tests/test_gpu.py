"""Every helper that takes a model runs on a GPU and gives the CPU's answer.

Readers with a GPU (Colab) run every chapter on CUDA: ``helpers.setup()`` returns it, the chapters
load their models and move their inputs there. Each case below runs one helper twice on the same
input, with the model on the CPU and with a copy on the GPU, and checks that the GPU run raises
nothing, returns what the helper promises where it promises it (maps on the CPU), and agrees with
the CPU run: exactly where the work is the same, and within a stated tolerance where float
rounding enters (TF32 is off in the tests, as in the chapters: tests/conftest.py; optimisations
run only a few steps, so rounding has little room to grow).

Skipped where there is no GPU, as in CI. ``CNNVIS_TEST_DEVICE=cpu pytest tests/test_gpu.py`` runs
the same cases with the second copy on the CPU: that checks the test code, not a GPU. On a machine
with a GPU: ``pytest tests/test_gpu.py`` (about a minute).
"""
from __future__ import annotations

import copy
import dataclasses
import os

import numpy as np
import pytest
import torch

from helpers import cam, deconvnet, features, gradients, images, lrp, metrics, models, segmentation, shapes, synthesis

DEVICE = os.environ.get("CNNVIS_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="no GPU (set CNNVIS_TEST_DEVICE=cpu to check the test itself)")


@pytest.fixture(scope="module")
def pair():
    """(CPU model, GPU model, CPU input, GPU input, targets): ShapesNet on two-object scenes."""
    net = shapes.load_model("shapesnet")
    x, y = shapes.batch([11, 12, 13], n_objects=2)
    return net, copy.deepcopy(net).to(DEVICE), x, x.to(DEVICE), y[:, 0].tolist()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |a|`` (Euclidean norms; the plain difference where ``a`` is zero). By norm, not
    entry by entry: a ReLU unit at its kink may switch under float rounding and change a gradient
    map at a few pixels, which is no device bug."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = float(a.norm())
    return float((a - b).norm()) / scale if scale > 0 else float((a - b).norm())


def same(cpu, gpu, tol: float, where: str = "result"):
    """``gpu`` equals ``cpu`` within ``tol`` (:func:`relative`), walking into
    tuples, lists, dicts, dataclasses and numpy arrays; numbers within ``tol`` relative."""
    if isinstance(cpu, torch.Tensor):
        assert isinstance(gpu, torch.Tensor) and gpu.shape == cpu.shape, f"{where}: {gpu!r:.80}"
        if cpu.dtype in (torch.bool, torch.long, torch.int32, torch.uint8):
            mismatch = float((cpu.cpu() != gpu.cpu()).float().mean())
            assert mismatch <= tol, f"{where}: {mismatch:.3%} of the entries differ"
        else:
            assert torch.equal(cpu.isnan().cpu(), gpu.isnan().cpu()), f"{where}: NaN in other places"
            cpu, gpu = cpu.nan_to_num(0.0), gpu.nan_to_num(0.0)
            assert relative(cpu, gpu) <= tol, f"{where}: differs by {relative(cpu, gpu):.2e} (tolerance {tol:g})"
    elif isinstance(cpu, np.ndarray):
        same(torch.as_tensor(cpu), torch.as_tensor(np.asarray(gpu)), tol, where)
    elif dataclasses.is_dataclass(cpu):
        for f in dataclasses.fields(cpu):
            same(getattr(cpu, f.name), getattr(gpu, f.name), tol, f"{where}.{f.name}")
    elif isinstance(cpu, dict):
        assert cpu.keys() == gpu.keys(), where
        for k in cpu:
            same(cpu[k], gpu[k], tol, f"{where}[{k!r}]")
    elif isinstance(cpu, (list, tuple)):
        assert len(cpu) == len(gpu), where
        for i, (c, g) in enumerate(zip(cpu, gpu)):
            same(c, g, tol, f"{where}[{i}]")
    elif isinstance(cpu, float):
        if np.isnan(cpu):                      # undefined on both (a class with no pixels)
            assert np.isnan(gpu), f"{where}: nan vs {gpu}"
            return
        assert abs(cpu - gpu) <= tol * max(1.0, abs(cpu)), f"{where}: {cpu} vs {gpu}"
    else:
        assert cpu == gpu, f"{where}: {cpu!r} vs {gpu!r}"


def on_cpu(result) -> None:
    """Every tensor in ``result`` lives on the CPU (what the map-making helpers promise)."""
    if isinstance(result, torch.Tensor):
        assert result.device.type == "cpu", f"returned on {result.device}, not the CPU"
    elif isinstance(result, (list, tuple)):
        for r in result:
            on_cpu(r)


# name -> (call(model, x, targets), tolerance (see relative); maps come back on the CPU except where noted)
MAPS = {
    "vanilla": (lambda m, x, y: gradients.vanilla(m, x, y), 1e-3),
    "vanilla, one filter": (lambda m, x, y: gradients.vanilla(m, x, layer="features.8", channel=3), 1e-3),
    "saliency": (lambda m, x, y: gradients.saliency(m, x, y), 1e-3),
    "guided": (lambda m, x, y: gradients.guided(m, x, y), 1e-3),
    "guided, one filter": (lambda m, x, y: gradients.guided(m, x, layer="features.8", channel=3), 1e-3),
    "deconvnet": (lambda m, x, y: gradients.deconvnet(m, x, y), 1e-3),
    "grad_x_image": (lambda m, x, y: gradients.grad_x_image(m, x, y), 1e-3),
    "integrated_gradients, black": (lambda m, x, y: gradients.integrated_gradients(m, x, y, steps=8, progress=False), 1e-3),
    "integrated_gradients, blur": (lambda m, x, y: gradients.integrated_gradients(
        m, x, y, baseline="blur", steps=8, progress=False), 1e-3),
    "integrated_gradients, noise": (lambda m, x, y: gradients.integrated_gradients(
        m, x, y, baseline="noise", steps=8, progress=False, generator=torch.Generator().manual_seed(0)), 1e-3),
    "smoothgrad": (lambda m, x, y: gradients.smoothgrad(
        m, x, y, samples=4, noise=0.03, progress=False, generator=torch.Generator().manual_seed(0)), 1e-3),
    "smoothgrad of guided": (lambda m, x, y: gradients.smoothgrad(
        m, x, y, method=gradients.guided, samples=4, noise=0.03, progress=False,
        generator=torch.Generator().manual_seed(0)), 1e-3),
    "lrp, epsilon": (lambda m, x, y: gradients.lrp(m, x, y, rule="epsilon"), 1e-3),
    "lrp, composite": (lambda m, x, y: gradients.lrp(m, x, y, rule="composite"), 1e-3),
    "cam": (lambda m, x, y: cam.cam(m, x, y), 1e-4),
    "grad_cam": (lambda m, x, y: cam.grad_cam(m, x, y), 1e-4),
    "grad_cam, inner layer": (lambda m, x, y: cam.grad_cam(m, x, y, layer="features.9"), 1e-4),
    "grad_cam, counterfactual": (lambda m, x, y: cam.grad_cam(m, x, y, counterfactual=True), 1e-4),
    "grad_cam, several layers": (lambda m, x, y: cam.grad_cam(m, x, y, layer=["features.9", "features.16"]), 1e-4),
    "grad_cam, several classes": (lambda m, x, y: cam.grad_cam(m, x[:1], [0, 1, 2]), 1e-4),
    "guided_grad_cam": (lambda m, x, y: cam.guided_grad_cam(m, x, y), 1e-4),
    "grad_cam_pp": (lambda m, x, y: cam.grad_cam_pp(m, x, y), 1e-4),
    "score_cam": (lambda m, x, y: cam.score_cam(m, x, y, batch_size=32, progress=False), 1e-4),
    "layer_cam": (lambda m, x, y: cam.layer_cam(m, x, y, layer="features.9"), 1e-4),
    "occlusion": (lambda m, x, y: deconvnet.occlusion(m, x, y, size=32, stride=16, progress=False), 1e-4),
    "reconstruct": (lambda m, x, y: deconvnet.reconstruct(m, x[:1], "features.9", 5), 1e-4),
    "feature_maps": (lambda m, x, y: features.feature_maps(m, x, "features.8"), 1e-5),
}


@pytest.mark.parametrize("name", list(MAPS))
def test_maps_on_the_gpu_equal_the_cpu(pair, name):
    net, net_d, x, x_d, y = pair
    call, tol = MAPS[name]
    cpu, gpu = call(net, x, y), call(net_d, x_d, y)
    if name not in ("reconstruct", "feature_maps"):
        on_cpu(gpu)
    same(cpu, gpu, tol, name)
    assert float(cpu.abs().max()) > 0, f"{name}: an all-zero map compares nothing"


def test_cached_maps_and_retargeting_on_the_gpu(pair):
    net, net_d, x, x_d, _ = pair
    for kind in ("grad_cam", "grad_cam_pp", "layer_cam", "cam"):
        a, b = cam.Cached(net, x[:1]), cam.Cached(net_d, x_d[:1])
        for target in (0, 4, [1, 2]):
            cpu, gpu = getattr(a, kind)(target), getattr(b, kind)(target)
            on_cpu(gpu)
            same(cpu, gpu, 1e-4, f"Cached.{kind}({target})")
    a, b = cam.Cached(net, x[:1]), cam.Cached(net_d, x_d[:1])
    same(a.score_cam(3, batch_size=32, progress=False), b.score_cam(3, batch_size=32, progress=False), 1e-4, "score_cam")
    assert set(cam.timings(net_d, x_d[:1], repeat=1)) == set(cam.timings(net, x[:1], repeat=1))


def test_lrp_trace_and_deconvnet_search_on_the_gpu(pair):
    net, net_d, x, x_d, y = pair
    cpu, gpu = lrp.relevance_trace(net, x, y, rule="composite"), lrp.relevance_trace(net_d, x_d, y, rule="composite")
    same(cpu.relevance, gpu.relevance, 1e-4, "relevance")
    same([layer.map for layer in cpu.layers], [layer.map for layer in gpu.layers], 1e-4, "layer maps")
    top = [sorted(deconvnet.top_activations(m, xx, "features.9", 5, k=4, progress=False),
                  key=lambda t: (t.index, t.position))            # two near-equal values may swap ranks
           for m, xx in ((net, x), (net_d, x_d))]
    same([(t.index, t.position, t.box) for t in top[0]], [(t.index, t.position, t.box) for t in top[1]], 0, "top-4")
    same([t.reconstruction for t in top[0]], [t.reconstruction for t in top[1]], 1e-4, "reconstructions")


def test_feature_visualisation_on_the_gpu(pair):
    net, net_d, x, x_d, _ = pair
    for param in ("pixel", "fourier"):
        cpu = features.visualize_filter(net, "features.8", 3, steps=4, param=param, progress=False)
        gpu = features.visualize_filter(net_d, "features.8", 3, steps=4, param=param, progress=False)
        same(cpu, gpu, 1e-3, f"visualize_filter {param}")
    same(features.visualize_filters(net, "features.8", [1, 2], steps=3, progress=False),
         features.visualize_filters(net_d, "features.8", [1, 2], steps=3, progress=False), 1e-3, "visualize_filters")
    same(features.deep_dream(net, x[:1], "features.9", octaves=2, steps=2, progress=False),
         features.deep_dream(net_d, x_d[:1], "features.9", octaves=2, steps=2, progress=False), 1e-3, "deep_dream")
    same(features.invert(net, x[:1], "features.9", steps=5, progress=False),
         features.invert(net_d, x_d[:1], "features.9", steps=5, progress=False), 1e-3, "invert")
    for fn in (features.mean_activation, features.layer_norm):
        same(fn(net, x, "features.9", 2), fn(net_d, x_d, "features.9", 2), 1e-5, fn.__name__)
    same(features.relative_error(net, x[:1], x[1:2], "features.9"),
         features.relative_error(net_d, x_d[:1], x_d[1:2], "features.9"), 1e-5, "relative_error")
    same(features.filters(net), features.filters(net_d), 0, "filters")
    same(features.color_correlation(net), features.color_correlation(net_d), 1e-6, "color_correlation")


def test_synthesis_on_the_gpu(pair):
    net, net_d, x, x_d, y = pair
    same(synthesis.class_image(net, 2, steps=3, jitter=4, blur=0.5, progress=False),
         synthesis.class_image(net_d, 2, steps=3, jitter=4, blur=0.5, progress=False), 1e-3, "class_image")
    same(synthesis.fooling_image(net, 2, max_steps=3, progress=False),
         synthesis.fooling_image(net_d, 2, max_steps=3, progress=False), 1e-3, "fooling_image")
    a = synthesis.evolve(net, [1, 2], generations=2, offspring=4, progress=False)
    b = synthesis.evolve(net_d, [1, 2], generations=2, offspring=4, progress=False)
    same(a, b, 1e-3, "evolve")
    adv = synthesis.disguise(net, x[:1], y[1], steps=3)
    adv_d = synthesis.disguise(net_d, x_d[:1], y[1], steps=3)
    same(adv, adv_d, 1e-3, "disguise")
    same(synthesis.pgd(net, x[:1], y[1], steps=2), synthesis.pgd(net_d, x_d[:1], y[1], steps=2), 1e-3, "pgd")
    same(synthesis.distortion(net, x[:1], adv), synthesis.distortion(net_d, x_d[:1], adv_d), 1e-3, "distortion")
    for fn in (synthesis.quantize, synthesis.jpeg, synthesis.blur):
        same(fn(net, x[:1]), fn(net_d, x_d[:1]), 1e-4, fn.__name__)
    same(synthesis.from_pixels(net, synthesis.to_pixels(net, x)),
         synthesis.from_pixels(net_d, synthesis.to_pixels(net_d, x_d)), 1e-5, "pixels")


def test_segmentation_and_metrics_on_the_gpu(pair):
    net, net_d, x, x_d, y = pair
    seg = segmentation.load_model()
    seg_d = copy.deepcopy(seg).to(DEVICE)
    same(segmentation.segment(seg, x), segmentation.segment(seg_d, x_d), 1e-3, "segment")
    same(segmentation.evaluate(seg, seeds=range(4)), segmentation.evaluate(seg_d, seeds=range(4)), 1e-3, "evaluate")
    assert shapes.evaluate(net_d, range(8)) == shapes.evaluate(net, range(8))
    # chapter 23's start from the classifier, with the new network and the classifier on either device
    made = []
    for where, classifier in (("cpu", net), (DEVICE, net), ("cpu", net_d), (DEVICE, net_d)):
        torch.manual_seed(0)
        fresh = segmentation.deconvnet_like(net, widths=(16, 24, 32, 96)).to(where)
        segmentation.init_encoder(fresh, classifier, x)
        made.append({k: v.cpu() for k, v in fresh.state_dict().items()})
    for other in made[1:]:
        same(made[0], other, 1e-4, "init_encoder")
    heat = cam.grad_cam(net, x, y)
    for fn in (metrics.deletion, metrics.insertion):
        same(fn(net, x, y, heat, steps=4), fn(net_d, x_d, y, heat, steps=4), 1e-3, fn.__name__)
    # rank correlations of maps of randomised networks: many near-ties, so a looser tolerance
    same(metrics.randomization_test(net, gradients.vanilla, x[:1], y[:1]),
         metrics.randomization_test(net_d, gradients.vanilla, x_d[:1], y[:1]), 1e-2, "randomization_test")
    masks = np.stack([s.masks[0] for s in shapes.scenes([11, 12, 13], n_objects=2)])
    table = metrics.methods(names=["vanilla", "grad_cam", "occlusion"])
    boards = [metrics.leaderboard(m, xx, y, masks, table, n_faithfulness=1, n_randomization=1, steps=4,
                                  shuffled=shapes.load_model("shapesnet-shuffled").to(xx.device), n_data=1)
              for m, xx in ((net, x), (net_d, x_d))]
    for method in ("vanilla", "grad_cam", "occlusion"):
        cpu, gpu = boards[0].rows[method], boards[1].rows[method]
        assert cpu.keys() == gpu.keys()
        for key in ("energy", "deletion", "insertion"):
            same(cpu[key], gpu[key], 1e-3, f"leaderboard {method} {key}")
        # a hit may flip where a map's peak ties to float rounding: at most one of the three scenes
        for key in ("pointing", "pointing_15", "shuffled_pointing"):
            assert abs(cpu[key] - gpu[key]) <= 1 / 3 + 1e-9, (method, key, cpu[key], gpu[key])
        for key in ("sensitivity", "spearman_all", "data_sensitivity"):
            assert abs(cpu[key] - gpu[key]) <= 0.02, (method, key, cpu[key], gpu[key])
    p = models.predict(net_d, x_d)
    assert [r[0][0] for r in p] == [r[0][0] for r in models.predict(net, x)]
    assert images.to_tensor(images.photo(images.photo_names()[0]), model=net_d, device=DEVICE).device.type == DEVICE
