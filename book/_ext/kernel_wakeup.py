"""Sphinx extension (and plain module) that keeps notebook execution from stalling on a lost wake-up.

Symptom, seen on this project's machines with jupyter_client 8.x, pyzmq 27, ipykernel 6 and 7:
now and then a cell that has finished in the kernel (idle, reply sent) keeps nbclient waiting
until the cell's timeout (600 s in the book build, 900 s in ``tests/benchmarks/chapters.py``),
and the cell then passes. The reply was in the client's socket all along: the asyncio wake-up for
it was missed, and pyzmq's poll only looks at the socket again when its timeout fires (reported
upstream as jupyter/nbclient#312). Waiting in slices of at most one second makes a missed
wake-up cost at most a second; nothing else changes (a real timeout still raises ``Empty``).

The book build loads it through ``sphinx.local_extensions`` in ``_config.yml``; the chapter
timing script imports it. Calling :func:`install` twice is harmless.
"""
from __future__ import annotations

import time
from queue import Empty

SLICE_S = 1.0
original = None  # jupyter_client's own get_msg, once replaced


def install() -> bool:
    """Patch ``AsyncZMQSocketChannel.get_msg`` to poll in slices; True if it is (now) patched."""
    try:
        from jupyter_client.channels import AsyncZMQSocketChannel
    except ImportError:  # pragma: no cover - nothing to patch
        return False
    if getattr(AsyncZMQSocketChannel.get_msg, "_sliced", False):
        return True
    global original
    original = AsyncZMQSocketChannel.get_msg

    async def get_msg(self, timeout: float | None = None):
        """Get a message if there is one that is ready, waiting at most ``timeout`` seconds."""
        assert self.socket is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = SLICE_S if deadline is None else min(SLICE_S, max(0.0, deadline - time.monotonic()))
            if await self.socket.poll(int(left * 1000)):
                return await self._recv()
            if deadline is not None and time.monotonic() >= deadline:
                raise Empty

    get_msg._sliced = True
    AsyncZMQSocketChannel.get_msg = get_msg
    return True


def setup(app):  # Sphinx entry point
    install()
    return {"parallel_read_safe": True, "parallel_write_safe": True}
