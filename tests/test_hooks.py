"""helpers.hooks: capture and the ReLU rules, against independent references."""
import pytest
import torch
import torch.nn.functional as F

from helpers import hooks, models
from model_state import snapshot
from relu_nets import FunctionalNet, ModuleNet, hooked_reference


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_relu_rule_matches_reference_for_modules_and_functional_relus(rule):
    torch.manual_seed(0)
    fun, mod = FunctionalNet(), ModuleNet()
    mod.load_state_dict(fun.state_dict(), strict=False)
    x = torch.randn(1, 3, 12, 12)
    ref = hooked_reference(mod, x, [2], rule)
    for net in (fun, ModuleNet()):
        net.load_state_dict(fun.state_dict(), strict=False)
        xx = x.clone().requires_grad_(True)
        with hooks.relu_rule(net, rule) as h:
            (g,) = torch.autograd.grad(net(xx)[0, 2], xx)
        assert h.calls == 2
        assert torch.allclose(g, ref, atol=1e-6), rule
    plain_x = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(fun(plain_x)[0, 2], plain_x)
    assert not torch.allclose(plain, ref, atol=1e-6)  # the rule really changes the gradient


def test_relu_rule_changes_googlenet_input_gradient_and_restores_everything():
    torch.manual_seed(0)
    g = models._build_torchvision("googlenet", None).eval()
    for p in g.parameters():  # larger weights than the init so the gradient is far from zero
        p.data.mul_(1.5)
    before = snapshot(g)
    x = torch.randn(1, 3, 112, 112, requires_grad=True)
    (plain,) = torch.autograd.grad(g(x)[0, 7], x)
    with hooks.relu_rule(g, "guided") as h:
        (guided,) = torch.autograd.grad(g(x)[0, 7], x)
    assert h.calls > 50  # GoogLeNet's functional ReLUs were all reached
    # guided differs from plain by much more than rounding (values are tiny at random init)
    assert (plain - guided).abs().max() > 0.1 * plain.abs().max()
    assert (guided >= 0).float().mean() != (plain >= 0).float().mean()
    assert F.relu.__module__ == "torch.nn.functional" and torch.relu is torch._C._VariableFunctions.relu
    assert snapshot(g) == before


@pytest.mark.parametrize("rule", ["plain", "guided", "deconvnet"])
def test_relu_rule_keeps_the_in_place_contract(rule):
    """In place where the caller asks for it (no extra tensor, as the network's own ReLU), never on
    a leaf that requires grad, and ``relu_`` called for its side effect still changes the tensor."""
    torch.manual_seed(0)
    with hooks.relu_rule(ModuleNet(), rule):
        a = torch.randn(4, 5)
        b = a.clone()
        out = F.relu(b, inplace=True)
        assert out.data_ptr() == b.data_ptr() and torch.equal(b, a.clamp(min=0))
        c = a.clone()
        torch.relu_(c)
        assert torch.equal(c, a.clamp(min=0))
        d = a.clone()
        d.relu_()
        assert torch.equal(d, a.clamp(min=0))
        e = a.clone()
        assert torch.equal(F.relu(e), a.clamp(min=0)) and torch.equal(e, a)   # not in place: e unchanged
        leaf = a.clone().requires_grad_(True)
        y = F.relu(leaf, inplace=True)                  # a leaf cannot change in place: a new tensor
        assert y.data_ptr() != leaf.data_ptr() and torch.equal(leaf.detach(), a)
        src = a.clone().requires_grad_(True)
        up = torch.randn(4, 5)
        y = F.relu(src * 1.0, inplace=True) * 2.0       # in place inside a graph: the gradient by the rule
        (g,) = torch.autograd.grad(y, src, up)
        expected = {"plain": 2 * up * (a > 0), "guided": 2 * up * (a > 0) * (up > 0),
                    "deconvnet": 2 * up * (up > 0)}[rule]
        assert torch.equal(g, expected)


def test_relu_rule_restores_after_exception_and_rejects_unknown_rule():
    net = ModuleNet()
    before = snapshot(net)
    relu = F.relu
    with pytest.raises(RuntimeError):
        with hooks.relu_rule(net, "deconvnet"):
            raise RuntimeError("boom")
    assert F.relu is relu and "relu" not in torch.Tensor.__dict__
    assert snapshot(net) == before
    with pytest.raises(ValueError, match="guided"):
        with hooks.relu_rule(net, "guidded"):
            pass


def test_capture_activations_and_gradients_with_inplace_relu():
    torch.manual_seed(0)
    v = models._build_torchvision("vgg16", None).eval()
    before = snapshot(v)
    x = torch.randn(1, 3, 64, 64)
    with hooks.capture(v, "features.28") as cap:
        out = v(x)
        g = cap.grad(out[0, 3], retain_graph=True)
        out[0, 3].backward()
    # activations are the conv output, before the in-place ReLU that follows it
    ref_act = v.features[:29](x)
    assert cap.activations.min() < 0 and torch.allclose(cap.activations, ref_act, atol=1e-5)
    # the gradient equals autograd's, computed independently from the conv output
    a = ref_act.detach().requires_grad_(True)
    rest = v.classifier(torch.flatten(v.avgpool(v.features[30:](torch.relu(a))), 1))
    (ref_g,) = torch.autograd.grad(rest[0, 3], a)
    assert torch.allclose(g, ref_g, atol=1e-6) and torch.allclose(cap.gradients, ref_g, atol=1e-6)
    v.zero_grad(set_to_none=True)      # the weights' gradients are this test's own backward()
    assert snapshot(v) == before


def test_capture_as_leaf_starts_the_graph_at_the_layer():
    torch.manual_seed(0)
    net = ModuleNet().eval()
    x = torch.randn(2, 3, 8, 8)
    # reference: the full graph from the input, gradient at the layer's output via capture
    with hooks.capture(net, "c2") as ref:
        out = net(x.clone().requires_grad_(True))
        g_ref = ref.grad(out[:, 1].sum())
    before = snapshot(net)
    with hooks.frozen(net), hooks.capture(net, "c2", leaf=True) as cap:
        out = net(x)
        A = cap.activations
        assert A.is_leaf and A.requires_grad and A.grad_fn is None   # nothing before c2 recorded
        g = cap.grad(out[:, 1].sum())
    assert torch.allclose(g, g_ref, atol=1e-6) and torch.allclose(cap.gradients, g_ref, atol=1e-6)
    # the in-place ReLU after c2 changed the copy handed on, not the recorded output
    assert A.min() < 0 and torch.allclose(A, net.c2(F.max_pool2d(torch.relu(net.c1(x)), 2)), atol=1e-6)
    assert snapshot(net) == before
    # under no_grad there is no graph to start: the output is recorded as it is
    with torch.no_grad(), hooks.capture(net, "c2", leaf=True) as cap:
        net(x)
    assert not cap.activations.requires_grad


def test_capture_restores_model_when_body_raises():
    net = ModuleNet().train()
    net.c1.weight.requires_grad_(False)
    before = snapshot(net)
    with pytest.raises(KeyError):
        with hooks.capture(net, "c2"):
            net(torch.randn(1, 3, 8, 8))
            raise KeyError("body failed")
    assert snapshot(net) == before


def test_capture_shared_module_raises_and_suggests_block():
    r = models._build_torchvision("resnet50", None).eval()
    before = snapshot(r)
    with pytest.raises(ValueError, match="layer4.2"):
        with hooks.capture(r, "layer4.2.relu"):
            r(torch.randn(1, 3, 64, 64))
    assert snapshot(r) == before
    with pytest.raises(ValueError, match="unknown layer"):
        with hooks.capture(r, "layer9"):
            pass


def test_a_forward_pass_stopped_at_a_shared_module_is_refused_too():
    """Stopped right after the first call, the pass cannot see the second one: a probe counts them."""
    from helpers import features

    r = models._build_torchvision("resnet50", None).eval()
    x = torch.randn(1, 3, 64, 64)
    before = snapshot(r)
    for run in (lambda: hooks.forward_to(r, x, "layer1.0.relu"),
                lambda: features.feature_maps(r, x, "layer1.0.relu")):
        with pytest.raises(ValueError, match=r"'layer1\.0\.relu' runs more than once.*'layer1\.0'"):
            run()
    assert snapshot(r) == before
    assert torch.equal(hooks.forward_to(r, x, "layer1.0"), features.feature_maps(r, x, "layer1.0"))


def test_forward_to_stops_at_the_layer():
    net = ModuleNet()
    x = torch.randn(2, 3, 8, 8)
    hooks.forward_to(net, x, "c2")      # the first call per layer probes the whole net once (shared modules)
    assert hooks._CALLS[net] == {id(net.c2): 1}
    calls = []
    net.fc.register_forward_hook(lambda *a: calls.append(1))
    a = hooks.forward_to(net, x, "c2")
    assert torch.allclose(a, net.c2(F.max_pool2d(torch.relu(net.c1(x)), 2)))
    assert calls == [] and len(net.fc._forward_hooks) == 1


def test_forward_to_on_a_net_the_probe_cannot_run_probes_once_and_still_stops():
    """A net with a fixed input size (a linear layer after flattening) fails the probe's black
    image: forward_to still works, and the failed probe is not tried again at every call."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 8 * 8, 2)).eval()
    x = torch.randn(2, 3, 8, 8)
    runs = []
    net.register_forward_pre_hook(lambda *a: runs.append(1))
    a = hooks.forward_to(net, x, "1")
    assert torch.equal(a, torch.relu(net[0](x))) and len(runs) == 2        # the failed probe, the pass
    hooks.forward_to(net, x, "1")
    assert len(runs) == 3 and hooks._CALLS[net] == {id(net[1]): 0}


def test_frozen_restores_requires_grad_and_mode():
    net = ModuleNet().train()
    net.c1.bias.requires_grad_(False)
    before = snapshot(net)
    with hooks.frozen(net):
        assert not any(p.requires_grad for p in net.parameters()) and not net.training
    assert snapshot(net) == before


def test_evaluated_sees_a_training_module_anywhere_and_survives_none_and_cycles(monkeypatch):
    deep = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Sequential(torch.nn.Dropout(0.5)))
    net = torch.nn.Sequential(torch.nn.Identity(), deep).eval()
    net.register_module("empty", None)                       # a child registered as None
    assert hooks._in_eval_mode(net)
    deep[1][0].train()                                      # one Dropout deep inside in training mode
    assert not hooks._in_eval_mode(net)
    with hooks.evaluated(net):                              # evaluated puts it in eval mode, then back
        assert not deep[1][0].training
    assert deep[1][0].training
    deep[1][0].eval()
    shared = torch.nn.ReLU()
    net.add_module("again", torch.nn.Sequential(shared, shared).eval())   # one module, two places
    assert hooks._in_eval_mode(net)
    deep[1].add_module("loop", net)                          # a module inside itself: the quick walk
    monkeypatch.setattr(hooks, "_QUICK_WALK", 50)            # would never end; the careful walk decides
    assert hooks._in_eval_mode(net)
    shared.train()
    assert not hooks._in_eval_mode(net)
