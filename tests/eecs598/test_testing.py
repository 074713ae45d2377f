"""eecs598.testing.autograd_or_nn_uses: the check the A3 tests use to keep the from-scratch
layers off torch.nn and autograd must see through import aliases."""
import importlib.util

import pytest

from eecs598.testing import autograd_or_nn_uses


def load_module(tmp_path, source, name="probe_module"):
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("source, expected", [
    ("import torch\ndef f(x):\n    return torch.nn.functional.relu(x)\n", "torch.nn.functional.relu"),
    ("from torch import nn\ndef f(x):\n    return nn.Linear(3, 3)(x)\n", "torch.nn.Linear"),
    ("import torch.nn as tnn\ndef f(x):\n    return tnn.Conv2d(1, 1, 3)(x)\n", "torch.nn.Conv2d"),
    ("import torch as T\ndef f(y, x):\n    return T.autograd.grad(y, x)\n", "torch.autograd.grad"),
    ("from torch import autograd\ndef f(y, x):\n    return autograd.grad(y, x)\n", "torch.autograd.grad"),
    ("from torch.nn import functional as F\ndef f(x):\n    return F.conv2d(x, x)\n", "torch.nn.functional.conv2d"),
    ("import torch\ndef f(x):\n    return x.requires_grad_()\n", "x.requires_grad_"),
    # function transforms work even under no_grad / inference_mode
    ("from torch.func import vjp\ndef f(x, d):\n    return vjp(lambda t: t.clamp(min=0), x)[1](d)[0]\n",
     "torch.func.vjp"),
    ("import torch\ndef f(x):\n    return torch.func.grad(lambda t: t.sum())(x)\n", "torch.func.grad"),
    ("import functorch\ndef f(x):\n    return functorch.grad(lambda t: t.sum())(x)\n", "functorch.grad"),
    # switching autograd back on inside a test's no_grad
    ("import torch\ndef f(x):\n    with torch.enable_grad():\n        return x * 2\n", "torch.enable_grad"),
    ("import torch\ndef f(x):\n    torch.set_grad_enabled(True)\n    return x\n", "torch.set_grad_enabled"),
    # requires_grad as a keyword argument
    ("import torch\ndef f(x):\n    return torch.empty_like(x, requires_grad=True)\n", "requires_grad="),
])
def test_flags_torch_nn_and_autograd_under_any_alias(tmp_path, source, expected):
    assert expected in autograd_or_nn_uses(load_module(tmp_path, source))


def test_plain_tensor_code_gives_nothing(tmp_path):
    source = ("import torch\nimport numpy as np\nfrom torch import Tensor\n"
              "nnz = 3\n"
              "def f(x: Tensor):\n    return torch.matmul(x, x).clamp(min=0) + nnz + np.pi\n")
    assert autograd_or_nn_uses(load_module(tmp_path, source)) == []


def test_assert_close_refuses_to_broadcast():
    """A (3,) result against a (3, 1) reference would broadcast to a 3 x 3 comparison; the
    shapes must agree instead."""
    import torch

    from eecs598.testing import assert_close
    assert_close(torch.ones(3), torch.ones(3), 1e-12)
    with pytest.raises(AssertionError, match="shape"):
        assert_close(torch.ones(3), torch.ones(3, 1), 1e-12)
    with pytest.raises(AssertionError, match="relative error"):
        assert_close(torch.ones(3), torch.zeros(3), 1e-12)


def test_host_reads_counts_reads_and_copies_but_not_device_side_asserts():
    """Each kind of call that makes a GPU's host wait is counted once per call; arithmetic and a
    `torch._assert_async` check (which runs on the device there) are not."""
    import numpy as np
    import torch

    from eecs598.testing import host_reads

    t = torch.tensor([1.0, 2.0, 3.0])
    assert host_reads(lambda: (t * 2 + 1).sum()) == {}
    assert host_reads(lambda: torch._assert_async((t < 5).all(), "in range")) == {}
    assert host_reads(lambda: (t.sum().item(), float(t[0]), t[t > 1], t.tolist(), torch.equal(t, t),
                               t.cpu(), t.numpy(), np.asarray(t))) == {
        "aten::_local_scalar_dense": 2, "aten::nonzero": 1, "Tensor.tolist": 1, "torch.equal": 1,
        "Tensor.cpu": 1, "Tensor.numpy": 1, "Tensor.__array__": 1}
