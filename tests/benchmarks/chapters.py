"""The online cost of the book: each chapter's execution time with the real architectures.

    python tests/benchmarks/chapters.py                  # every chapter, random weights, 2 threads
    python tests/benchmarks/chapters.py 11 14 --offline  # some chapters, in the offline world
    python tests/benchmarks/chapters.py --readme         # also rewrite the table in README.md
    python tests/benchmarks/chapters.py --plain --offline    # without Jupyter (tests/gpu.sh)

Speed does not depend on the weights, so ``CNNVIS_RANDOM_WEIGHTS=1`` makes ``helpers.models.load``
build VGG16, ResNet50, GoogLeNet, ... with random weights (no download): every chapter then runs
exactly the computation a reader with the real weights runs, on the ImageNet-sized inputs. This
switch exists only for this measurement (the maps it draws mean nothing). Each chapter runs in a
fresh kernel, like nbval and the book build; the checks that only hold for trained weights are
not the point here, so a failing cell is reported (the first one) and the chapter runs on to its
end. The goal: every chapter under five minutes on 2 CPU cores.

``--plain`` runs each chapter's code cells in a plain Python process instead of a Jupyter kernel
(figures drawn with matplotlib's Agg backend and discarded, widgets built without a front end), for
a machine that has a GPU but no Jupyter; the status then names the device the chapter ran on. Its
times are not the book's (no kernel), so it is for checking that every chapter runs, not for the
README's table.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "book"
sys.path.insert(0, str(BOOK / "_ext"))
import kernel_wakeup  # noqa: E402  (a missed wake-up would otherwise stall a cell until its timeout)

kernel_wakeup.install()
GOAL_S = 300


def run_plain(path: Path) -> tuple:
    """The chapter's code cells executed here, in order, in one namespace (no kernel): every failing
    cell as (index, last line of its error), and the device the chapter's setup chose."""
    import json
    import traceback

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.chdir(BOOK)
    ns, failed = {"__name__": "__main__"}, []
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        try:
            exec(compile("".join(cell["source"]), f"<{path.stem} cell {i}>", "exec"), ns)
        except Exception as e:  # reported; the chapter runs on, as in a kernel
            failed.append((i, traceback.format_exception_only(type(e), e)[-1].strip()[:120]))
            traceback.print_exc()
        plt.close("all")
    return failed, str(ns.get("device", "?"))


def run(path: Path, offline: bool, threads: int, timeout: int, plain: bool = False) -> tuple:
    env_backup = dict(os.environ)
    os.environ.pop("CNNVIS_OFFLINE" if not offline else "CNNVIS_RANDOM_WEIGHTS", None)
    os.environ["CNNVIS_OFFLINE" if offline else "CNNVIS_RANDOM_WEIGHTS"] = "1"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    if plain:
        start = time.perf_counter()
        try:
            failed, device = run_plain(path)
        finally:
            os.environ.clear()
            os.environ.update(env_backup)
        return time.perf_counter() - start, _summary(failed, ""), device
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(BOOK)}})
    start = time.perf_counter()
    failed = []  # (cell index, last line of the error), every failing cell
    error = ""
    try:
        with client.setup_kernel():
            for i, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                try:
                    client.execute_cell(cell, i)
                except CellExecutionError as e:  # time the whole chapter; report the first failure
                    failed.append((i, re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()[-1][:120]))
    except Exception as e:  # a timeout or a dead kernel
        error = f"{type(e).__name__}: {str(e)[:100]}"
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    return time.perf_counter() - start, _summary(failed, error), "-"


def _summary(failed: list, error: str) -> str:
    """The first failure, and the cells of any others: a later cell that fails only because an
    earlier one did is still listed, so that no second failure hides behind the first."""
    if failed and not error:
        error = failed[0][1] + (f" (also cells {', '.join(str(i) for i, _ in failed[1:])})" if failed[1:] else "")
    return error


def run_isolated(path: Path, args) -> tuple:
    """One chapter in a child process of its own, with a hard limit: a fresh client and kernel per
    chapter, so that one chapter that hangs or kills its kernel cannot stop the whole measurement
    (the lost replies that once stalled cells are handled by ``kernel_wakeup``)."""
    cmd = [sys.executable, __file__, path.name[:2], "--one", "--threads", str(args.threads),
           "--timeout", str(args.timeout)] + (["--offline"] if args.offline else []) + (["--plain"] if args.plain else [])
    limit = 4 * GOAL_S
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return float(limit), f"stopped after {limit} s", "-"
    last = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if not last:
        return float("nan"), f"no result (exit {done.returncode}): {done.stderr.strip()[-100:]}", "-"
    _, seconds, device, *error = last[-1].split(" ", 3)
    error = (error[0] if error else "").strip()
    if args.plain and error:
        sys.stderr.write(f"--- {path.name}\n{done.stderr[-4000:]}\n")   # the tracebacks
    return float(seconds), error, device


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("chapters", nargs="*", help="chapter numbers (default: all)")
    p.add_argument("--offline", action="store_true", help="the offline world instead of random weights")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=int, default=900, help="per cell, seconds")
    p.add_argument("--readme", action="store_true")
    p.add_argument("--plain", action="store_true", help="plain Python processes instead of Jupyter kernels")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.plain and args.readme:
        p.error("--plain times are not the book's (no kernel): no --readme with --plain")
    paths = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
    if args.chapters:
        paths = [q for q in paths if q.name[:2] in {c.zfill(2) for c in args.chapters}]
    rows = []
    if args.one:   # the child process: one chapter, one kernel, result as the last line
        seconds, error, device = run(paths[0], args.offline, args.threads, args.timeout, args.plain)
        print(f"RESULT {seconds:.3f} {device} {error}")
        return ""
    failures = 0
    for path in paths:
        seconds, error, device = run_isolated(path, args)
        failures += bool(error)
        mark = "" if seconds <= GOAL_S else " !"
        where = f" on {device}" if args.plain else ""
        rows.append(f"| {path.stem} | {seconds:.0f}{mark} | {error or 'ok'}{where} |")
        print(rows[-1], flush=True)
    world = "offline world (ShapesNet)" if args.offline else "real architectures, random weights"
    text = (f"Chapter execution times, {world}, {args.threads} CPU threads, measured "
            f"{datetime.date.today().isoformat()} (goal: under {GOAL_S} s each; `!` marks a miss).\n\n"
            "| chapter | seconds | status |\n|---|---|---|\n" + "\n".join(rows) + "\n")
    print(text)
    if args.readme:
        readme = ROOT / "README.md"
        s = readme.read_text()
        start, end = "<!-- chapters-time:start -->", "<!-- chapters-time:end -->"
        s = re.sub(re.escape(start) + ".*?" + re.escape(end), start + "\n" + text + end, s, flags=re.S)
        readme.write_text(s)
    if args.plain and failures:      # tests/gpu.sh: every chapter must run
        raise SystemExit(1)
    return text


if __name__ == "__main__":
    sys.exit(main() and 0)
