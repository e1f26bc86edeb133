"""tests/record_notebooks.py: what the test run records is what the book build would have executed.

A small notebook with the kinds of output the chapters make (text, a matplotlib figure, an explorer:
an Output widget drawn into under clear_output(wait=True), a slider) runs under nbval with the
recorder, and once with nbclient as `jupyter-book build` runs it; outputs and widget state must
agree. A notebook with a failing cell is not recorded."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

TESTS = Path(__file__).resolve().parent

CELLS = [
    "import matplotlib.pyplot as plt\nimport ipywidgets as W\nfrom IPython.display import display\nprint('start')",
    "plt.plot([0, 1, 4]); plt.title('a figure'); plt.show()",
    # an explorer as helpers.widgets.explore builds it: controls above an Output drawn into
    "out, s = W.Output(), W.IntSlider(3, description='k')\n"
    "def render(*_):\n"
    "    with out:\n"
    "        out.clear_output(wait=True)\n"
    "        plt.plot(range(s.value)); plt.show()\n"
    "        print('drawn', s.value)\n"
    "s.observe(render, names='value')\n"
    "display(W.VBox([s, out])); render()",
    "s.value = 5\nprint('k is', s.value)",
    "import sys\nprint('to stderr', file=sys.stderr)\n6 * 7",
]


def summary(nb):
    """Per code cell its outputs (kind, mime types, text); the widgets (model, state keys, outputs)."""
    def out(o):
        if o.output_type == "stream":
            return o.output_type, o.name
        if o.output_type in ("display_data", "execute_result"):
            return o.output_type, tuple(sorted(o.data))
        return (o.output_type,)

    cells = []
    for c in nb.cells:
        if c.cell_type == "code":
            text = "".join(o.text for o in c.outputs if o.output_type == "stream")
            cells.append((c.execution_count, sorted({out(o) for o in c.outputs}), text))
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    widgets = sorted((w["model_name"], tuple(sorted(w["state"])),
                      tuple(sorted(str(sorted(o.get("data", {"stream": o.get("text")}))) for o in w["state"].get("outputs", []))))
                     for w in state.values())
    return cells, widgets


def nbval_with_recorder(tmp_path, *notebooks):
    folder = tmp_path / "recorded"
    # MPLBACKEND=Agg as tests/conftest.py sets it for the test process: the recorder must start the
    # kernels without it, or plt.show() would draw nothing into the notebook
    env = dict(os.environ, CNNVIS_EXECUTED=str(folder), PYTHONPATH=str(TESTS), MPLBACKEND="Agg")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "record_notebooks",
                          "--nbval-lax", "--nbval-current-env", *[str(n) for n in notebooks]],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return run, folder


def test_recorded_notebook_equals_nbclient_execution(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "example.ipynb"
    nbformat.write(nb, path)
    broken = tmp_path / "broken.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)"),
                                                   nbformat.v4.new_code_cell("1 / 0")]), broken)

    (tmp_path / "recorded").mkdir()
    (tmp_path / "recorded" / "broken.ipynb").write_text("{}")           # an earlier run's recording
    run, folder = nbval_with_recorder(tmp_path, path, broken)
    assert run.returncode == 1 and "1 failed" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
    assert sorted(p.name for p in folder.iterdir()) == ["example.ipynb"]   # the failing one is left out
    assert "executed notebooks recorded in" in run.stdout
    recorded = nbformat.read(folder / "example.ipynb", as_version=4)

    env_backend = os.environ.pop("MPLBACKEND", None)   # a build's kernel: matplotlib's inline backend
    try:
        executed = NotebookClient(nbformat.read(path, as_version=4), timeout=120, kernel_name="python3",
                                  store_widget_state=True, resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        if env_backend is not None:
            os.environ["MPLBACKEND"] = env_backend

    assert summary(recorded) == summary(executed)
    cells, widgets = summary(recorded)
    # what the comparison covers is there: the figure, the numbering, the explorer's redrawn figure
    assert ("display_data", ("image/png", "text/plain")) in cells[1][1]
    assert [c[0] for c in cells] == [1, 2, 3, 4, 5]
    assert cells[3][2] == "k is 5\n" and cells[4][1][-1] == ("stream", "stderr")
    (output_widget,) = [w for w in widgets if w[0] == "OutputModel"]
    assert len(output_widget[2]) == 2 and "image/png" in output_widget[2][0]   # figure + 'drawn 5' only
