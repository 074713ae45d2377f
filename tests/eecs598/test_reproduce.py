"""`make reproduce QUICK=1` (eecs598.reproduce --quick) runs every assignment's headline
experiments end to end on the real data and writes their rows."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eecs598.reproduce import assignment_dirs
from eecs598.testing import cifar_available, shared_data_available

ROOT = Path(__file__).resolve().parents[2]
ALL_DATA = cifar_available() and all(shared_data_available(*p) for p in (
    ("mnist",), ("voc2007", "voc07_val.json"), ("flickr8k-1k", "captions.txt"),
    ("arithmetic", "two_digit_op.json")))


def _reproduce(*args, results_dir):
    env = {**os.environ, "EECS598_QUICK": ""}  # --quick must set quick mode by itself
    return subprocess.run([sys.executable, "-m", "eecs598.reproduce", *args, "--results-dir", str(results_dir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


@pytest.mark.skipif(not ALL_DATA, reason="needs every dataset in $EECS598_DATA")
def test_quick_reproduce_writes_quick_rows_for_every_assignment(tmp_path):
    proc = _reproduce("--quick", "--device", "cpu", results_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())
    names = [f.name for f in assignment_dirs()]
    assert names and names == ["A1", "A2", "A3", "A4", "A5", "A6"][:len(names)]  # fewer in a partial release
    for name in names:
        assert f"== {name}: running headline experiments on cpu (quick mode)" in proc.stdout
        assert any(r["assignment"] == name for r in rows), f"no rows from {name}"
    assert {r["mode"] for r in rows} == {"quick"}
    assert all(r["device"] for r in rows)
    report = (tmp_path / "RESULTS.md").read_text()
    assert "Quick mode" in report and "Full mode" not in report
    # A5's run takes figures_dir; quick mode must not pass it (it would replace measured figures).
    assert not (tmp_path / "figures").exists()


def test_reproduce_names_an_assignment_without_experiments(tmp_path):
    proc = _reproduce("--only", "A1", "A9", results_dir=tmp_path)
    assert proc.returncode != 0
    assert "no experiments.py for: A9" in proc.stderr
    assert not (tmp_path / "results.json").exists()


def test_figures_dir_goes_only_to_a_run_that_takes_it(tmp_path):
    """run_experiments passes figures_dir to a `run(device, figures_dir=None)` and calls a plain
    `run(device)` without it; None (quick mode) is never passed."""
    import types
    from eecs598.reproduce import run_experiments
    calls = []
    plain = types.SimpleNamespace(run=lambda device: calls.append(("plain", device)) or [])
    def run_with_figures(device, figures_dir=None):
        calls.append(("figures", device, figures_dir))
        return []
    with_figures = types.SimpleNamespace(run=run_with_figures)
    run_experiments(plain, "cpu", tmp_path)
    run_experiments(with_figures, "cpu", tmp_path)
    run_experiments(with_figures, "cpu", None)
    assert calls == [("plain", "cpu"), ("figures", "cpu", tmp_path), ("figures", "cpu", None)]



def test_reproduce_without_assignment_folders_fails_clearly(monkeypatch, capsys):
    """An install that is not a checkout (no A<n>/experiments.py beside the package) must not
    exit 0 having run nothing."""
    from eecs598 import reproduce
    monkeypatch.setattr(reproduce, "assignment_dirs", lambda root=None: [])
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main([])
    assert exit_info.value.code == 2 and "no assignment folder" in capsys.readouterr().err


# --- main(): --only, --device, --results-dir ------------------------------------------------

@pytest.mark.parametrize("device, message", [("cuda", "sees no CUDA device"), ("cuda:1", "sees no CUDA device"),
                                             ("gpu", "--device gpu: ")])
def test_main_refuses_a_device_it_cannot_use_before_running_anything(monkeypatch, capsys, device, message):
    from eecs598 import reproduce
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(reproduce, "run_experiments", lambda *a, **k: pytest.fail("ran experiments"))
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--device", device, "--only", "A1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "usage: python -m eecs598.reproduce" in err


@pytest.mark.parametrize("quick", [False, True])
def test_main_runs_only_the_named_assignments_on_the_named_device(tmp_path, monkeypatch, quick):
    """--only runs just those folders, --device reaches run(), full mode gets
    <results-dir>/figures/<assignment> (not the repository's results/), quick mode none, and the
    records land in --results-dir. Nothing is trained: the experiments are stubbed."""
    from eecs598 import reproduce, utils
    from eecs598.results import make_record
    monkeypatch.setenv("EECS598_QUICK", "")
    monkeypatch.setattr(utils, "get_device", lambda name: f"device<{name}>")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # --device cuda:1 is accepted
    calls = []

    def run_experiments(module, device, figures_dir=None):
        calls.append((module, device, figures_dir))
        return [make_record(module, "acc", 1.0, "%", "d", str(device), 1.0)]
    monkeypatch.setattr(reproduce, "load_experiments", lambda folder: folder.name)
    monkeypatch.setattr(reproduce, "run_experiments", run_experiments)
    # the last two assignments of this copy (a partial student release has fewer folders)
    names = [folder.name for folder in assignment_dirs()][-2:]
    reproduce.main(["--only", *names, "--device", "cuda:1", "--results-dir", str(tmp_path)]
                   + (["--quick"] if quick else []))
    figures = (lambda name: None) if quick else (lambda name: tmp_path / "figures" / name)
    assert calls == [(name, "device<cuda:1>", figures(name)) for name in names]
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [(r["assignment"], r["mode"]) for r in rows] == [(name, "quick" if quick else "full")
                                                            for name in names]
