"""tests/model_state.py, behind every "the model is left as it was" assertion: it sees each kind of change."""
import torch
from torch import nn

from model_state import snapshot


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()


CHANGES = {
    "mode": lambda n: n[1].train(),
    "inplace": lambda n: setattr(n[2], "inplace", True),
    "forward hook": lambda n: n[0].register_forward_hook(lambda *a: None),
    "forward pre-hook": lambda n: n[4].register_forward_pre_hook(lambda *a: None),
    "backward hook": lambda n: n[4].register_full_backward_hook(lambda *a: None),
    "forward replaced": lambda n: setattr(n[2], "forward", lambda x: x),
    "requires_grad": lambda n: n[0].weight.requires_grad_(False),
    "gradient": lambda n: n(torch.rand(1, 3, 8, 8)).sum().backward(),
    "weight values": lambda n: n[4].bias.data.add_(1e-3),
    "buffer values": lambda n: n[1].running_mean.add_(1e-3),
    "module replaced": lambda n: n.__setitem__(2, nn.ReLU().eval()),     # equal in every other respect
}


def test_every_kind_of_change_is_seen_and_named():
    for what, change in CHANGES.items():
        net = _net()
        before = snapshot(net)
        assert snapshot(net) == before, what
        change(net)
        after = snapshot(net)
        assert after != before and before.changes(after), f"{what}: not seen"


def test_an_equal_gradient_is_no_change_and_a_different_one_is():
    net = _net()
    x = torch.rand(1, 3, 8, 8)
    net(x).sum().backward()
    before = snapshot(net)
    assert snapshot(net) == before
    net(x).sum().backward()                   # accumulates: twice the gradient
    assert snapshot(net) != before
