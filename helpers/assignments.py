"""Student versions of the chapters, for teaching with the book.

Every chapter has at least one assignment cell: the core of its technique written between the
lines ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (nbgrader's convention), and right after it a
check cell that compares the result with ``helpers`` and with a property from the paper.

``python -m helpers.assignments build OUT`` writes the student version of every chapter into the
folder ``OUT``: each solution region replaced by ``raise NotImplementedError()`` (indented like the
solution), the checks kept, all outputs cleared, and a note at the top. Put ``OUT`` inside the
repository (e.g. ``student/``, which git ignores) so that the setup cell finds ``helpers``; in
Colab the setup cell clones the repository as usual.

Explained in the README ("Teach with it") and in chapter 00's assignment.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parent.parent / "book"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = "raise NotImplementedError()"
NOTE = ("**Student version.** Write your code where a cell says `raise NotImplementedError()`, "
        "then run the check cell that follows it: it tells you whether your implementation is right.")

_REGION = re.compile(r"^([ \t]*)### BEGIN SOLUTION[^\n]*\n(.*?)^[ \t]*### END SOLUTION[^\n]*(\n|$)",
                     re.MULTILINE | re.DOTALL)


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


def student_notebook(nb: dict) -> dict:
    """A student version of a notebook (a dict as read by ``json``): solutions out, outputs cleared."""
    nb = json.loads(json.dumps(nb))
    found = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = _source(cell)
        if BEGIN in src:
            found += 1
            cell["source"] = strip_solutions(src)
            # the book folds its solutions (tag hide-input); the cell a student fills in is never folded
            tags = [t for t in cell.get("metadata", {}).get("tags", []) if t != "hide-input"]
            if "tags" in cell.get("metadata", {}):
                if tags:
                    cell["metadata"]["tags"] = tags
                else:
                    del cell["metadata"]["tags"]
        cell["outputs"] = []
        cell["execution_count"] = None
    if not found:
        raise ValueError("the notebook has no assignment cell (### BEGIN SOLUTION ... ### END SOLUTION)")
    nb["cells"].insert(1, {"cell_type": "markdown", "metadata": {}, "source": NOTE,
                           **({"id": "student-note"} if "id" in nb["cells"][0] else {})})
    return nb


def chapters(book: Path = BOOK) -> list:
    """The chapter notebooks that carry an assignment, in order."""
    return [p for p in sorted(Path(book).glob("[0-9][0-9]_*.ipynb")) if BEGIN in p.read_text()]


def build(out, book: Path = BOOK, only=None) -> list:
    """Write the student version of every chapter (or of the chapters numbered in ``only``) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in chapters(book):
        if only and path.name[:2] not in {str(o).zfill(2) for o in only}:
            continue
        nb = student_notebook(json.loads(path.read_text()))
        target = out / path.name
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        written.append(target)
    return written


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.assignments",
                                     description="Write student versions of the chapters.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the student notebooks into OUT")
    b.add_argument("out", help="output folder (inside the repository, e.g. student/)")
    b.add_argument("--chapters", nargs="*", help="chapter numbers, e.g. 02 11 (default: all)")
    args = parser.parse_args(argv)
    written = build(args.out, only=args.chapters)
    for p in written:
        print(p)
    print(f"{len(written)} student notebooks written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
