"""Shared test set-up: make every assignment folder importable (`import knn`, ...).

Assignment module names are unique across folders, except `experiments.py` (each folder
has one, which `eecs598.reproduce.load_experiments` loads by path; `import experiments` would
reach whichever folder comes first on sys.path, so tests never do it). Tests import the other
modules by name, so the same tests grade the solution repo and a stubbed student copy (tests/
is copied with it).
"""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
for folder in sorted(ROOT.glob("A[0-9]*")):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """An empty data root and cache, offline: for tests of the data layer's error paths."""
    root, cache = tmp_path / "data", tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("EECS598_DATA", str(root))
    monkeypatch.setenv("EECS598_CACHE", str(cache))
    monkeypatch.setenv("EECS598_OFFLINE", "1")
    return root

