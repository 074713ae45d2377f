"""Helpers for the project's tests (importable from any test folder and from a student copy)."""
import os
from pathlib import Path

import pytest


def shared_data_available(*parts):
    """True when the data root ($EECS598_DATA) holds the given path."""
    root = os.environ.get("EECS598_DATA")
    return bool(root) and Path(root, *parts).exists()


def cifar_available():
    return any(shared_data_available("cifar10", name) for name in
               ("cifar10-jpeg.zip", "cifar-10-python.tar.gz", "cifar-10-batches-py"))


requires_cifar = pytest.mark.skipif(not cifar_available(), reason="CIFAR-10 not in $EECS598_DATA")


def assert_close(ours, reference, tol, what="value"):
    """Assert rel_error(ours, reference) < tol, printing both on failure."""
    from .grad import rel_error
    err = rel_error(ours, reference)
    assert err < tol, f"{what}: relative error {err:.3e} >= {tol:.0e}\nours:\n{ours}\nreference:\n{reference}"
