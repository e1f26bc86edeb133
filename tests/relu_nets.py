"""Two small networks of the same structure, one with functional ReLUs and one with ReLU modules, and
the guided / deconvnet rules written independently as full backward hooks on the modules: the
reference that the ReLU rules of helpers.hooks and helpers.gradients are tested against."""
import copy

import torch
import torch.nn.functional as F
from torch import nn


class FunctionalNet(nn.Module):
    """Like GoogLeNet/Inception v3: every ReLU is a functional call, there is no ReLU module."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 12, 3, padding=1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x), inplace=True), 2)
        x = torch.relu(self.c2(x))
        return self.fc(x.mean((2, 3)))


class ModuleNet(FunctionalNet):
    """The same network with in-place nn.ReLU modules (as in torchvision's VGG and ResNet)."""

    def __init__(self):
        super().__init__()
        self.r1 = nn.ReLU(inplace=True)
        self.r2 = nn.ReLU(inplace=True)

    def forward(self, x):
        x = F.max_pool2d(self.r1(self.c1(x)), 2)
        x = self.r2(self.c2(x))
        return self.fc(x.mean((2, 3)))


def hooked_reference(net, x, targets, rule):
    """The paper's rule written as full backward hooks on the nn.ReLU modules, one image at a time."""
    net = copy.deepcopy(net)
    for r in (net.r1, net.r2):
        r.inplace = False

    def hook(module, grad_in, grad_out):
        if rule == "guided":  # grad_in already holds g * [x > 0]; keep its positive part
            return (grad_in[0].clamp(min=0),)
        return (grad_out[0].clamp(min=0),)  # deconvnet: the signal from above, rectified

    for r in (net.r1, net.r2):
        r.register_full_backward_hook(hook)
    out = []
    for xi, t in zip(x, targets):
        xi = xi[None].clone().requires_grad_(True)
        net(xi)[0, t].backward()
        out.append(xi.grad[0])
    return torch.stack(out)
