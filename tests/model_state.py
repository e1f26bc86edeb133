"""What every helper promises to leave as it found it, for the tests: take ``before = snapshot(model)``,
call the helper, then ``assert snapshot(model) == before`` (also after the helper raised).

One definition for every test file, the strictest: the same module objects, and per module its
train/eval mode, ``inplace`` flag, number of hooks of each kind and whether ``forward`` was replaced
on the instance; per parameter ``requires_grad`` and its gradient (absent, or the same values); every
parameter's and buffer's values. A failed comparison lists what changed (``tests/conftest.py``
shows it).
"""
from __future__ import annotations

import torch
from torch import nn

_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
          "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


class State:
    """A model's state as :func:`snapshot` records it; ``==`` compares two, :meth:`changes` says how they differ."""

    def __init__(self, model: nn.Module):
        self.modules = [(name, id(m), m.training, getattr(m, "inplace", None),
                         tuple(len(getattr(m, k, ())) for k in _HOOKS), "forward" in m.__dict__)
                        for name, m in model.named_modules(remove_duplicate=False)]
        self.parameters = [(name, p.requires_grad, None if p.grad is None else p.grad.detach().clone())
                           for name, p in model.named_parameters(remove_duplicate=False)]
        self.tensors = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}

    def changes(self, other: "State") -> list:
        """What differs between ``self`` (before) and ``other`` (after), one line each (at most 10)."""
        out = []
        if [m[:2] for m in self.modules] != [m[:2] for m in other.modules]:
            out.append("the modules themselves changed (added, removed or replaced by other objects)")
        else:
            what = ("mode (training)", "inplace", "hooks (forward, forward pre, backward, backward pre, with kwargs)",
                    "forward replaced on the instance")
            for a, b in zip(self.modules, other.modules):
                for i, label in enumerate(what, start=2):
                    if a[i] != b[i]:
                        out.append(f"module {a[0] or '(model)'!r}: {label} {a[i]} -> {b[i]}")
        if [p[0] for p in self.parameters] != [p[0] for p in other.parameters]:
            out.append("the parameters themselves changed")
        else:
            for (name, rg, g), (_, rg2, g2) in zip(self.parameters, other.parameters):
                if rg != rg2:
                    out.append(f"parameter {name!r}: requires_grad {rg} -> {rg2}")
                if not _same(g, g2):
                    out.append(f"parameter {name!r}: gradient "
                               f"{'none' if g is None else 'set'} -> {'none' if g2 is None else 'set, or other values'}")
        if self.tensors.keys() != other.tensors.keys():
            out.append(f"state_dict keys changed: {sorted(self.tensors.keys() ^ other.tensors.keys())[:5]}")
        else:
            out += [f"values of {k!r} changed" for k in self.tensors if not _same(self.tensors[k], other.tensors[k])]
        return out[:10] + ([f"... and {len(out) - 10} more"] if len(out) > 10 else [])

    def __eq__(self, other) -> bool:
        return isinstance(other, State) and not self.changes(other)

    __hash__ = None

    def __repr__(self) -> str:
        return f"State({len(self.modules)} modules, {len(self.parameters)} parameters)"


def snapshot(model: nn.Module) -> State:
    """The model's state now (copies of its tensors): compare it with a later one with ``==``."""
    return State(model)
