"""Run every chapter's code cells in plain Python processes, without Jupyter, one process per chapter.

For a machine that has a GPU but no Jupyter (``tests/gpu.sh``): each chapter runs in a fresh
process as a reader's kernel runs it, in the offline world, on the device ``helpers.setup()`` picks
(the GPU where there is one). Figures are drawn with matplotlib's Agg backend and discarded;
widgets are built as in a notebook (without a front end to show them). Every failing cell is
reported (its index, id and the last line of its error) and the chapter runs on to its end, as
``tests/benchmarks/chapters.py`` does; the exit status is 1 if any cell failed.

    python tests/chapters_plain.py            # every chapter
    python tests/chapters_plain.py 05 17      # some chapters
    python tests/chapters_plain.py --random-weights   # the real architectures, random weights

``--random-weights`` runs the ImageNet architectures (VGG16, ResNet50, GoogLeNet, ...) built with
random weights instead of the offline world (``CNNVIS_RANDOM_WEIGHTS=1``, as
``tests/benchmarks/chapters.py`` does): the code paths and tensor sizes of a reader with the real
weights, where the checks that need trained weights fail (chapters 16 and 17, see README).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"

CHILD = r'''
import json, sys, traceback
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

nb = json.load(open(sys.argv[1]))
ns = {"__name__": "__main__"}
failed = []
for i, cell in enumerate(nb["cells"]):
    if cell["cell_type"] != "code":
        continue
    try:
        exec(compile("".join(cell["source"]), f"<cell {i}>", "exec"), ns)
    except BaseException as e:  # noqa: B036 - a failing cell is reported, the chapter runs on
        if isinstance(e, KeyboardInterrupt):
            raise
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        failed.append({"cell": i, "id": cell.get("id"), "error": last[:300]})
        traceback.print_exc()
    plt.close("all")
print("RESULT " + json.dumps({"failed": failed, "device": str(ns.get("device"))}))
'''


def run(path: Path, timeout: int, random_weights: bool = False) -> dict:
    path_ = os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=path_)     # keeps what gpu.sh put there
    env.pop("CNNVIS_RANDOM_WEIGHTS" if not random_weights else "CNNVIS_OFFLINE", None)
    env["CNNVIS_RANDOM_WEIGHTS" if random_weights else "CNNVIS_OFFLINE"] = "1"
    start = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, str(path)], cwd=BOOK, env=env, timeout=timeout,
                           capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"seconds": time.perf_counter() - start, "device": "?", "failed": [{"error": f"timeout {timeout} s"}]}
    seconds = time.perf_counter() - start
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:  # the process died before the end
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"seconds": seconds, "device": "?", "failed": [{"error": f"exit {p.returncode}: {' | '.join(tail)}"}]}
    out = json.loads(lines[-1][len("RESULT "):])
    if out["failed"]:
        sys.stderr.write(f"--- {path.name}\n{p.stderr[-4000:]}\n")
    return {"seconds": seconds, **out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("chapters", nargs="*", help="chapter numbers (default: all)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per chapter")
    ap.add_argument("--random-weights", action="store_true", help="real architectures, random weights")
    args = ap.parse_args(argv)
    paths = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
    if args.chapters:
        paths = [p for p in paths if p.name[:2] in {c.zfill(2) for c in args.chapters}]
    bad = 0
    for path in paths:
        r = run(path, args.timeout, args.random_weights)
        status = "ok" if not r["failed"] else "; ".join(
            f"cell {f.get('cell', '?')} ({f.get('id')}): {f['error']}" for f in r["failed"])
        bad += bool(r["failed"])
        print(f"{path.stem:<36} {r['seconds']:6.0f} s  {r['device']:<5} {status}", flush=True)
    print(f"{len(paths) - bad} of {len(paths)} chapters ran without an error")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
