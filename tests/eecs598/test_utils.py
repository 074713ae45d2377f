"""eecs598.utils: the float32-precision switch used by A3's CUDA benchmark and ResNet; device names."""
import os

import pytest
import torch

from eecs598 import utils
from eecs598.utils import fp32_precision


def _flags():
    return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision


@pytest.mark.parametrize("mode", ["ieee", "tf32"])
def test_fp32_precision_sets_both_backends_and_restores_them(mode):
    before = _flags()
    with fp32_precision(mode):
        assert _flags() == (mode, mode)
    assert _flags() == before


def test_fp32_precision_restores_after_an_error_and_rejects_unknown_modes():
    before = _flags()
    with pytest.raises(RuntimeError):
        with fp32_precision("tf32"):
            raise RuntimeError("inside")
    assert _flags() == before
    with pytest.raises(ValueError):
        with fp32_precision("bf16"):
            pass
    assert _flags() == before


def test_cpu_model_reads_the_first_model_name_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC  9R14\nflags\t\t: fpu avx512_bf16\n\n"
                    "processor\t: 1\nmodel name\t: other\n")
    assert utils.cpu_model(info) == "AMD EPYC 9R14"
    assert utils.cpu_flags(info) == {"fpu", "avx512_bf16"}
    assert utils.cpu_flags(tmp_path / "missing") == set()
    (tmp_path / "empty").write_text("processor\t: 0\nmodel name\t:\n")
    assert utils.cpu_model(tmp_path / "empty") is None
    assert utils.cpu_model(tmp_path / "missing") is None


def test_cpu_device_name_says_model_cores_and_torch_version(monkeypatch):
    monkeypatch.setattr(utils, "cpu_model", lambda: "Some CPU 1")
    name = utils.device_name("cpu")
    assert name.startswith("CPU (Some CPU 1, ") and f"{os.cpu_count()} cores" in name
    assert name.endswith(f"torch {torch.__version__.split('+')[0]})")
    monkeypatch.setattr(utils, "cpu_model", lambda: None)
    assert utils.device_name("cpu").startswith(f"CPU ({os.cpu_count()} cores, ")


def test_evaluating_restores_mode_and_random_state():
    from eecs598.utils import evaluating

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5)).double()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with evaluating(model, seed=1) as (device, dtype):
        assert not model.training and not torch.is_grad_enabled()
        assert (device.type, dtype) == ("cpu", torch.float64)
        first = torch.rand(2)
    assert model.training and torch.equal(torch.rand(3), expected)
    with evaluating(model, seed=1):
        assert torch.equal(torch.rand(2), first)
    model.eval()
    with evaluating(model):  # no seed: the global generator runs on
        pass
    assert not model.training


def test_evaluating_a_model_without_parameters_and_restoring_after_an_error():
    from eecs598.utils import evaluating

    model = torch.nn.ReLU()  # no parameters (e.g. an oracle detector in a test)
    with evaluating(model) as (device, dtype):
        assert not model.training and (device.type, dtype) == ("cpu", torch.get_default_dtype())
    assert model.training
    with pytest.raises(ZeroDivisionError):
        with evaluating(model):
            1 / 0
    assert model.training


def test_in_eval_mode_restores_each_models_mode_even_after_an_error():
    from eecs598.utils import in_eval_mode

    seen = []

    @in_eval_mode
    def probe(models, fail=False):
        for m in (models if isinstance(models, list) else [models]):
            seen.append((m.training, torch.is_grad_enabled()))
        if fail:
            raise RuntimeError("boom")
        return "done"

    a, b = torch.nn.Dropout(0.5), torch.nn.Dropout(0.5).eval()
    assert probe(a) == "done" and a.training
    assert probe([a, b]) == "done" and a.training and not b.training
    with pytest.raises(RuntimeError):
        probe([a, b], fail=True)
    assert a.training and not b.training
    assert seen and all(mode == (False, False) for mode in seen)


def test_utils_exports_the_visualizers_course_code_imports_from_it():
    """A4-A6 course code does `from eecs598.utils import detection_visualizer` (and
    attention_visualizer, reset_seed): their copies of the package had no vis module."""
    from eecs598 import utils, vis
    for name in ("attention_visualizer", "detection_visualizer", "tensor_to_image", "visualize_dataset"):
        assert getattr(utils, name) is getattr(vis, name)
    assert callable(utils.reset_seed)


def test_median_time_times_each_repeat_after_the_warm_up_and_takes_the_median(monkeypatch):
    ticks = iter([0, 1, 10, 11, 20, 30])  # times 1, 1, 10: median 1, mean 4
    monkeypatch.setattr(utils.time, "perf_counter", lambda: next(ticks))
    calls = []
    median, times = utils.median_time(lambda: calls.append(1), repeats=3, warmup=2)
    assert times == [1, 1, 10] and median == 1 and len(calls) == 5


def test_reset_seed_seeds_torch_and_python():
    import random
    utils.reset_seed(3)
    a, ra = torch.rand(3), random.random()
    utils.reset_seed(3)
    assert torch.equal(a, torch.rand(3)) and ra == random.random()


# --- gaps found by mutation testing (each test fails on a one-line bug the others let through)

def test_pick_and_env_flag(monkeypatch):
    monkeypatch.setenv("EECS598_QUICK", "1")
    assert utils.pick(full=5000, quick=500) == 500
    monkeypatch.setenv("EECS598_QUICK", "0")
    assert not utils.quick_mode() and utils.pick(full=5000, quick=500) == 5000
    monkeypatch.setenv("EECS598_QUICK", "no")
    assert not utils.env_flag("EECS598_QUICK")


def test_timer_synchronizes_cuda_at_both_ends(monkeypatch):
    log = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: log.append("sync"))
    with utils.timer():
        log.append("work")
    assert log == ["sync", "work", "sync"]


def test_get_device_auto_uses_cuda_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert utils.get_device().type == "cuda" and utils.get_device("auto").type == "cuda"
