"""Every submitted file that is not source code is written by a notebook of its assignment.

`eecs598.submit.SUBMISSION_FILES` lists what `make_aN_submission` zips; besides the `.py` and
`.ipynb` files it holds weight files and images that running the notebooks must leave in the
assignment folder. A name that no notebook writes makes every submission of that assignment
fail with FileNotFoundError.

The check is textual (the notebooks are not run here): the file's name must appear as a
string literal in a code cell of a notebook in the assignment folder, and that same cell must
call something that saves (`.save(`, `torch.save(`, `savefig(`, `imsave(`) and must not save
inside a `tempfile.TemporaryDirectory()` (deleted at once: the file never reaches the folder).
Quick mode may still send the file to a temporary folder (`save_dir`), so that CI never
overwrites real weights.
"""
import json
import re
from pathlib import Path

import pytest

from eecs598.submit import SUBMISSION_FILES

ROOT = Path(__file__).resolve().parent.parent
SAVE_CALL = re.compile(r"\b(save|savefig|imsave)\(")

# Assignments present in this copy (a student release made with `make student UPTO=A2` has
# no later folders).
WRITTEN_FILES = [(assignment, name) for assignment, names in sorted(SUBMISSION_FILES.items())
                 if (ROOT / assignment).is_dir()
                 for name in names if not name.endswith((".py", ".ipynb"))]


def code_cells(folder):
    """(notebook name, cell index, source) for every code cell of the notebooks in `folder`."""
    for path in sorted(folder.glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for index, cell in enumerate(cells):
            if cell.get("cell_type") == "code":
                source = cell.get("source", "")
                yield path.name, index, "".join(source) if isinstance(source, list) else source


def test_there_are_written_files():
    """The parametrized test below is not vacuous: from A2 on, assignments submit weights or
    images (A1 submits only sources, so an A1-only student release has none)."""
    present = [a for a in sorted(SUBMISSION_FILES) if (ROOT / a).is_dir()]
    assert present, f"no assignment folder of SUBMISSION_FILES under {ROOT}"
    if present == ["A1"]:
        pytest.skip("an A1-only copy: A1 submits only source files")
    assert WRITTEN_FILES, "SUBMISSION_FILES lists no weight file or image at all"


@pytest.mark.parametrize("assignment,name", WRITTEN_FILES, ids=[f"{a}/{n}" for a, n in WRITTEN_FILES])
def test_submitted_file_is_written_by_a_notebook(assignment, name):
    folder = ROOT / assignment
    mentions = [(nb, index, source) for nb, index, source in code_cells(folder)
                if f'"{name}"' in source or f"'{name}'" in source]
    writers = [f"{nb} cell {index}" for nb, index, source in mentions
               if SAVE_CALL.search(source) and "TemporaryDirectory" not in source]
    assert writers, (
        f"{assignment}/{name} is in SUBMISSION_FILES[{assignment!r}] but no notebook in {assignment}/ "
        f"saves it into the assignment folder (no code cell names it, calls save/savefig/imsave and "
        f"does without tempfile.TemporaryDirectory); cells naming it: "
        f"{[f'{nb} cell {index}' for nb, index, _ in mentions] or 'none'}")


STUDENT_WORK = [(folder.name, path.name) for folder in sorted(ROOT.glob("A[0-9]*")) if folder.name in SUBMISSION_FILES
                for path in sorted(folder.glob("*.ipynb")) + sorted(
                    p for p in folder.glob("*.py") if "### BEGIN SOLUTION" in p.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("assignment,name", STUDENT_WORK, ids=[f"{a}/{n}" for a, n in STUDENT_WORK])
def test_every_file_with_student_work_is_submitted(assignment, name):
    """Every notebook, and every .py file with a solution region (stubbed in the student copy),
    goes into the assignment's zip: work a student must do is work they hand in."""
    assert name in SUBMISSION_FILES[assignment], f"{assignment}/{name} is not in SUBMISSION_FILES"
