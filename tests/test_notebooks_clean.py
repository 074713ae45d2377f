"""Every assignment notebook is stored clean: nbformat 4, python3 kernel, no outputs,
and it opens with the shared setup cell (tools.notebooks.SETUP_CELL)."""
import json
from pathlib import Path

import pytest

from tools.notebooks import SETUP_CELL

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(
    path for folder in sorted(ROOT.glob("A*")) if folder.is_dir()
    for path in folder.rglob("*.ipynb")
    if ".ipynb_checkpoints" not in path.parts
)


def _source(cell):
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebook found under A*/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.relative_to(ROOT).as_posix() for p in NOTEBOOKS])
def test_notebook_is_clean(path):
    import nbformat

    name = path.relative_to(ROOT).as_posix()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        pytest.fail(f"{name}: not valid JSON: {err}")
    assert raw.get("nbformat") == 4, f"{name}: nbformat {raw.get('nbformat')!r}, want 4"
    try:
        nbformat.validate(nbformat.from_dict(raw))
    except nbformat.ValidationError as err:
        pytest.fail(f"{name}: not a valid nbformat-4 notebook: {err}")

    kernel = raw.get("metadata", {}).get("kernelspec", {}).get("name")
    assert kernel == "python3", f"{name}: kernelspec name {kernel!r}, want 'python3'"

    dirty = [f"cell {index}: "
             + ", ".join(what for what, bad in [("outputs", cell.get("outputs")),
                                                 ("execution_count", cell.get("execution_count") is not None)]
                         if bad)
             for index, cell in enumerate(raw["cells"])
             if cell.get("cell_type") == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{name}: code cells saved with outputs or execution counts "
                       f"(rebuild it with tools/notebooks.py or clear the outputs):\n" + "\n".join(dirty))

    code_cells = [(index, cell) for index, cell in enumerate(raw["cells"]) if cell.get("cell_type") == "code"]
    assert code_cells, f"{name}: no code cell"
    index, first = code_cells[0]
    assert _source(first) == SETUP_CELL, (
        f"{name}: the first code cell (cell {index}) is not tools.notebooks.SETUP_CELL; "
        f"build the notebook with tools.notebooks.write_notebook")


def test_write_notebook_writes_a_clean_notebook_that_passes_these_checks(tmp_path):
    """write_notebook (how the notebooks are built) writes what test_notebook_is_clean demands."""
    import nbformat
    from tools.notebooks import code, md, write_notebook
    path = tmp_path / "n.ipynb"
    write_notebook(path, [md("# Title\ntext"), code("x = 1\nprint(x)\n")])
    raw = json.loads(path.read_text())
    nbformat.validate(nbformat.from_dict(raw))
    assert raw["nbformat"] == 4 and raw["metadata"]["kernelspec"]["name"] == "python3"
    ids = [cell.get("id") for cell in raw["cells"]]
    assert all(ids) and len(set(ids)) == len(ids)
    assert [_source(c) for c in raw["cells"]] == [SETUP_CELL, "# Title\ntext", "x = 1\nprint(x)"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in raw["cells"] if c["cell_type"] == "code")


def test_setup_cell_outside_the_repository_uses_an_installed_eecs598_or_says_what_to_do(tmp_path):
    """A notebook run from a copy of its assignment folder (not inside a clone) finds an
    installed eecs598 (here: on PYTHONPATH, as `pip install -e <clone>` would put it); with none
    it fails with advice. (`-S`: no site-packages, so an editable install cannot be found.)"""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = [sys.executable, "-c", SETUP_CELL]
    installed = subprocess.run(run, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"},
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    assert "mode: " in installed.stdout  # notebook_setup ran
    missing = subprocess.run([sys.executable, "-S", "-c", SETUP_CELL], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0
    assert "or an installed eecs598" in missing.stderr and "pip install -e" in missing.stderr
