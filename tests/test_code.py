"""The Python of helpers/, tests/ and every chapter's code cells: no unused imports or variables, no
undefined names, no shadowed definitions (pyflakes). A reader copies the chapters' code; an import that
nothing uses, or a name a later cell no longer defines, misleads them."""
import json
import re
from pathlib import Path

import pytest

# in requirements.txt; an environment made before it was added skips these tests instead of failing to collect
pyflakes = pytest.importorskip("pyflakes", reason="pip install -r requirements.txt (pyflakes)")
from pyflakes.api import check  # noqa: E402
from pyflakes.reporter import Reporter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted(p for folder in ("helpers", "tests") for p in (ROOT / folder).rglob("*.py"))
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def chapter_code(path: Path) -> str:
    """The chapter's code cells as one module, IPython's magics and shell lines left out."""
    cells = json.loads(path.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    return "\n\n".join("\n".join(line for line in cell.splitlines() if not re.match(r"\s*(%|!(?!=))", line))
                       for cell in code) + "\n"


class _Collect:
    def __init__(self):
        self.lines = []

    def write(self, text):
        self.lines.append(text)


def problems(code: str, name: str) -> str:
    out, err = _Collect(), _Collect()
    check(code, name, Reporter(out, err))
    return "".join(out.lines + err.lines)


@pytest.mark.parametrize("path", FILES + CHAPTERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_pyflakes_finds_nothing(path):
    code = chapter_code(path) if path.suffix == ".ipynb" else path.read_text()
    found = problems(code, str(path.relative_to(ROOT)))
    assert not found, found


def test_the_check_reports_what_it_should():
    assert "imported but unused" in problems("import os\n", "x.py")
    assert "undefined name" in problems("print(y)\n", "x.py")
    assert problems("import os\nprint(os.sep)\n", "x.py") == ""
    assert "import helpers" in chapter_code(CHAPTERS[0])           # the setup cell is in it
