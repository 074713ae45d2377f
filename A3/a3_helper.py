"""
Helpers for A3 (given code, no solutions here): data loading and plots.

The SVM and softmax losses, which the course shipped in this file, live in
fully_connected_networks.py (`svm_loss`, `softmax_loss`).
"""
import math

import matplotlib.pyplot as plt
import torch

import eecs598


def hello_helper():
    """Smoke test: prints a greeting so the notebook knows this file was imported."""
    print("Hello from a3_helper.py!")


def get_CIFAR10_data(validation_ratio=0.02, flatten=False, dtype=torch.float32, device=None):
    """
    CIFAR-10 for the A3 classifiers: a dict with X_train, y_train, X_val, y_val, X_test,
    y_test (mean-subtracted; (N, 3, 32, 32), or (N, 3072) with flatten=True).

    The course's version always moved the data to CUDA; this one uses `device`
    (None: CUDA when available, else CPU) via `eecs598.data.preprocess_cifar10`.
    """
    return eecs598.data.preprocess_cifar10(show_examples=False, flatten=flatten,
                                           validation_ratio=validation_ratio, dtype=dtype,
                                           device=eecs598.get_device(device))


def _stat(stat_dict, name):
    """Read `name` from a dict or from an object such as a Solver."""
    if isinstance(stat_dict, dict):
        return stat_dict[name]
    return getattr(stat_dict, name)


def plot_stats(stat_dict):
    """
    Plot the loss history and the train / val accuracy histories side by side.

    stat_dict: a dict with 'loss_history', 'train_acc_history', 'val_acc_history', or a
    trained Solver (which has these attributes).
    """
    plt.subplot(1, 2, 1)
    plt.plot(_stat(stat_dict, "loss_history"), "o", markersize=2)
    plt.title("Loss history")
    plt.xlabel("Iteration")
    plt.ylabel("Loss")

    plt.subplot(1, 2, 2)
    plt.plot(_stat(stat_dict, "train_acc_history"), "o-", label="train")
    plt.plot(_stat(stat_dict, "val_acc_history"), "o-", label="val")
    plt.title("Classification accuracy history")
    plt.xlabel("Epoch")
    plt.ylabel("Classification accuracy")
    plt.legend()

    plt.gcf().set_size_inches(14, 4)
    plt.show()


def visualize_grid(Xs, ubound=255.0, padding=1):
    """
    Reshape a 4D tensor of image data to a grid for easy visualization.

    Inputs:
    - Xs: Data of shape (N, H, W, C)
    - ubound: Output grid will have values scaled to the range [0, ubound]
    - padding: The number of blank pixels between elements of the grid

    Each image is min-max scaled on its own. Returns a (grid_height, grid_width, C) tensor
    on the CPU.
    """
    Xs = Xs.detach().to("cpu", torch.float64)
    (N, H, W, C) = Xs.shape
    grid_size = int(math.ceil(math.sqrt(N)))
    grid_height = H * grid_size + padding * (grid_size - 1)
    grid_width = W * grid_size + padding * (grid_size - 1)
    grid = torch.zeros((grid_height, grid_width, C), dtype=Xs.dtype)
    next_idx = 0
    y0, y1 = 0, H
    for y in range(grid_size):
        x0, x1 = 0, W
        for x in range(grid_size):
            if next_idx < N:
                img = Xs[next_idx]
                low, high = torch.min(img), torch.max(img)
                grid[y0:y1, x0:x1] = ubound * (img - low) / (high - low).clamp(min=1e-12)
                next_idx += 1
            x0 += W + padding
            x1 += W + padding
        y0 += H + padding
        y1 += H + padding
    return grid


def show_net_weights(net):
    """
    Visualize the first-layer weights of a network trained on CIFAR-10: W1 (3072, H) is
    shown as H small 32x32 colour images.

    net: a model whose params['W1'] has shape (3 * 32 * 32, H).
    """
    W1 = net.params["W1"]
    W1 = W1.detach().reshape(3, 32, 32, -1).permute(3, 1, 2, 0)  # (H, 32, 32, 3)
    plt.imshow(visualize_grid(W1, padding=3).to(torch.uint8).numpy())
    plt.gca().axis("off")
    plt.show()


def plot_acc_curves(stat_dict):
    """
    Plot train and validation accuracy of several configurations.

    stat_dict: {label: stats}, each stats being a dict with 'train_acc_history' and
    'val_acc_history' (or a Solver).
    """
    plt.subplot(1, 2, 1)
    for key, single_stats in stat_dict.items():
        plt.plot(_stat(single_stats, "train_acc_history"), label=str(key))
    plt.title("Train accuracy history")
    plt.xlabel("Epoch")
    plt.ylabel("Classification accuracy")

    plt.subplot(1, 2, 2)
    for key, single_stats in stat_dict.items():
        plt.plot(_stat(single_stats, "val_acc_history"), label=str(key))
    plt.title("Validation accuracy history")
    plt.xlabel("Epoch")
    plt.ylabel("Classification accuracy")
    plt.legend()

    plt.gcf().set_size_inches(14, 5)
    plt.show()
