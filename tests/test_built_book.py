"""Checks of the rendered book, as a reader sees it (run after `jupyter-book build .`):

    pytest tests/test_built_book.py --built-book _build/html

Skipped in the default test run (no built book given). Fails on: a chapter page without a
figure, an error or traceback in an output, an unresolved citation or reference, raw MyST
directive text on a page, a chapter missing from the build, no launch or repository buttons,
an assignment's solution shown unfolded.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def html(request):
    built = request.config.getoption("--built-book")
    if not built:
        pytest.skip("no built book given (--built-book _build/html)")
    path = Path(built)
    assert (path / "index.html").exists(), f"{path}/index.html is missing: build the book first"
    return path


def page(html, stem):
    p = html / "book" / f"{stem}.html"
    assert p.exists(), f"{stem} was not built"
    from bs4 import BeautifulSoup

    return BeautifulSoup(p.read_text(encoding="utf-8"), "html.parser")


@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_page(html, stem):
    soup = page(html, stem)
    main = soup.find("main") or soup
    text = main.get_text(" ")
    # figures: executed outputs with images
    assert main.find_all("img"), f"{stem}: no figure on the page"
    # no errors or tracebacks in outputs
    assert "Traceback (most recent call last)" not in text, f"{stem}: a traceback is shown"
    assert not main.select(".output.traceback, .output.error, div.cell_output .ansi-red-intense-fg"), stem
    # citations resolved (sphinxcontrib-bibtex leaves the key in bold-question form when missing)
    assert not re.search(r"\{cite(:[pt])?\}`", text), f"{stem}: raw citation role"
    assert not main.select("span.problematic, .problematic"), f"{stem}: unresolved reference"
    # raw MyST directives would show their fences
    assert not re.search(r"```\{\w+\}|:::\{\w+\}|\{(note|warning|math|figure)\}", text), f"{stem}: raw directive text"
    # the assignment's solution is folded (tag hide-input): a reader can try before looking
    solutions = [c for c in main.select("div.cell") if "BEGIN SOLUTION" in c.get_text()]
    assert solutions, f"{stem}: no assignment solution on the page"
    for cell in solutions:
        assert "tag_hide-input" in cell.get("class", []), f"{stem}: the solution is not folded"
        assert cell.find("details") or cell.select(".toggle"), f"{stem}: the folded solution has no toggle"
    # launch (Colab/Binder) and repository buttons on every notebook page
    links = " ".join(a.get("href", "") for a in soup.find_all("a"))
    assert "colab.research.google.com" in links, f"{stem}: no Colab launch button"
    assert "mybinder.org" in links, f"{stem}: no Binder launch button"
    assert "github.com" in links, f"{stem}: no repository button"


def test_bibliography_page_lists_the_cited_papers(html):
    text = " ".join(page(html, "bibliography").get_text(" ").split()).lower()
    # the bibliography style may sentence-case the titles, so compare in lower case
    for words in ("Grad-CAM", "Sanity checks for saliency maps", "Deep inside convolutional networks",
                  "Learning deconvolution network for semantic segmentation"):
        assert words.lower() in text, f"bibliography lacks {words!r}"


def test_every_chapter_is_reachable_from_the_index(html):
    index = (html / "book" / "intro.html").read_text(encoding="utf-8")
    for stem in CHAPTERS:
        assert f"{stem}.html" in index, f"{stem} is not linked from the intro"
