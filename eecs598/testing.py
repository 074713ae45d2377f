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


def assert_close(ours, reference, tol, what="value"):
    """Assert rel_error(ours, reference) < tol, printing both on failure."""
    from .grad import rel_error
    err = rel_error(ours, reference)
    assert err < tol, f"{what}: relative error {err:.3e} >= {tol:.0e}\nours:\n{ours}\nreference:\n{reference}"


def box_iou_reference(boxes1, boxes2):
    """IoU of every pair of (x1, y1, x2, y2) boxes, (M, 4) x (N, 4) -> (M, N) float64, by a
    scalar double loop with torchvision.ops.box_iou's formula (NaN where the union is 0): an
    independent reference for vectorized IoU code."""
    import torch

    out = torch.zeros(len(boxes1), len(boxes2), dtype=torch.float64)
    for m, a in enumerate(boxes1.tolist()):
        for n, b in enumerate(boxes2.tolist()):
            w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = w * h
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            out[m, n] = inter / union if union > 0 else float("nan")
    return out


def autograd_or_nn_uses(module):
    """Names in `module`'s source that would make it lean on autograd or torch.nn: attributes
    and imports under torch.nn / torch.autograd, and anything with requires_grad. The
    from-scratch assignment files must give an empty list. (A tensor's `.backward()` cannot be
    told apart from a layer's by name; tests catch it by computing gradients under
    `torch.no_grad()` / `torch.inference_mode()`, where it fails.)"""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(module))
    names = {ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    imports = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
               for alias in node.names} | {node.module for node in ast.walk(tree)
                                           if isinstance(node, ast.ImportFrom) and node.module}
    return sorted(n for n in names | imports if n.startswith(("torch.nn", "torch.autograd")) or "requires_grad" in n)
