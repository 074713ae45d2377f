"""Build notebooks from Python, so every notebook has the same setup cell and no outputs.

    from tools.notebooks import write_notebook, md, code
    write_notebook("A1/knn.ipynb", [md("# kNN"), code("from knn import hello\nhello()")])

`write_notebook` prepends the shared setup cell (`SETUP_CELL`) and writes an nbformat-4
notebook with a python3 kernelspec, no outputs and no execution counts.
"""
import json
from pathlib import Path

SETUP_CELL = '''\
# Setup (the same cell opens every notebook). Locally, Jupyter starts in this folder.
# On Colab: clone the repository, `%cd` into this assignment's folder, then run this cell.
import sys
from pathlib import Path

_candidates = [Path.cwd(), *Path.cwd().parents, *Path("/content").glob("*"),
               *Path("/content/drive/MyDrive").glob("*")]
REPO_ROOT = next((p for p in _candidates if (p / "eecs598" / "__init__.py").is_file()), None)
if REPO_ROOT is None:  # outside the repository: an installed eecs598 (pip install -e <clone>) will do
    import importlib.util
    if importlib.util.find_spec("eecs598") is None:
        raise RuntimeError("Cannot find the course repository (a folder with eecs598/) or an installed "
                           "eecs598. Clone it and open the notebook from its assignment folder "
                           "(or pip install -e <the clone>).")
elif str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import eecs598
eecs598.notebook_setup()'''


def md(source):
    return {"cell_type": "markdown", "metadata": {}, "source": source.strip("\n")}


def code(source):
    return {"cell_type": "code", "metadata": {}, "source": source.strip("\n"),
            "outputs": [], "execution_count": None}


def _lines(text):
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + [lines[-1]]


def write_notebook(path, cells):
    """Write `cells` (from `md`/`code`), preceded by a title-free setup cell, to `path`."""
    cells = [code(SETUP_CELL), *cells]
    nb = {
        "cells": [{**c, "source": _lines(c["source"])} for c in cells],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4, "nbformat_minor": 5,
    }
    for i, cell in enumerate(nb["cells"]):
        cell["id"] = f"cell-{i}"
    Path(path).write_text(json.dumps(nb, indent=1) + "\n")
