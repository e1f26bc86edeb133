"""Keep the notebooks that the test run executes, with their outputs and widget state, so that CI can
render the book from them instead of executing every chapter a second time.

nbval runs each chapter in a kernel and reads every message the kernel sends, but keeps no outputs
(and no widget state). This plugin is activated only by ``CNNVIS_EXECUTED=FOLDER`` (``.ci/run``
sets it): it passes each message that belongs to a cell's execution to nbclient's own message
handling (``NotebookClient.process_message``, the code that executes notebooks in the book build),
so the outputs, ``clear_output``, display updates, Output widgets and the widget state are
recorded exactly as the book build would record them. A notebook is written to ``FOLDER`` only if
every one of its code cells ran and passed; one with a failed or skipped cell is not written, and
``.ci/run`` then refuses to render the book from the recorded notebooks.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionComplete


class _Notebook:
    """One notebook being recorded: a copy of it, and nbclient's handling of the kernel's messages."""

    def __init__(self, nb, kernel):
        self.nb = copy.deepcopy(nb)
        self.client = NotebookClient(self.nb, store_widget_state=True, record_timing=False)
        self.client.kc = kernel.kc        # nbclient's Output widget mimic talks to the kernel, as in a build
        self.client.clear_before_next_output = False
        self.code = [i for i, c in enumerate(self.nb.cells) if c.cell_type == "code"]
        self.passed = set()
        self.index = self.msg_id = None

    def start(self, index):
        cell = self.nb.cells[index]
        cell.outputs, cell.execution_count = [], None
        self.client.clear_before_next_output = False
        self.index, self.msg_id = index, None

    def feed(self, msg):
        """One message from the kernel's iopub channel: handled as nbclient handles it during a build,
        only if it belongs to the current cell's execution (nbclient ignores the others too)."""
        if self.index is None or self.msg_id is None or msg["parent_header"].get("msg_id") != self.msg_id:
            return
        try:
            self.client.process_message(msg, self.nb.cells[self.index], self.index)
        except CellExecutionComplete:
            pass

    def complete(self):
        return self.passed == set(self.code)


class Recorder:
    """The pytest plugin: registered by ``tests/conftest.py`` when ``CNNVIS_EXECUTED`` is set."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.notebooks = {}       # the nbval file collector -> _Notebook

    def _path(self, parent):
        return self.folder / Path(str(parent.fspath)).name

    def _watch(self, item):
        """The recording of item's notebook; the first time, wrap its kernel's two calls that nbval
        uses to run a cell (send the code, read the messages)."""
        parent = item.parent
        if parent not in self.notebooks:
            kernel = parent.kernel
            rec = self.notebooks[parent] = _Notebook(parent.nb, kernel)
            self._path(parent).unlink(missing_ok=True)     # an earlier run's recording is not this one
            send, receive = kernel.execute_cell_input, kernel.get_message

            def execute_cell_input(*args, **kwargs):
                rec.msg_id = send(*args, **kwargs)
                return rec.msg_id

            def get_message(stream, timeout=None):
                msg = receive(stream, timeout=timeout)
                if stream == "iopub":
                    rec.feed(msg)
                return msg

            kernel.execute_cell_input, kernel.get_message = execute_cell_input, get_message
        return self.notebooks[parent]

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item):
        """The kernel of a recorded notebook starts with matplotlib's inline backend, as in a build:
        tests/conftest.py sets MPLBACKEND=Agg for the test process, under which plt.show() draws
        nothing into the notebook."""
        starts = type(item).__name__ == "IPyNbCell" and getattr(item.parent, "kernel", None) is None
        backend = os.environ.pop("MPLBACKEND", None) if starts else None
        try:
            yield
        finally:
            if backend is not None:
                os.environ["MPLBACKEND"] = backend

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        if type(item).__name__ != "IPyNbCell" or getattr(item.parent, "kernel", None) is None:
            yield
            return
        rec = self._watch(item)
        index = next(i for i, c in enumerate(item.parent.nb.cells) if c is item.cell)
        rec.start(index)
        outcome = yield
        if outcome.excinfo is None:
            rec.passed.add(index)
            # numbered as the book build numbers them: the n-th code cell run is [n]
            rec.nb.cells[index].execution_count = rec.code.index(index) + 1
        rec.index = None

    def pytest_runtest_teardown(self, item, nextitem):
        parent = getattr(item, "parent", None)
        if parent not in self.notebooks or (nextitem is not None and nextitem.parent is parent):
            return
        rec = self.notebooks.pop(parent)
        if rec.complete():
            rec.client.set_widgets_metadata()
            nbformat.write(rec.nb, self._path(parent))

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.write_line(f"executed notebooks recorded in {self.folder}: "
                                    f"{len(list(self.folder.glob('*.ipynb')))}")


def register(config):
    """Record into ``$CNNVIS_EXECUTED`` if it is set (called by tests/conftest.py; as a plugin module,
    ``pytest -p record_notebooks`` with ``tests`` on the path does the same)."""
    folder = os.environ.get("CNNVIS_EXECUTED")
    if folder and not config.pluginmanager.has_plugin("record-notebooks"):
        config.pluginmanager.register(Recorder(folder), "record-notebooks")


pytest_configure = register
