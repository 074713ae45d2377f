"""eecs598.utils: the float32-precision switch used by A3's CUDA benchmark and ResNet."""
import pytest
import torch

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
