"""
Helpers for A3 (given code, no solutions here): data loading and plots.

The SVM and softmax losses, which the course shipped in this file, live in
fully_connected_networks.py (`svm_loss`, `softmax_loss`); they are imported here too, so the
course's `from a3_helper import svm_loss, softmax_loss` still works.
"""

import torch

import eecs598
from eecs598.vis import plot_acc_curves, plot_stats, show_net_weights, visualize_grid  # noqa: F401  (shared)
from fully_connected_networks import softmax_loss, svm_loss  # noqa: F401  (the course's import path)


def hello_helper():
    """Smoke test: prints a greeting so the notebook knows this file was imported."""
    print("Hello from a3_helper.py!")


def get_CIFAR10_data(validation_ratio=0.02, flatten=False, dtype=torch.float32, device=None):
    """
    CIFAR-10 for the A3 classifiers: a dict with X_train, y_train, X_val, y_val, X_test,
    y_test (mean-subtracted; (N, 3, 32, 32), or (N, 3072) with flatten=True).

    The course's version always moved the data to CUDA; this one uses `device`
    (None: CUDA when available, else CPU) via `eecs598.data.preprocess_cifar10`.
    validation_ratio keeps the course helper's default 0.02 (49,000 / 1,000); the notebooks and
    experiment modules of this repository do not call this function and use
    preprocess_cifar10's 0.2 (40,000 / 10,000).
    """
    return eecs598.data.preprocess_cifar10(show_examples=False, flatten=flatten,
                                           validation_ratio=validation_ratio, dtype=dtype,
                                           device=eecs598.get_device(device))

