"""helpers.models: loading, the offline fallback, layers, class names (no download anywhere)."""
import numpy as np
import pytest
import torch
from torch import nn

from helpers import models

ARCHS = ["vgg16", "vgg19", "alexnet", "resnet50", "googlenet", "inception_v3"]


@pytest.fixture(scope="module")
def archs():
    """The six torchvision architectures, random weights (structure only, no download)."""
    out = {}
    for name in ARCHS:
        m = models._build_torchvision(name, None).eval()
        out[name] = models._attach(m, models.ModelInfo(name, "imagenet", models.imagenet_classes(),
                                                       input_size=299 if name == "inception_v3" else 224,
                                                       pretrained=False))
    return out


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        models.load("vgg17")
    for name in models.NAMES:
        assert name in str(e.value)


def test_offline_forced_is_visible(capsys):
    m = models.load("resnet50")
    line = capsys.readouterr().out
    assert "Offline world" in line and "resnet50" in line and "ShapesNet" in line
    assert models.info(m).world == "shapes" and not m.training


def test_fallback_when_weights_cannot_be_had(monkeypatch, tmp_path, capsys):
    """Without CNNVIS_OFFLINE, no cached weights and a failing download -> ShapesNet, said in one line."""
    import torchvision.models._api as api

    monkeypatch.delenv("CNNVIS_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_network(self, *a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", no_network)
    m = models.load("vgg16")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "cannot be had" in out[0] and "vgg16" in out[0]
    assert models.info(m).name == "shapesnet"


def test_random_weights_switch_builds_the_real_architecture(monkeypatch):
    monkeypatch.delenv("CNNVIS_OFFLINE", raising=False)
    monkeypatch.setenv("CNNVIS_RANDOM_WEIGHTS", "1")
    m = models.load("alexnet")
    assert type(m).__name__ == "AlexNet" and not models.info(m).pretrained
    assert len(models.class_names(m)) == 1000


def test_info_of_a_model_not_made_by_load_is_inferred_without_changing_it():
    from helpers import shapes

    for net, name, world in ((models._build_torchvision("alexnet", None), "alexnet", "imagenet"),
                             (shapes.ShapesNet(), "shapesnet", "shapes")):
        before = dict(net.__dict__)
        first = models.info(net)
        assert (first.name, first.world) == (name, world)
        assert models.info(net) is first                    # inferred once, kept beside the model
        assert net.__dict__ == before                       # nothing set on the model


def test_shapesnet_loads_with_its_classes():
    from helpers import shapes

    m = models.load("shapesnet")
    assert models.class_names(m) == list(shapes.CLASSES)
    assert models.info(m).input_size == shapes.SIZE
    assert all(p.requires_grad for p in m.parameters()) and not m.training   # as torchvision's models come


@pytest.mark.parametrize("name", ARCHS)
def test_structure_of_each_architecture(archs, name):
    m = archs[name]
    convs = models.conv_layers(m)
    n_conv = sum(isinstance(mod, nn.Conv2d) for mod in m.modules())
    assert len(convs) == n_conv and len(set(convs)) == n_conv
    # forward order: the stem comes first
    assert convs[0] in ("features.0", "conv1", "conv1.conv", "Conv2d_1a_3x3.conv")
    assert all(isinstance(models.layer(m, c), nn.Conv2d) for c in convs)
    last = models.last_conv_layer(m)
    size = models.info(m).input_size
    seen = {}
    h = models.layer(m, last).register_forward_hook(lambda mod, i, o: seen.update(s=o.shape))
    with torch.no_grad():
        logits = m(torch.zeros(1, 3, size, size))
    h.remove()
    assert logits.shape == (1, 1000)
    assert seen["s"][2] >= 6 and seen["s"][2] <= 14  # the last conv map before global pooling
    assert models.channels(m, last) == seen["s"][1]
    assert len(models.class_names(m)) == 1000 and models.class_names(m)[281] == "tabby"


def test_layer_lookup(archs):
    m = archs["resnet50"]
    assert models.layer(m, "layer4.2") is m.layer4[2]
    assert models.layer(m, m.layer3) is m.layer3
    with pytest.raises(ValueError) as e:
        models.layer(m, "layer5")
    assert "layer4.2" in str(e.value) and "layer5" in str(e.value)
    with pytest.raises(ValueError):
        models.layer(m, nn.Conv2d(3, 3, 3))
    assert models.layer_name(m, m.layer4[2]) == "layer4.2"
    g = archs["googlenet"]
    assert models.layer(g, "inception4e") is g.inception4e
    # names that are not modules: a parameter, an attribute, the empty name, a half path
    for bad in ("layer4.2.conv1.weight", "training", "", "layer4.", ".layer4", "layer4.9"):
        with pytest.raises(ValueError, match="valid names"):
            models.layer(m, bad)


def test_first_parameter_is_the_first_of_parameters(archs):
    """The walk that finds the parameter giving the model's device and dtype is the same as
    ``next(model.parameters())``: own parameters before the children's, children in order, a
    child without parameters skipped, and None for a model without any."""
    class Own(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.ReLU(), nn.Sequential(), nn.Linear(2, 2))
            self.scale = nn.Parameter(torch.ones(1))       # registered after the child: still first
    cases = list(archs.values()) + [models.load("shapesnet"), Own(), nn.Sequential(nn.ReLU(), nn.Linear(2, 2))]
    for m in cases:
        assert models._first_parameter(m) is next(m.parameters())
    assert models._first_parameter(nn.Sequential(nn.ReLU(), nn.Identity())) is None
    # models.device, which every helper uses: the parameters' device (meta stands in for a GPU)
    assert models.device(nn.Sequential(nn.ReLU(), nn.Linear(2, 2, device="meta"))).type == "meta"
    assert models.device(nn.Identity()) == torch.device("cpu")


def test_layer_name_follows_changes_to_the_model():
    """layer_name keeps the names it found; each use checks that the name still leads to the module."""
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()))
    old = m[2][1]
    assert models.layer_name(m, old) == "2.1"
    m[2][1] = nn.ReLU()                              # replaced: no longer part of the model
    with pytest.raises(ValueError, match="not part of this model"):
        models.layer_name(m, old)
    assert models.layer_name(m, m[2][1]) == "2.1"
    a, b = m[1], m[2]
    assert (models.layer_name(m, a), models.layer_name(m, b)) == ("1", "2")
    m[1], m[2] = b, a                                # moved: the names follow
    assert (models.layer_name(m, a), models.layer_name(m, b)) == ("2", "1")
    assert models.layer_name(m, b[0]) == "1.0"


def test_check_target():
    m = models.load("shapesnet")
    n = len(models.class_names(m))
    assert models.check_target(m, 1, 3) == [1, 1, 1]
    assert models.check_target(m, [0, n - 1], 2) == [0, n - 1]
    with pytest.raises(ValueError, match=rf"0\.\.{n - 1}"):
        models.check_target(m, n)
    with pytest.raises(ValueError):
        models.check_target(m, -1)
    with pytest.raises(ValueError):
        models.check_target(m, [0, 1], 3)
    assert models.check_target(m, np.array([2, 0]), 2) == [2, 0] and models.check_target(m, np.int64(1), 2) == [1, 1]


def test_positive_int_is_the_one_check_of_counts():
    """Python and numpy ints pass as ints; bools, floats, strings and numbers < 1 are ValueErrors
    naming the argument. The helpers that take a batch_size all use it (a numpy int from a
    slider or an array was rejected by three of them)."""
    assert models.positive_int(3, "n") == 3 and type(models.positive_int(np.int64(2), "n")) is int
    for bad in (0, -1, True, 2.0, "2", None):
        with pytest.raises(ValueError, match=r"batch_size must be a positive int"):
            models.positive_int(bad, "batch_size")
    from helpers import deconvnet, features, shapes
    m = models.load("shapesnet")
    x, _ = shapes.batch(range(3))
    want = features.feature_maps(m, x, "features.1")
    torch.testing.assert_close(features.feature_maps(m, x, "features.1", batch_size=np.int64(2)), want)
    top = deconvnet.top_activations(m, x, "features.3", 0, k=2, batch_size=np.int64(2), progress=False)
    assert len(top) == 2
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        deconvnet.occlusion(m, x[:1], 0, batch_size=0)


def test_info_of_a_classifier_with_its_own_number_of_classes():
    """A fine-tuned torchvision model (10 outputs) is not given ImageNet's 1000 class names: a
    class index out of its range is a ValueError, not an index error deep in a method."""
    m = models._build_torchvision("resnet50", None)
    m.fc = nn.Linear(2048, 10)
    i = models.info(m)
    assert i.world == "imagenet" and i.classes == [f"class {k}" for k in range(10)]
    with pytest.raises(ValueError, match=r"0\.\.9"):
        models.check_target(m, 500)
    assert len(models.info(models._build_torchvision("alexnet", None)).classes) == 1000


def test_predict_checks_its_input_and_runs_in_eval_mode(archs):
    m = archs["resnet50"]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    m.train()
    try:
        stats = [b.clone() for b in m.buffers()]
        top = models.predict(m, x.double(), k=2)               # float64 runs as the model's float32
        assert m.training and all(torch.equal(a, b) for a, b in zip(stats, m.buffers()))   # no BatchNorm update
    finally:
        m.eval()
    with torch.no_grad():
        p = torch.softmax(m(x), 1)
    assert [t[0][0] for t in top] == p.argmax(1).tolist() and abs(top[0][0][2] - float(p[0].max())) < 1e-5
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        models.predict(m, x[0])


def test_probing_keeps_each_modules_own_mode(archs):
    """A model in training mode with a frozen backbone (eval) keeps both after a probe."""
    from helpers import gradients, shapes

    for m, x in ((archs["vgg16"], torch.randn(1, 3, 32, 32)), (models.load("shapesnet"), shapes.batch([3])[0])):
        m.train()
        m.features.eval()
        try:
            models.conv_layers(m)
            models.channels(m, "features.1")
            gradients.smoothgrad(m, x, 1, samples=2)
            assert m.training and not m.features.training and m.classifier.training
        finally:
            m.eval()


def test_channels_of_a_layer_that_does_not_run_is_a_value_error():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.aux = nn.Conv2d(3, 4, 3), nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU())

        def forward(self, x):
            return self.body(x).mean((2, 3))

    with pytest.raises(ValueError, match="'aux' does not run in a forward pass"):
        models.channels(Net(), "aux")


def test_predict_is_consistent_with_the_logits():
    from helpers import shapes

    m = models.load("shapesnet")
    s = shapes.scene(3)
    x = shapes.batch([3])[0]
    top = models.predict(m, x, k=3)[0]
    assert len(top) == 3 and top[0][2] >= top[1][2] >= top[2][2]
    assert top[0][0] == int(m(x).argmax()) and top[0][1] == models.class_names(m)[top[0][0]]
    assert s.labels[0] == top[0][0]  # ShapesNet gets this easy scene right


def test_scores_of_a_forward_pass_in_every_form_torchvision_returns():
    """With auxiliary heads, GoogLeNet in training mode returns a named tuple (logits, aux_logits2,
    aux_logits1) and Inception v3 one of (logits, aux_logits): the scores are the main head's."""
    from torchvision.models.googlenet import GoogLeNetOutputs
    from torchvision.models.inception import InceptionOutputs

    x, aux = torch.zeros(2, 3), torch.ones(2, 3)
    assert models.scores(x) is x
    assert models.scores(GoogLeNetOutputs(x, aux, aux)) is x and models.scores(InceptionOutputs(x, aux)) is x
    assert models.scores((x, aux)) is x and models.scores([x]) is x
    with pytest.raises(ValueError, match="not a tensor of class scores"):
        models.scores({"logits": x})


def test_probe_records_every_call_in_order_and_restores_the_model(archs):
    """The one shape-finding forward pass behind conv_layers, channels, describe and the gradients'
    memory-aware batch: every call of a shared module, first-call order, the model as it was."""
    m = archs["resnet50"].train()
    try:
        before = {k: dict(getattr(mod, k)) for mod in m.modules() for k in ("_forward_hooks",)}
        wanted = [m.layer4, m.relu, m.conv1]                   # asked out of forward order
        seen = models._probe(m, wanted, torch.zeros(1, 3, 64, 64))
        assert list(seen) == [m.conv1, m.relu, m.layer4]       # the order the forward pass ran them
        assert seen[m.conv1] == [((1, 64, 32, 32), torch.float32)]
        assert len(seen[m.relu]) == 1                          # the stem's relu (blocks have their own)
        assert seen[m.layer4] == [((1, 2048, 2, 2), torch.float32)]
        shared = m.layer1[0].relu                              # runs three times in its block
        assert [s for s, _ in models._probe(m, [shared])[shared]] == [
            (1, 64, 28, 28), (1, 64, 28, 28), (1, 256, 28, 28)]   # default side 112
        assert m.training                                      # mode restored
        with pytest.raises(RuntimeError):                      # a failing pass: hooks gone, mode back
            models._probe(m, [m.conv1], torch.zeros(1, 4, 64, 64))
        assert m.training
        assert {k: dict(getattr(mod, k)) for mod in m.modules() for k in ("_forward_hooks",)} == before
    finally:
        m.eval()


@pytest.mark.parametrize("name", ARCHS + ["shapesnet"])
def test_relu_outputs_are_non_negative_and_run_once(archs, name):
    model = models.load("shapesnet") if name == "shapesnet" else archs[name]
    names = models.relu_outputs(model)
    assert len(names) >= 3 and models.last_conv_layer(model) in names
    calls, outputs = {n: 0 for n in names}, {}

    def hook(n):
        def run(_m, _i, out):
            calls[n] += 1
            outputs[n] = out
        return run

    handles = [models.layer(model, n).register_forward_hook(hook(n)) for n in names]
    try:
        size = models.info(model).input_size
        with torch.no_grad():
            model(torch.randn(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    assert all(c == 1 for c in calls.values()), calls
    assert all(float(o.min()) >= 0 for o in outputs.values()), {n: float(o.min()) for n, o in outputs.items()}


def test_as_input_moves_to_the_models_device_and_dtype():
    net = models.load("shapesnet")
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    y = models.as_input(net, x)
    assert y.dtype == torch.float32 and y.device == next(net.parameters()).device and not y.requires_grad
    assert torch.equal(y, x.detach().float())
    # a model without parameters (an nn.Identity, say) takes CPU float32
    z = models.as_input(torch.nn.Identity(), x)
    assert z.dtype == torch.float32 and z.device.type == "cpu" and not z.requires_grad


def test_a_model_name_where_the_model_goes_is_a_type_error_saying_what_to_do():
    """gradients.vanilla("shapesnet", x, 1) failed with "'str' object has no attribute '__dict__'"."""
    from helpers import cam, features, gradients, images, shapes
    x, _ = shapes.batch(range(1))
    image = shapes.scene(0).image
    for call in (lambda: gradients.vanilla("shapesnet", x, 1), lambda: cam.grad_cam("shapesnet", x, 1),
                 lambda: features.feature_maps("shapesnet", x, "features.1"),
                 lambda: images.to_tensor(image, "shapesnet"), lambda: models.layer("shapesnet", "features.1")):
        with pytest.raises(TypeError, match=r"model must be a network, an nn.Module \(models.load\('shapesnet'\) makes it\); got str"):
            call()


def test_raw_pixels_or_nan_where_a_normalised_image_goes_are_a_value_error():
    """Raw 0..255 pixels (torch.tensor(image).permute(2, 0, 1)[None].float(), a student's usual first
    try) ran through every method and gave plausible-looking, wrong maps; NaN gave NaN maps."""
    from helpers import cam, deconvnet, features, gradients, lrp, shapes
    net = models.load("shapesnet")
    image = shapes.scene(0).image
    raw = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float()       # 0..255
    good, _ = shapes.batch(range(1))
    nan = good.clone()
    nan[0, 1, 5, 5] = float("nan")
    calls = {
        "vanilla": lambda x: gradients.vanilla(net, x, 1),
        "integrated_gradients": lambda x: gradients.integrated_gradients(net, x, 1, steps=2, progress=False),
        "grad_cam": lambda x: cam.grad_cam(net, x, 1),
        "score_cam": lambda x: cam.score_cam(net, x, 1, progress=False),
        "feature_maps": lambda x: features.feature_maps(net, x, "features.1"),
        "deep_dream": lambda x: features.deep_dream(net, x, "features.4", steps=1, progress=False),
        "lrp": lambda x: lrp.lrp(net, x, 1),
        "deconvnet": lambda x: deconvnet.reconstruct(net, x, "features.4", 0),
        "top_activations": lambda x: deconvnet.top_activations(net, x, "features.4", 0, k=1, progress=False),
        "occlusion": lambda x: deconvnet.occlusion(net, x, 1, size=64, progress=False),
        "predict": lambda x: models.predict(net, x),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"values up to 255 .*images.to_tensor"):
            call(raw)
        with pytest.raises(ValueError, match="NaN or infinite"):
            call(nan)
        call(good)                              # the normalised image passes
    # the limit leaves room: a normalised image of any of the worlds, pushed a little, passes
    assert float(good.abs().max()) < 3 and models.check_images(good * 5) is not None


def test_smoothgrad_at_a_large_noise_is_not_taken_for_raw_pixels():
    """The range check applies to the reader's input, not to SmoothGrad's noisy copies of it: at
    noise 2 (sigma twice the image's range) the copies pass +-20, which is no mistake of the
    reader's. The caller's raw pixels are still refused, and the check is on again afterwards."""
    from helpers import gradients, shapes
    net = models.load("shapesnet")
    good, _ = shapes.batch(range(1))
    g = torch.Generator().manual_seed(0)
    for method in (gradients.vanilla, gradients.integrated_gradients, gradients.grad_x_image):
        extra = {"steps": 2} if method is gradients.integrated_gradients else {}
        m = gradients.smoothgrad(net, good, 1, method=method, noise=2.0, samples=4, progress=False,
                                 generator=g, **extra)
        assert torch.isfinite(m).all() and m.abs().sum() > 0
    raw = good * 255
    with pytest.raises(ValueError, match="images.to_tensor"):
        gradients.smoothgrad(net, raw, 1, samples=2, progress=False)
    with pytest.raises(ValueError, match="images.to_tensor"):
        gradients.vanilla(net, raw, 1)
