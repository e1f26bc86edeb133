"""Test configuration: the whole suite runs in the offline world, without network.

``CNNVIS_OFFLINE=1`` is set here, at import time, before nbval starts any notebook kernel, so
the kernels inherit it too.
"""
import os
import sys
from pathlib import Path

import pytest

os.environ["CNNVIS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "2")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

collect_ignore = ["benchmarks"]

# The tests that execute notebooks with nbclient (tests/test_assignments.py) get the same guard as
# the book build against a missed wake-up that would stall a cell until its timeout.
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import kernel_wakeup  # noqa: E402

kernel_wakeup.install()


def pytest_configure(config):
    # CI keeps the notebooks this run executes and renders the book from them (tests/record_notebooks.py)
    if os.environ.get("CNNVIS_EXECUTED"):
        from record_notebooks import register

        register(config)


def pytest_assertrepr_compare(op, left, right):
    """``assert snapshot(model) == before`` (tests/model_state.py; after on the left, as every test
    writes it) says what changed in the model."""
    from model_state import State

    if op == "==" and isinstance(left, State) and isinstance(right, State):
        return ["the model changed (before -> after):"] + [f"  {c}" for c in right.changes(left)]
    return None


def pytest_addoption(parser):
    parser.addoption("--built-book", default=None,
                     help="folder of a built book (_build/html) for tests/test_built_book.py")


@pytest.fixture(scope="session", autouse=True)
def full_float32():
    """The tests compare computations in float32, as the chapters do after ``helpers.setup()``: on a
    GPU, cuDNN's default TF32 convolutions (about 1e-3 relative error) would fail them."""
    import helpers

    restore = helpers.full_float32()
    yield
    restore()
