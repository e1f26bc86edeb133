"""book/_ext/kernel_wakeup.py: the book build waits for a cell's reply in one-second slices, so a
missed wake-up costs a second instead of the cell's whole timeout."""
import asyncio
import sys
import time
from pathlib import Path
from queue import Empty

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import kernel_wakeup  # noqa: E402
from jupyter_client.channels import AsyncZMQSocketChannel  # noqa: E402


class FakeSocket:
    """A socket whose asyncio wake-up is lost: each poll waits its whole timeout, and reports the
    message only once ``ready_after`` seconds have passed (as pyzmq's poll(0) at the timeout does)."""

    def __init__(self, ready_after):
        self.t0 = time.monotonic()
        self.ready_after = ready_after
        self.polls = []

    async def poll(self, timeout_ms):
        self.polls.append(timeout_ms)
        await asyncio.sleep(timeout_ms / 1000)
        return int(time.monotonic() - self.t0 >= self.ready_after)


def channel(ready_after):
    ch = AsyncZMQSocketChannel.__new__(AsyncZMQSocketChannel)
    ch.socket = FakeSocket(ready_after)

    async def recv():
        return {"msg": "reply"}

    ch._recv = recv
    return ch


@pytest.fixture(autouse=True)
def patched(monkeypatch):
    kernel_wakeup.install()                   # (conftest.py has installed it already)
    unpatched = kernel_wakeup.original
    assert unpatched is not None and not getattr(unpatched, "_sliced", False)
    monkeypatch.setattr(AsyncZMQSocketChannel, "get_msg", unpatched)
    monkeypatch.setattr(kernel_wakeup, "SLICE_S", 0.05)
    assert kernel_wakeup.install() and kernel_wakeup.install()   # patches, and is idempotent
    assert AsyncZMQSocketChannel.get_msg._sliced


def test_without_the_patch_a_missed_wakeup_waits_the_whole_timeout():
    ch = channel(ready_after=0.05)
    t0 = time.monotonic()
    assert asyncio.run(kernel_wakeup.original(ch, timeout=0.5)) == {"msg": "reply"}
    assert time.monotonic() - t0 >= 0.45      # the bug this guards against, in the fake socket


def test_a_missed_wakeup_costs_one_slice_not_the_whole_timeout():
    ch = channel(ready_after=0.12)
    t0 = time.monotonic()
    msg = asyncio.run(ch.get_msg(timeout=30))
    took = time.monotonic() - t0
    assert msg == {"msg": "reply"}
    assert took < 2, took                      # unpatched, it would wait the whole 30 s
    assert max(ch.socket.polls) <= 50 and len(ch.socket.polls) >= 3


def test_a_real_timeout_still_raises_empty_and_none_waits_on():
    ch = channel(ready_after=1e9)
    t0 = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(ch.get_msg(timeout=0.2))
    assert 0.15 <= time.monotonic() - t0 < 2
    ch = channel(ready_after=0.1)
    assert asyncio.run(ch.get_msg(timeout=None)) == {"msg": "reply"}   # no timeout: waits, in slices


def test_the_book_build_loads_it():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    ext = config["sphinx"]["local_extensions"]
    assert (ROOT / ext["kernel_wakeup"] / "kernel_wakeup.py").exists()
    assert callable(kernel_wakeup.setup)
