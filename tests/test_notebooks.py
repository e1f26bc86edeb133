"""The chapter notebooks as files: clean, listed in the table of contents, same setup cell, runnable
locally and in Colab, with an assignment and checks. (nbval executes them: `pytest ... book`.)"""
import ast
import json
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
NOTEBOOKS = sorted(p for p in BOOK.glob("*.ipynb"))
CHAPTERS = [p for p in NOTEBOOKS if re.match(r"\d\d_", p.name)]


def cells(path):
    return json.loads(path.read_text())["cells"]


def source(cell):
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def setup_cell(path):
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    return code[0]


def test_there_are_chapters():
    assert (BOOK / "00_models_and_images.ipynb") in CHAPTERS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            assert not c.get("outputs"), f"{path.name}: a cell has outputs; clear them before committing"
            assert c.get("execution_count") is None, f"{path.name}: execution counts left in"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def toc_files():
    return re.findall(r"file:\s*(\S+)", (ROOT / "_toc.yml").read_text()) + \
        [re.search(r"root:\s*(\S+)", (ROOT / "_toc.yml").read_text()).group(1)]


def test_toc_lists_every_notebook_and_only_existing_files():
    entries = {t.rsplit(".", 1)[0] if t.endswith((".ipynb", ".md")) else t for t in toc_files()}
    for nb in NOTEBOOKS:
        assert f"book/{nb.stem}" in entries, f"{nb.name} is missing from _toc.yml"
    for e in entries:
        assert any((ROOT / (e + s)).exists() for s in (".ipynb", ".md")), f"_toc.yml lists {e}, which does not exist"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_anatomy(path):
    first = setup_cell(path)
    reference = setup_cell(BOOK / "00_models_and_images.ipynb")
    assert source(first) == source(reference), f"{path.name}: the setup cell differs from chapter 00's"
    assert "hide-input" in first.get("metadata", {}).get("tags", [])
    text = "\n".join(source(c) for c in cells(path))
    assert "{cite" in text, f"{path.name}: no citation of the paper"
    assert "## Exercises" in text or "## Exercise" in text
    assert "show_source(" in text, f"{path.name}: the helper's source is not shown"
    assert "widgets.explore(" in text, f"{path.name}: no explorer"
    assert "assert " in text, f"{path.name}: no checks"
    code = [source(c) for c in cells(path) if c["cell_type"] == "code"]
    marked = [i for i, s in enumerate(code) if "### BEGIN SOLUTION" in s]
    assert marked, f"{path.name}: no assignment cell (### BEGIN SOLUTION / ### END SOLUTION)"
    for i in marked:
        assert "### END SOLUTION" in code[i]
        assert i + 1 < len(code) and "assert" in code[i + 1], f"{path.name}: no check cell after the assignment"
    # widgets.explore displays its widget; left as a cell's last expression, Jupyter shows it a
    # second time (the execute_result), as two copies of the controls
    for s in code:
        if "widgets.explore(" in s:
            last = ast.parse(s).body[-1]
            assert not (isinstance(last, ast.Expr) and "widgets.explore(" in ast.unparse(last)), \
                f"{path.name}: the explorer is the cell's value and is shown twice (assign it: explorer = ...)"


def test_setup_cell_repository_matches_config():
    config = (ROOT / "_config.yml").read_text()
    url = re.search(r"repository:\s*\n\s*url:\s*(\S+)", config).group(1)
    branch = re.search(r"branch:\s*(\S+)", config).group(1)
    src = source(setup_cell(BOOK / "00_models_and_images.ipynb"))
    assert f'REPO, REF = "{url}", "{branch}"' in src


def run_setup(src, monkeypatch, cwd):
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))
    ns = {}
    exec(compile(src, "setup-cell", "exec"), ns)
    return ns


def test_setup_cell_local_path(monkeypatch, capsys):
    src = source(setup_cell(BOOK / "00_models_and_images.ipynb"))
    ns = run_setup(src, monkeypatch, BOOK)
    assert ns["root"] == ROOT and sys.path[0] == str(ROOT)
    assert "world: offline" in capsys.readouterr().out
    assert str(ns["device"]) in ("cpu", "cuda")


def test_setup_keeps_full_float32_on_a_gpu():
    """cuDNN's TF32 (on by default) would break the chapters' tight comparisons on a GPU: setup()
    turns it off, through full_float32 (which the test suite's conftest uses too)."""
    import random

    import matplotlib
    import numpy as np
    import torch

    import helpers

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    states = random.getstate(), np.random.get_state()
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with matplotlib.rc_context(), torch.random.fork_rng():   # setup's other settings, undone
            helpers.setup(quiet=True)
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = True                   # full_float32 puts back what it found
        restore = helpers.full_float32()
        assert not torch.backends.cudnn.allow_tf32
        restore()
        assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
        random.setstate(states[0])
        np.random.set_state(states[1])


def test_setup_cell_colab_path(monkeypatch, tmp_path, capsys):
    """In Colab: no repository around, so it clones at the configured ref (stubbed here) and uses it."""
    src = source(setup_cell(BOOK / "00_models_and_images.ipynb"))
    src = src.replace('Path("/content/', f'Path("{tmp_path}/')
    calls = []

    def fake_run(cmd, check=False, **kw):
        calls.append(cmd)
        Path(cmd[-1]).symlink_to(ROOT)  # the "clone"
        return types.SimpleNamespace(returncode=0)

    colab = types.ModuleType("google.colab")
    enabled = []
    colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: enabled.append(True))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    import subprocess
    monkeypatch.setattr(subprocess, "run", fake_run)
    empty = tmp_path / "work"
    empty.mkdir()
    ns = run_setup(src, monkeypatch, empty)
    assert len(calls) == 1 and calls[0][:2] == ["git", "clone"]
    assert ns["REPO"] in calls[0] and calls[0][calls[0].index("--branch") + 1] == ns["REF"]
    assert ns["root"] == tmp_path / "cnn-visualization-book" and sys.path[0] == str(ns["root"])
    assert enabled == [True]
    # a second run finds the clone and does not clone again
    run_setup(src, monkeypatch, empty)
    assert len(calls) == 1
    # nothing is pip-installed in Colab (torch, torchvision and OpenCV are there already)
    assert "pip" not in src
