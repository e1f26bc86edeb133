"""Student versions of the chapters, for teaching with the book.

Every chapter has at least one assignment cell: the core of its technique written between the
lines ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (nbgrader's convention), and right after it a
check cell that compares the result with ``helpers`` and with a property from the paper.

``python -m helpers.assignments build OUT`` writes the student version of every chapter into the
folder ``OUT``: each solution region replaced by ``raise NotImplementedError()`` (indented like the
solution), the checks kept, all outputs cleared, and a note at the top. Put ``OUT`` inside the
repository (e.g. ``student/``, which git ignores) so that the setup cell finds ``helpers``; in
Colab the setup cell clones the repository as usual.

``python -m helpers.assignments grade FILE ...`` grades students' notebooks with the chapters' own
checks: only the students' assignment cells are taken, put into the chapter, and run with it.

Explained in the README ("Teach with it") and in chapter 00's assignment.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

BOOK = Path(__file__).resolve().parent.parent / "book"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = "raise NotImplementedError()"
NOTE = ("**Student version.** Write your code where a cell says `raise NotImplementedError()`, "
        "then run the check cell that follows it: it tells you whether your implementation is right. "
        "Only those cells are graded: put what your code needs (imports, helper functions) inside them. "
        "Calling the `helpers` function that the check compares with is not an implementation: the "
        "grader reports it. Keep the chapter number in the file name (`08_...`).")

#: Per chapter, what computes the assignment's answer for you: the helper (or torch function) that the
#: check compares with. A submission that calls one passes the check without implementing anything;
#: :func:`grade` reports it ("uses the reference"). Written as the last two parts of the dotted name.
REFERENCES = {
    "00": ("images.to_tensor",),
    "01": ("features.feature_maps",),
    "02": ("gradients.vanilla", "gradients._input_gradient"),
    "03": ("gradients.saliency",),
    "04": ("gradients.guided", "hooks.relu_rule"),
    "05": ("deconvnet.step_down", "deconvnet.reconstruct", "deconvnet.unpool"),
    "06": ("gradients.grad_x_image", "gradients.make_baseline"),
    "07": ("gradients.integrated_gradients",),
    "08": ("gradients.smoothgrad",),
    "09": ("lrp.linear_epsilon", "lrp.propagate", "lrp.lrp", "gradients.lrp"),
    "10": ("cam.cam_map", "cam.cam"),
    "11": ("cam.grad_cam_map", "cam.grad_cam"),
    "12": ("cam.guided_grad_cam",),
    "13": ("cam.grad_cam_pp_map", "cam.grad_cam_pp"),
    "14": ("cam.score_cam_weights", "cam.score_cam", "cam._mask_logits"),
    "15": ("cam.layer_cam_map", "cam.layer_cam"),
    "16": ("features.FilterOptimizer",),
    "17": ("features.dream_step", "features.deep_dream"),
    "18": ("features.total_variation",),
    "19": ("synthesis.class_image",),
    "20": ("synthesis.fooling_image",),
    "21": ("synthesis.pgd",),
    "22": ("segmentation.grabcut_seeds",),
    "23": ("F.max_unpool2d", "functional.max_unpool2d", "nn.MaxUnpool2d", "net.unpool"),
    "24": ("metrics.pointing_game",),
}

# the assignment's note about the book's folded solution, and what a student's copy says instead
_BOOK_NOTE = re.compile(r"In the rendered book the solution below is folded.*?the implementation is right\.", re.DOTALL)
STUDENT_NOTE = ("Replace `raise NotImplementedError()` below with your implementation, then run the check "
                "after it: it tells\nwhether the implementation is right. Only the cell below is graded: "
                "put what it needs (imports, helper functions) inside it.")

_REGION = re.compile(r"^([ \t]*)### BEGIN SOLUTION[^\n]*\n(.*?)^[ \t]*### END SOLUTION[^\n]*(\n|$)",
                     re.MULTILINE | re.DOTALL)


def check_no_weight_gradients(model, wrt: str = "x") -> None:
    """For the check cells of steps that take the gradient with respect to the input ``wrt``
    (chapters 19, 20, 21): a step that called ``loss.backward()`` also left gradients on the model's
    weights, which the later cells do not expect. They are cleared either way (the rest of the
    chapter runs as it should), and ``AssertionError`` names the first weight if there were any."""
    leaked = [name for name, w in model.named_parameters() if w.grad is not None]
    for w in model.parameters():
        w.grad = None
    if leaked:
        raise AssertionError(f"your step left gradients on the model's weights ({leaked[0]}, ...), as "
                             f"loss.backward() does: take the gradient with respect to {wrt} only, "
                             f"with torch.autograd.grad")


def _source(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def strip_solutions(source: str) -> str:
    """Replace every solution region of a cell's source by ``raise NotImplementedError()``."""
    if source.count(BEGIN) != source.count(END):
        raise ValueError("unbalanced solution markers: every '### BEGIN SOLUTION' needs an '### END SOLUTION'")
    return _REGION.sub(lambda m: f"{m.group(1)}{STUB}{m.group(3)}", source)


def solutions(source: str) -> list:
    """The solution regions of a cell (markers included), in order."""
    return [m.group(0) for m in _REGION.finditer(source)]


def put_back(student: str, original: str) -> str:
    """Put the solution regions of ``original`` back into a student cell (the inverse of strip)."""
    regions = iter(solutions(original))
    return re.sub(r"^[ \t]*raise NotImplementedError\(\)(\n|$)", lambda m: next(regions), student,
                  flags=re.MULTILINE)


_SETUP_REF = re.compile(r'^(REPO, REF = "[^"]+", )"[^"]*"$', re.MULTILINE)


def student_notebook(nb: dict, ref: str | None = None) -> dict:
    """A student version of a notebook (a dict as read by ``json``): solutions out, outputs cleared.

    ``ref``: the git branch or tag that the setup cell clones in Colab (default: the book's,
    ``main``), so a course can hand out notebooks that keep working with the code they were made
    for, whatever later commits change."""
    nb = json.loads(json.dumps(nb))
    found = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = _source(cell)
        if ref is not None and _SETUP_REF.search(src):
            if not re.fullmatch(r"[\w./-]+", ref):
                raise ValueError(f"ref must be a git branch or tag name, got {ref!r}")
            src = _SETUP_REF.sub(lambda m: f'{m.group(1)}"{ref}"', src)
            cell["source"] = src
        if BEGIN in src:
            found += 1
            cell["source"] = strip_solutions(src)
            # the book folds its solutions (tag hide-input); the cell a student fills in is never folded
            meta = cell.get("metadata", {})
            meta["tags"] = [t for t in meta.get("tags", []) if t != "hide-input"]
            if not meta["tags"]:
                del meta["tags"]
        cell["outputs"] = []
        cell["execution_count"] = None
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            cell["source"] = _BOOK_NOTE.sub(STUDENT_NOTE, _source(cell))
    if not found:
        raise ValueError("the notebook has no assignment cell (### BEGIN SOLUTION ... ### END SOLUTION)")
    nb["cells"].insert(1, {"cell_type": "markdown", "metadata": {}, "source": NOTE,
                           **({"id": "student-note"} if "id" in nb["cells"][0] else {})})
    return nb


def references_used(source: str, chapter: str) -> list:
    """The names of ``REFERENCES[chapter]`` that ``source`` (a cell's code) refers to, in order: as an
    attribute (``lrp.linear_epsilon``, ``torch.nn.functional.max_unpool2d``) or imported by name
    (``from helpers.lrp import linear_epsilon``). Code that does not parse refers to nothing."""
    wanted = REFERENCES.get(chapter, ())
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    seen = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Attribute):
            parts, v = [node.attr], node.value
            while isinstance(v, ast.Attribute):
                parts.append(v.attr)
                v = v.value
            if isinstance(v, ast.Name):
                parts.append(v.id)
            if len(parts) >= 2:
                names.append(f"{parts[1]}.{parts[0]}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [f"{node.module.rsplit('.', 1)[-1]}.{a.name}" for a in node.names]
        seen += [n for n in names if n in wanted and n not in seen]
    return seen


def chapters(book: Path = BOOK) -> list:
    """The chapter notebooks that carry an assignment, in order."""
    return [p for p in sorted(Path(book).glob("[0-9][0-9]_*.ipynb")) if BEGIN in p.read_text()]


def build(out, book: Path = BOOK, only=None, ref: str | None = None) -> list:
    """Write the student version of every chapter (or of the chapters numbered in ``only``) into ``out``;
    ``ref``: the branch or tag their setup cell clones in Colab (see :func:`student_notebook`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in chapters(book):
        if only and path.name[:2] not in {str(o).zfill(2) for o in only}:
            continue
        nb = student_notebook(json.loads(path.read_text()), ref)
        target = out / path.name
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        written.append(target)
    return written


@dataclass
class Grade:
    """The result of :func:`grade` for one submitted notebook."""

    path: str
    chapter: str
    passed: bool
    status: str   # "passed", "not implemented", "check failed", "uses the reference", "error", "not matched", "unreadable"
    message: str = ""

    def __str__(self) -> str:
        return f"{self.path} ({self.chapter}): {self.status}" + (f": {self.message}" if self.message else "")


def _answers(submission: dict, original: dict) -> dict:
    """For each solution cell of the chapter (by index), the source of the student's version of it.

    A cell is matched by its id (kept by ``build``, Jupyter and Colab), else by the code that the
    student version keeps before the solution region (the function's signature and docstring),
    else as the code cell just before the chapter's check cell, found unchanged in the submission
    (a student who rewrote the signature in a notebook that lost its ids).
    """
    by_id = {c.get("id"): _source(c) for c in submission["cells"] if c.get("id") and c["cell_type"] == "code"}
    subs = [_source(c) for c in submission["cells"] if c["cell_type"] == "code"]
    code = [i for i, c in enumerate(original["cells"]) if c["cell_type"] == "code"]
    out = {}
    for i, cell in enumerate(original["cells"]):
        src = _source(cell)
        if cell["cell_type"] != "code" or BEGIN not in src:
            continue
        if cell.get("id") in by_id:
            out[i] = by_id[cell["id"]]
            continue
        head = src[:src.index(BEGIN)].rsplit("\n", 1)[0].strip()
        found = [t for t in subs if head and t.strip().startswith(head)]
        check = next((_source(original["cells"][j]).strip() for j in code if j > i), None)
        before = [subs[k - 1] for k in range(1, len(subs)) if check and subs[k].strip() == check]
        if not (found or before):
            raise LookupError(f"no cell of the submission matches the assignment cell that starts with "
                              f"{head.splitlines()[0] if head else src[:60]!r}, and its check cell is "
                              f"not found unchanged")
        out[i] = (found or before)[-1]
    return out


def _chapter_of(path: Path, submission, book: Path, number=None) -> Path:
    """The chapter a submission answers: ``number`` if given; else a chapter's file stem anywhere in
    the file name (``Copy of 08_smoothgrad.ipynb``, ``alice_08_smoothgrad.ipynb``); else the ids of
    its cells (``build`` keeps the chapter's, so a renamed file is still found); else a chapter
    number ``NN_`` in the name. ``ValueError`` if none."""
    every = chapters(book)
    if number is not None:
        found = [p for p in every if p.name[:2] == str(number).zfill(2)]
        if not found:
            raise ValueError(f"no chapter numbered {number!r}")
        return found[0]
    named = [p for p in every if p.stem in path.name]
    if named:
        return max(named, key=lambda p: len(p.stem))
    ids = {c.get("id") for c in (submission or {}).get("cells", []) if c.get("id")}
    if ids:
        for p in every:
            solutions = {c.get("id") for c in json.loads(p.read_text())["cells"]
                         if c.get("cell_type") == "code" and BEGIN in _source(c)}
            if solutions & ids:
                return p
    numbered = [p for m in re.finditer(r"(?<!\d)(\d\d)_", path.name) for p in every if p.name[:2] == m.group(1)]
    if numbered:
        return numbered[0]
    raise ValueError(f"{path.name}: no chapter found: keep the chapter's number in the file name, as the "
                     f"student versions have it (e.g. 08_smoothgrad.ipynb), or give it (--chapter 08)")


def grade(path, book: Path = BOOK, timeout: int = 600, offline: bool = True, chapter=None) -> Grade:
    """Grade a student's notebook with the chapter's own checks.

    The student's assignment cells are put into the chapter in place of its solutions, and the
    chapter runs from the top to the check cell after the last assignment, in a fresh kernel
    (``offline``: in the offline world, as the tests run, ``CNNVIS_OFFLINE=1``). Only the
    assignment cells come from the submission, so an edited check grades nothing. The chapter is
    ``chapter`` (its number) if given, else found from the file name or the notebook's cell ids
    (:func:`_chapter_of`). A submission whose check passes but whose assignment cell calls the
    helper that the check compares with (``REFERENCES``) is "uses the reference", not "passed".
    """
    import os

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    path = Path(path)
    try:
        submission, unreadable = json.loads(path.read_text()), None
    except (OSError, ValueError) as e:   # missing, not text, not JSON: grade the others
        submission, unreadable = None, f"{type(e).__name__}: {str(e)[:200]}"
    chapter = _chapter_of(path, submission, book, chapter)
    if unreadable:
        return Grade(str(path), chapter.stem, False, "unreadable", unreadable)
    original = json.loads(chapter.read_text())
    try:
        answers = _answers(submission, original)
    except (LookupError, TypeError) as e:
        return Grade(str(path), chapter.stem, False, "not matched", str(e))
    nb = nbformat.reads(json.dumps(original), as_version=4)
    for i, src in answers.items():
        nb.cells[i].source = src
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    check = next((i for i in code if i > max(answers)), max(answers))
    nb.cells = nb.cells[:check + 1]
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs = []
    env = {**os.environ, **({"CNNVIS_OFFLINE": "1"} if offline else {})}
    _install_kernel_wakeup()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(book)}}).execute(env=env)
    except CellExecutionError as e:
        failed = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                       and any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
        err = next(o for o in nb.cells[failed].outputs if o.get("output_type") == "error") if failed is not None else {}
        name, value = err.get("ename", type(e).__name__), err.get("evalue", "")
        if name == "NotImplementedError" and (failed in answers or failed == check):   # a stub left in
            return Grade(str(path), chapter.stem, False, "not implemented")
        where = ("the check" if failed == check else "the assignment cell" if failed in answers
                 else f"cell {failed} of the chapter, before the assignment")
        status = "check failed" if name == "AssertionError" else "error"
        detail = f"{name} in {where}: {value}".strip()
        if name == "NameError" and (failed in answers or failed == check):
            detail += (" (only the assignment cells are graded: a name they use must be defined or imported "
                       "inside them, not in another cell of the submission)")
        return Grade(str(path), chapter.stem, False, status, detail)
    except (CellTimeoutError, DeadKernelError) as e:   # a student's endless loop or crash: grade the others
        what = f"a cell ran past {timeout} s" if isinstance(e, CellTimeoutError) else "the kernel died"
        return Grade(str(path), chapter.stem, False, "error", what)
    used = [name for src in answers.values() for name in references_used(src, chapter.name[:2])]
    if used:
        return Grade(str(path), chapter.stem, False, "uses the reference",
                     f"the check passed, but the assignment cell calls {', '.join(used)}, which the check "
                     f"compares with: that is the book's implementation, not the student's")
    return Grade(str(path), chapter.stem, True, "passed")


def _install_kernel_wakeup() -> None:
    """The book's fix for kernels whose reply nbclient misses until a cell's timeout (book/_ext)."""
    ext = Path(__file__).resolve().parent.parent / "book" / "_ext"
    if (ext / "kernel_wakeup.py").exists():
        if str(ext) not in sys.path:
            sys.path.insert(0, str(ext))
        import kernel_wakeup

        kernel_wakeup.install()


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.assignments",
                                     description="Write student versions of the chapters, and grade them.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the student notebooks into OUT")
    b.add_argument("out", help="output folder (inside the repository, e.g. student/)")
    b.add_argument("--chapters", nargs="*", help="chapter numbers, e.g. 02 11 (default: all)")
    b.add_argument("--ref", help="the git tag or branch that the notebooks clone in Colab (default: main); "
                                 "tag the commit you build from and give the tag, so later changes cannot break them")
    g = sub.add_parser("grade", help="run the chapter's checks on students' notebooks")
    g.add_argument("notebooks", nargs="+", help="the students' notebooks (file names as written by build)")
    g.add_argument("--online", action="store_true", help="grade in the ImageNet world (default: offline)")
    g.add_argument("--timeout", type=int, default=600, help="seconds per cell (600)")
    g.add_argument("--chapter", help="the chapter number of every notebook given (default: from each "
                                     "file's name or cells)")
    args = parser.parse_args(argv)
    if args.command == "grade":
        grades = []
        for p in args.notebooks:   # a file that names no chapter is reported, and the others graded
            try:
                grades.append(grade(p, timeout=args.timeout, offline=not args.online, chapter=args.chapter))
            except ValueError as e:
                grades.append(Grade(str(p), "-", False, "not matched", str(e)))
        for r in grades:
            print(r)
        print(f"{sum(r.passed for r in grades)} of {len(grades)} passed")
        return 0 if all(r.passed for r in grades) else 1
    written = build(args.out, only=args.chapters, ref=args.ref)
    for p in written:
        print(p)
    print(f"{len(written)} student notebooks written to {args.out}")
    root = BOOK.parent
    if written and root not in Path(args.out).resolve().parents:
        print(f"note: {args.out} is outside the repository; the notebooks' setup cell finds helpers/ only "
              f"in a clone of it (students put them in the clone's student/ folder) or in Colab")
    if not written:
        print(f"no chapter matches {' '.join(args.chapters or [])}: chapters are 00 to "
              f"{chapters()[-1].name[:2]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main())
