"""Every chapter's explorer, moved as a reader moves it: an uploaded photo, each control at its extremes.

    python tests/explorers.py                    # every chapter, offline world
    python tests/explorers.py 16 19 --online     # some chapters, real architectures (random weights)

The book shows each explorer's default output, and nbval runs only that. A reader then uploads a
photo of their own (any size, no class) and drags sliders to their ends. This script executes each
chapter in a fresh kernel, records every ``widgets.explore`` call, and afterwards changes one control
at a time, the way the widget does (setting the widget's value, so that a filter slider follows its
layer picker): the image picker gets an uploaded non-square photo, class pickers their first and
last class, dropdowns every option, sliders their minimum and maximum. Each change calls the
explorer's function once; any exception is reported with its traceback. Exit status 1 if any was.
Slow (every chapter is executed): not part of the default test run. ``--online`` uses
``CNNVIS_RANDOM_WEIGHTS=1`` (see ``tests/benchmarks/chapters.py``): the real architectures and
their layers and 1000 classes, without a download.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
sys.path.insert(0, str(BOOK / "_ext"))
import kernel_wakeup  # noqa: E402  (a missed wake-up would otherwise stall a cell until its timeout)

kernel_wakeup.install()

# runs right after the setup cell: remember every explorer the chapter builds
RECORD = r'''
import helpers.widgets as _widgets
_EXPLORERS, _explore = [], _widgets.explore
def _recording_explore(fn, run_button=False, **controls):
    _EXPLORERS.append((fn, controls))
    return _explore(fn, run_button=run_button, **controls)
_widgets.explore = _recording_explore
'''

# runs after the last cell: move each control, call the explorer's function, collect exceptions
SWEEP = r'''
def _sweep(budget):
    import io, json, time, traceback
    import ipywidgets as W
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image
    from helpers import images as _images
    from helpers.widgets import ImagePicker, _value

    def photo():   # a non-square photo of the world, 333 x 211, as an upload's bytes
        ex = _images.examples(model if "model" in globals() else None)[0].image
        crop = ex[: max(8, int(ex.shape[0] * 0.6))]
        buf = io.BytesIO()
        Image.fromarray(np.asarray(Image.fromarray(crop).resize((333, 211)))).save(buf, "PNG")
        return buf.getvalue()

    sliders = (W.IntSlider, W.FloatSlider, W.FloatLogSlider)
    problems, calls, slow, skipped, t0 = [], 0, [], 0, time.perf_counter()
    for fn, controls in _EXPLORERS:
        name = getattr(fn, "__name__", str(fn))
        changes = []
        for key, w in controls.items():
            if isinstance(w, ImagePicker):
                changes.append((key, "upload"))
            elif isinstance(w, W.Combobox):
                changes += [(key, w.options[-1]), (key, w.options[0])]
            elif isinstance(w, W.Dropdown):
                changes += [(key, o[1] if isinstance(o, tuple) else o) for o in w.options]
            elif isinstance(w, sliders):
                changes += [(key, w.min), (key, w.max)]
            elif isinstance(w, W.Checkbox):
                changes.append((key, not w.value))
        # uploads first, slider maxima (often step counts: the slowest) last
        changes.sort(key=lambda c: (c[1] != "upload", isinstance(controls[c[0]], sliders) and c[1] == controls[c[0]].max))
        for n, (key, value) in enumerate(changes):
            if time.perf_counter() - t0 > budget:   # out of time: count what was left, not a problem
                skipped += len(changes) - n
                break
            w, before = controls[key], controls[key].value
            if value == "upload":
                w._on_upload({"new": [{"name": "mine.png", "content": photo()}]})
                if "loaded" not in w.message.value:
                    problems.append({"explorer": name, "change": "upload", "error": w.message.value, "traceback": ""})
                    continue
            else:
                w.value = value
            what = f"{key}={'an uploaded photo' if value == 'upload' else repr(value)[:60]}"
            t = time.perf_counter()
            try:
                fn(**{k: _value(v) for k, v in controls.items()})
            except Exception as e:
                problems.append({"explorer": name, "change": what, "error": repr(e)[:400],
                                 "traceback": traceback.format_exc()[-3000:]})
            plt.close("all")
            calls += 1
            if time.perf_counter() - t > 30:
                slow.append(f"{name}({what}): {time.perf_counter() - t:.0f} s")
            w.value = before
    print("SWEEP" + json.dumps({"explorers": len(_EXPLORERS), "calls": calls, "problems": problems, "slow": slow,
                                "skipped": skipped}))

_sweep(__BUDGET__)
'''


def sweep(path: Path, budget: float, timeout: int) -> dict:
    nb = nbformat.read(path, as_version=4)
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")   # the setup cell
    nb.cells.insert(first_code + 1, nbformat.v4.new_code_cell(RECORD))
    nb.cells.append(nbformat.v4.new_code_cell(SWEEP.replace("__BUDGET__", repr(float(budget)))))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(BOOK)}})
    start = time.perf_counter()
    client.execute()
    errors = [f"cell {i}: {o.get('ename')}: {o.get('evalue', '')[:200]}" for i, c in enumerate(nb.cells)
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in nb.cells[-1].get("outputs", []) if o.get("output_type") == "stream")
    lines = [ln for ln in text.splitlines() if ln.startswith("SWEEP")]
    result = json.loads(lines[-1][len("SWEEP"):]) if lines else {"explorers": 0, "calls": 0, "problems": [], "slow": [], "skipped": 0}
    result["cell_errors"] = errors
    result["seconds"] = time.perf_counter() - start
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("chapters", nargs="*", help="chapter numbers (default: all)")
    p.add_argument("--online", action="store_true", help="real architectures with random weights")
    p.add_argument("--budget", type=float, default=60, help="seconds of sweeping per chapter")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=int, default=900, help="per cell, seconds")
    args = p.parse_args(argv)
    os.environ.pop("CNNVIS_RANDOM_WEIGHTS" if not args.online else "CNNVIS_OFFLINE", None)
    os.environ["CNNVIS_RANDOM_WEIGHTS" if args.online else "CNNVIS_OFFLINE"] = "1"
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    paths = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
    if args.chapters:
        paths = [q for q in paths if q.name[:2] in {c.zfill(2) for c in args.chapters}]
    bad = 0
    for path in paths:
        r = sweep(path, args.budget, args.timeout)
        # a chapter's own failing cells are chapters.py's business (with random weights some checks fail)
        status = "ok" if not r["problems"] else f"{len(r['problems'])} problem(s)"
        print(f"{path.stem}: {r['explorers']} explorer(s), {r['calls']} changes, {r['seconds']:.0f} s: {status}"
              + (f"; {r['skipped']} changes left (--budget)" if r["skipped"] else "")
              + (f"; slow: {', '.join(r['slow'])}" if r["slow"] else ""), flush=True)
        for pr in r["problems"]:
            print(f"  {pr['explorer']}({pr['change']}): {pr['error']}\n{pr['traceback']}", flush=True)
        if r["explorers"] == 0 and r["cell_errors"]:
            print(f"  the chapter did not reach its explorer: {r['cell_errors'][0]}", flush=True)
        bad += bool(r["problems"]) or (r["explorers"] == 0 and bool(r["cell_errors"]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
