"""Student versions: solutions stripped, checks kept; each student version fails its check as given,
and putting the solution back gives the chapter, whose checks nbval runs and passes."""
import functools
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from helpers import assignments

BOOK = Path(assignments.BOOK)
CHAPTERS = assignments.chapters()


def test_strip_and_put_back_are_inverse():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION\n\nz = 1\n"
    student = assignments.strip_solutions(src)
    assert student == "def f(x):\n    raise NotImplementedError()\n\nz = 1\n"
    assert assignments.put_back(student, src) == src
    with pytest.raises(ValueError, match="unbalanced"):
        assignments.strip_solutions("### BEGIN SOLUTION\nx = 1\n")


def test_every_chapter_has_an_assignment():
    numbered = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
    assert numbered and CHAPTERS == numbered


def test_build_writes_student_versions(tmp_path):
    written = assignments.build(tmp_path)
    assert [p.name for p in written] == [p.name for p in CHAPTERS]
    for path in written:
        student = json.loads(path.read_text())
        original = json.loads((BOOK / path.name).read_text())
        text = json.dumps(student)
        assert assignments.BEGIN not in text and "NotImplementedError" in text
        assert assignments.NOTE in json.dumps(student["cells"][1]["source"])
        s_code = [c for c in student["cells"] if c["cell_type"] == "code"]
        o_code = [c for c in original["cells"] if c["cell_type"] == "code"]
        assert len(s_code) == len(o_code)
        for s, o in zip(s_code, o_code):
            assert not s["outputs"] and s["execution_count"] is None
            # the checks are kept unchanged; the solution goes back exactly where it was
            assert assignments.put_back(assignments._source(s), assignments._source(o)) == assignments._source(o)
            if assignments.BEGIN in assignments._source(o):   # folded in the book, open in the student's copy
                assert "hide-input" in o["metadata"].get("tags", [])
                assert "hide-input" not in s["metadata"].get("tags", [])
        # the assignment's note speaks of the folded solution in the book, of the stub in the copy
        o_md = [assignments._source(c) for c in original["cells"] if c["cell_type"] == "markdown"]
        s_md = [assignments._source(c) for c in student["cells"] if c["cell_type"] == "markdown"]
        assert sum("solution below is folded" in m for m in o_md) == 1
        assert not any("solution below is folded" in m for m in s_md)
        assert sum(assignments.STUDENT_NOTE in m for m in s_md) == 1
        nbformat.validate(nbformat.reads(path.read_text(), as_version=4))


def test_check_no_weight_gradients_rejects_and_clears_them():
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    x = torch.rand(4, 3, requires_grad=True)
    (g,) = torch.autograd.grad(net(x).sum(), x)             # the input gradient only: accepted
    assignments.check_no_weight_gradients(net, "x")
    net(x).sum().backward()                                 # gradients on every weight too
    with pytest.raises(AssertionError, match=r"\(0\.weight, \.\.\.\).*with respect to p only"):
        assignments.check_no_weight_gradients(net, "p")
    assert all(w.grad is None for w in net.parameters())    # cleared for the rest of the chapter


def test_references_name_real_functions_and_no_solution_uses_them():
    """REFERENCES: per chapter, what computes the answer for the student (grade reports its use)."""
    import importlib

    assert sorted(assignments.REFERENCES) == [p.name[:2] for p in CHAPTERS]
    for number, names in assignments.REFERENCES.items():
        for name in names:
            module, attr = name.split(".")
            if module in ("gradients", "cam", "lrp", "features", "synthesis", "segmentation", "metrics",
                          "deconvnet", "hooks", "images"):
                assert hasattr(importlib.import_module(f"helpers.{module}"), attr), name
    for path in CHAPTERS:                   # the chapters' own solutions (and their other cells) use none
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code" and assignments.BEGIN in assignments._source(cell):
                assert assignments.references_used(assignments._source(cell), path.name[:2]) == [], path.name


def test_references_used_finds_attributes_and_imports():
    src = ("from helpers.lrp import linear_epsilon\n%matplotlib inline\n"
           "def my_linear_epsilon(a, W, b, R, epsilon):\n    return lrp.linear_epsilon(a, W, b, R, epsilon)\n")
    assert assignments.references_used(src, "09") == ["lrp.linear_epsilon"]
    assert assignments.references_used("y = torch.nn.functional.max_unpool2d(d, idx, 2)", "23") == ["functional.max_unpool2d"]
    assert assignments.references_used("y = F.max_unpool2d(d, idx, 2)", "23") == ["F.max_unpool2d"]
    assert assignments.references_used("y = F.max_pool2d(d, 2)", "23") == []
    assert assignments.references_used("def f(:", "09") == []          # does not parse: the run reports it


def test_chapter_of_a_submission():
    """From the stem anywhere in the name, else the cell ids that build keeps, else a number NN_."""
    of = assignments._chapter_of
    by_number = {p.name[:2]: p for p in CHAPTERS}
    assert of(Path("Copy of 08_smoothgrad.ipynb"), None, BOOK) == by_number["08"]
    assert of(Path("alice_1234_00_models_and_images.ipynb"), None, BOOK) == by_number["00"]
    assert of(Path("hw.ipynb"), None, BOOK, number=8) == by_number["08"]
    student = assignments.student_notebook(json.loads(by_number["13"].read_text()))
    assert of(Path("submission.ipynb"), student, BOOK) == by_number["13"]
    assert of(Path("week 3 - 11_gradcam.ipynb"), {"cells": []}, BOOK) == by_number["11"]
    with pytest.raises(ValueError, match="no chapter found"):
        of(Path("homework.ipynb"), {"cells": []}, BOOK)
    # every chapter's assignment cells have ids of their own (no two chapters share one)
    ids = [c["id"] for p in CHAPTERS for c in json.loads(p.read_text())["cells"]
           if c["cell_type"] == "code" and assignments.BEGIN in assignments._source(c)]
    assert len(ids) == len(set(ids)) and all(ids)


def test_cli(tmp_path, capsys):
    assert assignments._main(["build", str(tmp_path / "out"), "--chapters", "0"]) == 0
    assert (tmp_path / "out" / "00_models_and_images.ipynb").exists()
    assert "1 student notebooks" in capsys.readouterr().out
    assert assignments._main(["build", str(tmp_path / "none"), "--chapters", "99"]) == 2
    assert "no chapter matches 99" in capsys.readouterr().err
    # --ref: the setup cell of every student notebook clones that tag; nothing else changes
    assert assignments._main(["build", str(tmp_path / "tagged"), "--chapters", "3", "--ref", "course-2027"]) == 0
    tagged = json.loads((tmp_path / "tagged" / "03_saliency_maps.ipynb").read_text())
    plain = assignments.student_notebook(json.loads((BOOK / "03_saliency_maps.ipynb").read_text()))
    changed = [(a, b) for a, b in zip(tagged["cells"], plain["cells"]) if a != b]
    assert len(changed) == 1 and 'REPO, REF = "https://' in assignments._source(changed[0][0])
    assert assignments._source(changed[0][0]) == assignments._source(changed[0][1]).replace('", "main"\n', '", "course-2027"\n')
    with pytest.raises(ValueError, match="branch or tag"):
        assignments.student_notebook(tagged, ref="main; rm -rf /")


def c_src(cell):
    return cell.source if isinstance(cell.source, str) else "".join(cell.source)


# Typical mistakes a student makes, each written into the chapter's solution: the check that
# follows the assignment must catch every one of them (an AssertionError in the check cell),
# else the check would pass a wrong implementation.
MISTAKES = {
    "00 no scaling": ("00", "dtype=torch.float32) / 255.0", "dtype=torch.float32)",
                      "pixels not scaled to [0, 1] before normalising"),
    "01 no bias": ("01", "float(bias[k])", "0.0", "the filter's bias left out"),
    "02 softmax": ("02", "logits = model(x)", "logits = torch.softmax(model(x), 1)",
                   "gradient of the probability instead of the class score"),
    "03 no abs": ("03", "grad.abs().amax(dim=1)", "grad.amax(dim=1)", "signed maximum instead of |gradient|"),
    "04 plain": ("04", "return g * (out > 0) * (g > 0)", "return g * (out > 0)",
                 "the plain ReLU gradient instead of the guided rule"),
    "05 no relu": ("05", "return F.relu(signal)", "return signal", "the ReLU skipped on the way down"),
    "06 mean baseline": ("06", "return (x.cpu() - black) * grad", "return x.cpu() * grad",
                         "the normalised zero (the mean colour) as baseline instead of black"),
    "07 last point": ("07", "grads.mean(dim=0, keepdim=True)", "grads[-1:]",
                      "the gradient at x alone instead of the path average"),
    "08 variance": ("08", "return noise * (", "return noise ** 2 * (",
                    "the noise level used as a variance instead of a standard deviation"),
    "09 no activation": ("09", "return a * c", "return c", "relevance without the activation factor"),
    "10 mean": ("10", "A).sum(dim=0)", "A).mean(dim=0)", "the mean over channels instead of the weighted sum"),
    "11 abs": ("11", "g.mean(dim=(1, 2))", "g.abs().mean(dim=(1, 2))", "mean of |gradient| as weights"),
    "11 max": ("11", "g.mean(dim=(1, 2))", "g.amax(dim=(1, 2))",
               "the spatial maximum of the gradient as weights (equal to the mean where the gradient is constant)"),
    "12 unscaled": ("12", "G * (up / up.max())", "G * up", "the Grad-CAM map not scaled to [0, 1]"),
    "13 grad-cam weights": ("13", "denominator = 2 * g2 +", "denominator = g2 +",
                            "a wrong factor in the Grad-CAM++ denominator"),
    "14 no baseline": ("14", "return p - base", "return p", "scores without the baseline subtracted"),
    "15 signed": ("15", "F.relu(g) * A", "g * A", "signed gradients instead of their positive part"),
    "16 no 1/f": ("16", "spectrum * scale[None, None, :, :, None]", "spectrum", "the spectrum not scaled by 1/f"),
    "17 not rolled back": ("17", "g = torch.roll(g, (-shift[0], -shift[1]), dims=(2, 3))", "g = g",
                           "the gradient of the shifted image not shifted back"),
    "18 beta": ("18", ".pow(beta / 2)", ".pow(beta)", "beta applied to the squared gradient norm"),
    "19 penalty sign": ("19", "- weight * 2 * x", "+ weight * 2 * x", "the L2 penalty's gradient with the wrong sign"),
    "20 score": ("20", "torch.log_softmax(model(synthesis.from_pixels(model, p)), 1)[0, c]",
                 "model(synthesis.from_pixels(model, p))[0, c]", "the class score instead of its log softmax"),
    "21 wrong way": ("21", "p = p - step_size * g.sign()", "p = p + step_size * g.sign()",
                     "steps that raise the loss of the target class"),
    "22 no quantiles": ("22", "hi, lo = np.quantile(M, foreground), np.quantile(M, background)",
                        "hi, lo = foreground, background", "the fractions used as map values, not quantiles"),
    "23 whole map": ("23", "out.scatter_(2, idx.flatten(2), d.flatten(2))",
                     "out.view(N, -1).scatter_(1, idx.flatten(1), d.flatten(1))",
                     "switches taken as positions in the whole feature map, not in each channel"),
    "24 tolerance": ("24", "<= tolerance ** 2", "<= tolerance", "the tolerance compared with a squared distance"),
}


# Correct answers written differently from the chapter's solution: the check must accept them (a
# float64 or numpy result is right; the checks compare values, not dtypes).
ALTERNATIVES = {
    "01 numpy": ("01", "    return out\n", "    return out.numpy()\n", "a numpy array"),
    "02 numpy": ("02", "    return grad.cpu()\n", "    return grad.cpu().numpy()\n", "a numpy array"),
    "06 numpy black": ("06", "    mean = torch.tensor(info.mean).view(1, 3, 1, 1)\n    std = torch.tensor(info.std).view(1, 3, 1, 1)\n"
                       "    black = (0.0 - mean) / std\n",
                       "    black = torch.from_numpy(-np.array(info.mean) / np.array(info.std)).view(1, 3, 1, 1)\n",
                       "the black baseline computed with numpy (float64 attributions)"),
    "09 float64": ("09", "return a * c", "return (a * c).double()", "a float64 tensor"),
    "10 float64": ("10", "A).sum(dim=0)", "A).double().sum(dim=0)", "a float64 tensor"),
    "13 float64": ("13", "g2, g3 = g ** 2, g ** 3", "A, g = A.double(), g.double()\n    g2, g3 = g ** 2, g ** 3",
                   "alpha computed in float64"),
    "15 float64": ("15", "return F.relu((F.relu(g) * A).sum(dim=0))", "return F.relu((F.relu(g) * A).sum(dim=0)).double()",
                   "a float64 tensor"),
    "18 float64": ("18", "return (dx ** 2 + dy ** 2)", "return (dx.double() ** 2 + dy.double() ** 2)", "a float64 tensor"),
}


def _mistake_cell(case):
    """(chapter, position of the solution cell among the code cells, its source with the mistake)."""
    number, old, new, _what = {**MISTAKES, **ALTERNATIVES}[case]
    (chapter,) = [p for p in CHAPTERS if p.name.startswith(number)]
    nb = nbformat.read(chapter, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    (k,) = [k for k, c in enumerate(code) if any(old in r for r in assignments.solutions(c_src(c)))]
    src = c_src(code[k])
    assert src.count(old) == 1, f"{old!r} must occur once in the solution cell"
    return chapter, k, src.replace(old, new)


def _execute(client, cell, index):
    """Run one cell in the client's kernel: the error it raised (as text), or None."""
    try:
        client.execute_cell(cell, index)
    except CellExecutionError as e:
        return str(e)
    return None


@functools.lru_cache(maxsize=None)
def _chapter_run(chapter: Path) -> dict:
    """The student version and the typical mistakes of one chapter, in ONE kernel: the cells before
    the first assignment (loading models and images, most of the time) run once, not once per test.

    In order: the chapter's code cells before its first assignment; the student's cell there
    (``raise NotImplementedError()``) and the check after it; then for each typical mistake, the
    chapter's own cells up to the mistake's solution cell, that cell with the mistake, its check,
    and, as a control, the chapter's own solution and the same check again, which must pass in
    that same kernel: so the check's failure came from the mistake, not from what ran before it.
    The correct alternative answers (``ALTERNATIVES``) run the same way, in the same order.
    Positions are among the code cells; student and chapter have the same code cells.
    """
    nb = nbformat.read(chapter, as_version=4)
    student = nbformat.reads(json.dumps(assignments.student_notebook(json.loads(chapter.read_text()))),
                             as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    s_code = [c for c in student.cells if c.cell_type == "code"]
    assert len(code) == len(s_code)
    first = next(k for k, c in enumerate(s_code) if assignments.STUB in c_src(c))
    cases = sorted((_mistake_cell(case)[1], case) for case, (number, *_) in {**MISTAKES, **ALTERNATIVES}.items()
                   if number == chapter.name[:2])
    run = {"first": first, "prefix": None, "student": None, "mistakes": {}}
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(BOOK)}})
    with client.setup_kernel():
        for k in range(first):
            error = _execute(client, code[k], k)
            if error:
                run["prefix"] = (k, error)
                return run
        error = _execute(client, s_code[first], first)
        run["student"] = (first, error) if error else (first + 1, _execute(client, s_code[first + 1], first + 1))
        done = first                        # the chapter's own cells have run up to here (exclusive)
        for k, case in cases:
            for j in range(done, k):            # the chapter's own cells up to the mistake's cell
                error = _execute(client, code[j], j)
                if error:                       # this case and any later one cannot run
                    run["mistakes"][case] = {"setup": (j, error)}
                    return run
            wrong = nbformat.from_dict(json.loads(json.dumps(code[k])))
            wrong.source = _mistake_cell(case)[2]
            error = _execute(client, wrong, k)
            result = {"mistake": (k, error) if error else (k + 1, _execute(client, code[k + 1], k + 1))}
            result["control"] = _execute(client, code[k], k) or _execute(client, code[k + 1], k + 1)
            run["mistakes"][case] = result
            done = k + 2
    return run


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name[:2])
def test_student_version_fails_its_check(chapter):
    """Run the student notebook up to the first check after an assignment: it must fail there, not before."""
    run = _chapter_run(chapter)
    assert run["prefix"] is None, f"code cell {run['prefix'][0]} failed, before the assignment: {run['prefix'][1][-300:]}"
    at, error = run["student"]
    assert error, "the student version's check passed with the solution left out"
    assert "NotImplementedError" in error or "AssertionError" in error, f"code cell {at}: {error[-300:]}"


def test_every_chapter_has_a_typical_mistake_its_check_catches():
    assert sorted({number for number, *_ in MISTAKES.values()}) == [p.name[:2] for p in CHAPTERS]


@pytest.mark.parametrize("case", list(MISTAKES), ids=lambda k: k.replace(" ", "-"))
def test_check_catches_a_typical_mistake(case):
    chapter = _mistake_cell(case)[0]        # also checks that the mistake's text occurs once
    what = MISTAKES[case][3]
    run = _chapter_run(chapter)
    assert run["prefix"] is None, f"code cell {run['prefix'][0]} failed: {run['prefix'][1][-300:]}"
    result = run["mistakes"].get(case)
    assert result is not None, "not run: the chapter's cells failed before an earlier mistake of this chapter"
    assert "setup" not in result, f"the chapter's code cell {result.get('setup', (0,))[0]} failed before the mistake"
    at, error = result["mistake"]
    assert error and "AssertionError" in error, f"the check (code cell {at}) did not reject {what}: {(error or 'it passed')[-300:]}"
    assert result["control"] is None, f"the chapter's own solution failed the check after the mistake: {result['control'][-300:]}"


@pytest.mark.parametrize("case", list(ALTERNATIVES), ids=lambda k: k.replace(" ", "-"))
def test_check_accepts_a_correct_answer_written_differently(case):
    chapter = _mistake_cell(case)[0]
    run = _chapter_run(chapter)
    assert run["prefix"] is None, f"code cell {run['prefix'][0]} failed: {run['prefix'][1][-300:]}"
    result = run["mistakes"].get(case)
    assert result is not None and "setup" not in result, "not run: the chapter's cells failed before it"
    at, error = result["mistake"]
    assert error is None, f"the check (code cell {at}) rejected a right answer, {ALTERNATIVES[case][3]}: {error[-300:]}"


def test_grade_runs_the_chapters_own_check_on_the_students_cells(tmp_path, capsys):
    """An instructor's grading: the stub is 'not implemented', the solution passes, a typical mistake
    fails the check, a student who edits the check (and loses the cell ids) is graded by the
    chapter's own check all the same, and one who rewrites the signature is found by the check."""
    (chapter,) = [p for p in CHAPTERS if p.name.startswith("03")]
    original = json.loads(chapter.read_text())
    student = assignments.student_notebook(original)
    o_code = [c for c in original["cells"] if c["cell_type"] == "code"]
    s_code = [c for c in student["cells"] if c["cell_type"] == "code"]
    (k,) = [i for i, c in enumerate(o_code) if assignments.BEGIN in assignments._source(c)]

    def submit(name, solution=None, check=None, ids=True):
        nb = json.loads(json.dumps(student))
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        if solution is not None:
            code[k]["source"] = solution
        if check is not None:
            code[k + 1]["source"] = check
        if not ids:
            for c in nb["cells"]:
                c.pop("id", None)
        path = tmp_path / name
        path.write_text(json.dumps(nb))
        return path

    written = assignments.put_back(assignments._source(s_code[k]), assignments._source(o_code[k]))
    wrong = written.replace("grad.abs().amax(dim=1)", "grad.amax(dim=1)")
    assert wrong != written
    stub = assignments.grade(submit("03_stub.ipynb"))
    good = assignments.grade(submit("03_good.ipynb", written))
    bad = assignments.grade(submit("03_bad.ipynb", wrong))
    cheat = assignments.grade(submit("03_cheat.ipynb", wrong, check="print('all right')", ids=False))
    assert (stub.status, good.status, bad.status, cheat.status) == ("not implemented", "passed", "check failed",
                                                                   "check failed")
    assert good.passed and not (stub.passed or bad.passed or cheat.passed)
    assert "in the check" in bad.message and "AssertionError" in bad.message
    crash = written.replace("    m = grad.abs()", "    import os\n    os._exit(1)\n    m = grad.abs()")
    assert crash != written
    crashed = assignments.grade(submit("03_crash.ipynb", crash))   # one student's crash does not stop the grading
    assert (crashed.status, crashed.message, crashed.passed) == ("error", "the kernel died", False)
    # a helper defined in another cell of the student's notebook is not graded: the message says so
    elsewhere = written.replace("    m = grad.abs()", "    m = my_abs(grad)")
    assert elsewhere != written
    missing = assignments.grade(submit("03_elsewhere.ipynb", elsewhere))
    assert missing.status == "error" and "NameError" in missing.message
    assert "only the assignment cells are graded" in missing.message
    # ids lost and the signature rewritten: found as the cell before the unchanged check
    rewritten = written.replace("def my_saliency(grad):", "def my_saliency(grad):  # my version")
    assert rewritten != written
    assert assignments.grade(submit("03_rewritten.ipynb", rewritten, ids=False)).status == "passed"
    lost = submit("03_lost.ipynb", "print('the function is gone')", check="print('edited')", ids=False)
    assert assignments.grade(lost).status == "not matched"
    with pytest.raises(ValueError, match="chapter's number in the file name"):
        assignments.grade(submit("homework.ipynb", ids=False))
    # renamed by Colab or an LMS, the cell ids kept: the chapter is found from them
    renamed = assignments.grade(submit("Copy of homework (alice).ipynb", written))
    assert (renamed.chapter, renamed.status) == (chapter.stem, "passed")
    # the check passes, but the cell calls the helper the check compares with: not an implementation
    delegated = written.replace("    m = grad.abs().amax(dim=1)\n    return m / m.flatten(1).amax(dim=1).view(-1, 1, 1)",
                                "    return gradients.saliency(model, x_all, targets)")
    assert delegated != written
    borrowed = assignments.grade(submit("03_borrowed.ipynb", delegated))
    assert (borrowed.status, borrowed.passed) == ("uses the reference", False)
    assert "calls gradients.saliency, which the check compares with" in borrowed.message
    # the command line: one line per notebook, exit code 1 unless all passed
    assert assignments._main(["grade", str(tmp_path / "03_good.ipynb")]) == 0
    assert assignments._main(["grade", str(tmp_path / "03_good.ipynb"), str(tmp_path / "03_bad.ipynb")]) == 1
    assert "1 of 2 passed" in capsys.readouterr().out
    # files an instructor gets by mistake: reported one by one, the good one still graded
    (tmp_path / "03_empty.ipynb").write_text("")
    assert assignments.grade(tmp_path / "03_missing.ipynb").status == "unreadable"
    assert assignments.grade(tmp_path / "03_empty.ipynb").status == "unreadable"
    assert assignments._main(["grade", str(tmp_path / "homework.ipynb"), str(tmp_path / "03_empty.ipynb"),
                              str(tmp_path / "03_good.ipynb")]) == 1
    out = capsys.readouterr().out
    assert "homework.ipynb (-): not matched" in out and "unreadable" in out and "1 of 3 passed" in out
