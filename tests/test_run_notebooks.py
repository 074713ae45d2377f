"""tools/run_notebooks.py: runs notebooks cell by cell in their own folder, keeps the executed
copies out of the repository, and reports a failing cell with a non-zero exit status."""
import json

import pytest

nbformat = pytest.importorskip("nbformat")  # a test extra; absent on a bare GPU machine

from tools.run_notebooks import main  # noqa: E402


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# test")] + [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_runs_in_the_notebook_folder_and_reports_the_failing_cell(tmp_path, capsys):
    (tmp_path / "nbs").mkdir()
    (tmp_path / "nbs" / "data.txt").write_text("41")
    good, bad = tmp_path / "nbs" / "good.ipynb", tmp_path / "nbs" / "bad.ipynb"
    _notebook(good, "value = int(open('data.txt').read())", "print(value + 1)")
    _notebook(bad, "x = 1", "raise ValueError('\\x1b[31mboom\\x1b[39m')", "print('never')")  # coloured, as IPython may
    out = tmp_path / "executed"
    assert main([str(good), str(bad), "--out", str(out), "--quick"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["status"] for r in lines][0] == "ok"
    assert lines[1]["status"].startswith("error in cell 2:") and "boom" in lines[1]["status"]
    assert "\x1b" not in lines[1]["status"]  # no terminal colour codes in the report
    assert [int(i) for i, _ in lines[0]["slowest_cells"]] and lines[0]["total_s"] > 0
    executed = nbformat.read(out / "good.ipynb", as_version=4)
    assert executed.cells[2].outputs[0]["text"] == "42\n"
    assert nbformat.read(good, as_version=4).cells[2].outputs == []  # the source notebook is untouched
    assert nbformat.read(out / "bad.ipynb", as_version=4).cells[3].outputs == []  # stopped at the error


def test_a_dead_kernel_is_reported_and_the_next_notebook_still_runs(tmp_path, capsys):
    dies, good = tmp_path / "dies.ipynb", tmp_path / "good.ipynb"
    _notebook(dies, "import os\nos._exit(1)", "print('never')")
    _notebook(good, "print(1 + 1)")
    assert main([str(dies), str(good), "--out", str(tmp_path / "executed"), "--quick"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["status"].startswith("error in cell 1:") and "DeadKernel" in lines[0]["status"]
    assert lines[1]["status"] == "ok"


# --- the mode, per-cell times, no time limit -----------------------------------------------

def test_quick_flag_sets_the_kernels_mode_and_full_is_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv("EECS598_QUICK", raising=False)
    nb = tmp_path / "mode.ipynb"
    _notebook(nb, "import os\nprint(repr(os.environ.get('EECS598_QUICK')))")
    assert main([str(nb), "--out", str(tmp_path / "full")]) == 0
    assert nbformat.read(tmp_path / "full" / "mode.ipynb", as_version=4).cells[1].outputs[0]["text"] == "None\n"
    assert main([str(nb), "--out", str(tmp_path / "quick"), "--quick"]) == 0
    assert nbformat.read(tmp_path / "quick" / "mode.ipynb", as_version=4).cells[1].outputs[0]["text"] == "'1'\n"


def test_cell_times_are_per_cell_and_slowest_first(tmp_path, capsys):
    nb = tmp_path / "slow.ipynb"
    _notebook(nb, "import time", "time.sleep(1.0)", "x = 1")
    assert main([str(nb), "--out", str(tmp_path / "executed")]) == 0
    line = json.loads(capsys.readouterr().out)
    seconds = [s for _, s in line["slowest_cells"]]
    assert line["slowest_cells"][0][0] == 2 and seconds[0] >= 0.9
    assert seconds == sorted(seconds, reverse=True)
    assert seconds[-1] < 0.5  # `x = 1`: its own time, not the time since the start


def test_cells_have_no_time_limit(tmp_path, monkeypatch):
    """Full-mode cells run for many minutes: nbclient must not time them out."""
    import nbclient
    seen = {}

    class Client(nbclient.NotebookClient):
        def __init__(self, nb, **kwargs):
            seen["timeout"] = kwargs.get("timeout", "unset")
            super().__init__(nb, **kwargs)
    monkeypatch.setattr(nbclient, "NotebookClient", Client)
    nb = tmp_path / "n.ipynb"
    _notebook(nb, "x = 1")
    assert main([str(nb), "--out", str(tmp_path / "executed")]) == 0
    assert seen["timeout"] is None
