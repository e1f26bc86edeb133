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
# The cores are shared by the pytest-xdist workers (-n auto), and each notebook kernel inherits
# this: two workers of two threads each on two cores would spin against each other.
_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, min(2, _cores // _workers))))

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
