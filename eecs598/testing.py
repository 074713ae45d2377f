"""Helpers for the project's tests (importable from any test folder and from a student copy)."""
from pathlib import Path

import pytest


def shared_data_available(*parts):
    """True when the data root ($EECS598_DATA, else its default ~/.cache/eecs598/data) or the
    download cache (<cache>/downloads, where `eecs598.data` puts what it downloads) holds the
    path <dataset>/<file...> given by `parts`."""
    from eecs598.data import store

    roots = (store.data_root(), store.cache_dir(create=False) / "downloads")
    return any(Path(root, *parts).exists() for root in roots)


def cifar_available():
    return any(shared_data_available("cifar10", name) for name in
               ("cifar10-jpeg.zip", "cifar-10-python.tar.gz", "cifar-10-batches-py"))


requires_cifar = pytest.mark.skipif(not cifar_available(), reason="CIFAR-10 not in $EECS598_DATA")


def host_reads(fn):
    """Run fn() (on the CPU) and count, by name, the calls that on a GPU would make the host wait
    for the device. {} when there are none. Two kinds:
      * operators, seen by PyTorch's profiler: a value read back (`aten::_local_scalar_dense`,
        behind `.item()`, `float(t)`, `if t:`) and results whose size depends on the data
        (`aten::nonzero` behind boolean indexing, `masked_select`, `unique`). A read inside
        `torch._assert_async` is left out: on a GPU that check runs on the device.
      * copies to the host, which on the CPU run no operator: `Tensor.tolist`, `Tensor.cpu`,
        `Tensor.numpy`, `numpy.asarray(t)`, `torch.equal`, seen by a `TorchFunctionMode`."""
    from torch.overrides import TorchFunctionMode
    from torch.profiler import ProfilerActivity, profile
    import torch

    copies = {torch.Tensor.tolist: "Tensor.tolist", torch.Tensor.cpu: "Tensor.cpu",
              torch.Tensor.numpy: "Tensor.numpy", torch.Tensor.__array__: "Tensor.__array__",
              torch.equal: "torch.equal"}
    counts = {}

    class CountCopies(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in copies:
                counts[copies[func]] = counts.get(copies[func], 0) + 1
            return func(*args, **(kwargs or {}))

    with profile(activities=[ProfilerActivity.CPU]) as prof, CountCopies():
        fn()
    reads = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique",
             "aten::_unique2")
    for event in prof.events():
        if event.name not in reads:
            continue
        parent = event.cpu_parent
        while parent is not None and parent.name != "aten::_assert_async":
            parent = parent.cpu_parent
        if parent is None:
            counts[event.name] = counts.get(event.name, 0) + 1
    return counts


def assert_close(ours, reference, tol, what="value"):
    """Assert that the shapes agree (no broadcasting) and rel_error(ours, reference) < tol,
    printing both on failure."""
    import torch

    from .grad import rel_error
    ours_shape, ref_shape = torch.as_tensor(ours).shape, torch.as_tensor(reference).shape
    assert ours_shape == ref_shape, f"{what}: shape {tuple(ours_shape)} != reference {tuple(ref_shape)}"
    err = rel_error(ours, reference)
    assert err < tol, f"{what}: relative error {err:.3e} >= {tol:.0e}\nours:\n{ours}\nreference:\n{reference}"


def iou_of_two_boxes(a, b):
    """IoU of two (x1, y1, x2, y2) boxes given as sequences of Python numbers, with
    torchvision.ops.box_iou's formula (NaN where the union is 0)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else float("nan")


def box_iou_reference(boxes1, boxes2):
    """IoU of every pair of (x1, y1, x2, y2) boxes, (M, 4) x (N, 4) -> (M, N) float64, by a
    scalar double loop over `iou_of_two_boxes`: an independent reference for vectorized IoU code."""
    import torch

    out = torch.zeros(len(boxes1), len(boxes2), dtype=torch.float64)
    for m, a in enumerate(boxes1.tolist()):
        for n, b in enumerate(boxes2.tolist()):
            out[m, n] = iou_of_two_boxes(a, b)
    return out


# What autograd_or_nn_uses flags, with everything under it: torch.nn, autograd, the function
# transforms (torch.func.vjp / grad work even under no_grad and inference_mode), and the
# switches that turn autograd back on inside a no_grad test.
AUTOGRAD_OR_NN_ROOTS = ("torch.nn", "torch.autograd", "torch.func", "functorch", "torch.enable_grad",
                        "torch.set_grad_enabled")


def autograd_or_nn_uses(module):
    """Names in `module`'s source that would make it lean on autograd or torch.nn: attributes,
    names and imports under `AUTOGRAD_OR_NN_ROOTS` (torch.nn, torch.autograd, torch.func,
    functorch, torch.enable_grad, torch.set_grad_enabled), with import aliases resolved (`from
    torch import nn; nn.Linear` gives `torch.nn.Linear`, `import torch as T; T.autograd.grad`
    gives `torch.autograd.grad`), and anything with requires_grad, as a name or as a keyword
    argument (`torch.empty(3, requires_grad=True)` gives "requires_grad="). The from-scratch
    assignment files must give an empty list. (A tensor's `.backward()` cannot be told apart
    from a layer's by name; tests catch it by computing gradients under
    `torch.inference_mode()`, where it fails.)"""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(module))
    aliases = {}  # local name -> the dotted module or object it stands for
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imported.add(alias.name)
                if alias.asname:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module)
            for alias in node.names:
                imported.add(f"{node.module}.{alias.name}")
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def resolved(dotted):
        head, dot, rest = dotted.partition(".")
        return aliases.get(head, head) + dot + rest

    used = {resolved(ast.unparse(node)) for node in ast.walk(tree) if isinstance(node, (ast.Attribute, ast.Name))}
    used |= {f"{node.arg}=" for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg}

    def flagged(name):
        return (any(name == root or name.startswith(root + ".") for root in AUTOGRAD_OR_NN_ROOTS)
                or "requires_grad" in name)

    return sorted(n for n in used | imported if flagged(n))
