"""A6 part 2: generative adversarial networks on MNIST (vanilla, least-squares and DC-GAN).

Course API (names and signatures kept): `NOISE_DIM = 96`, `sample_noise`, `discriminator`,
`generator`, `discriminator_loss`, `generator_loss`, `get_optimizer`,
`ls_discriminator_loss`, `ls_generator_loss`, `build_dc_classifier`, `build_dc_generator`,
`run_a_gan`.

Conventions: images enter the discriminators flattened, shape (N, 784), with values in
[-1, 1] (`run_a_gan` rescales real MNIST digits from [0, 1]); the generators output (N, 784)
in [-1, 1] (Tanh). Discriminators return one logit (score) per image, shape (N, 1).

Differences from the reference solutions (on purpose): nothing is hard-coded to CUDA
(`sample_noise` honours `device` and `dtype`, the losses build their targets with
`*_like`), and `run_a_gan` trains on the discriminator's device and returns its history
(losses and sample snapshots) instead of only plotting.
"""
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from eecs598.utils import evaluating

NOISE_DIM = 96


def hello_gan():
    """Smoke test: check that this file is importable from the notebook."""
    print("Hello from gan.py!")


def sample_noise(batch_size, noise_dim, dtype=torch.float, device="cpu"):
    """Generate a PyTorch Tensor of uniform random noise.

    Input:
    - batch_size: Integer giving the batch size of noise to generate.
    - noise_dim: Integer giving the dimension of noise to generate.
    - dtype, device: dtype and device of the result.

    Output:
    - A PyTorch Tensor of shape (batch_size, noise_dim) containing uniform
      random noise in the range [-1, 1).
    """
    noise = None
    ### BEGIN SOLUTION
    ### HINT: create the tensor directly on `device` in `dtype` (torch.rand rescaled to [-1, 1), or torch.empty(...).uniform_(-1, 1)).
    noise = torch.empty(batch_size, noise_dim, dtype=dtype, device=device).uniform_(-1, 1)
    ### END SOLUTION
    return noise


def discriminator():
    """Build and return a PyTorch nn.Sequential model implementing the architecture:

    Flatten, Linear(784, 256), LeakyReLU(0.01), Linear(256, 256), LeakyReLU(0.01), Linear(256, 1)
    """
    model = None
    ### BEGIN SOLUTION
    ### HINT: nn.Sequential with the layers listed in the docstring.
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256), nn.LeakyReLU(0.01),
        nn.Linear(256, 256), nn.LeakyReLU(0.01),
        nn.Linear(256, 1),
    )
    ### END SOLUTION
    return model


def generator(noise_dim=NOISE_DIM):
    """Build and return a PyTorch nn.Sequential model implementing the architecture:

    Linear(noise_dim, 1024), ReLU, Linear(1024, 1024), ReLU, Linear(1024, 784), Tanh
    """
    model = None
    ### BEGIN SOLUTION
    ### HINT: nn.Sequential with the layers listed in the docstring.
    model = nn.Sequential(
        nn.Linear(noise_dim, 1024), nn.ReLU(),
        nn.Linear(1024, 1024), nn.ReLU(),
        nn.Linear(1024, 784), nn.Tanh(),
    )
    ### END SOLUTION
    return model


def discriminator_loss(logits_real, logits_fake):
    """Computes the discriminator loss of the vanilla GAN (Goodfellow et al.).

    Inputs:
    - logits_real: PyTorch Tensor of shape (N,) or (N, 1) giving scores for the real data.
    - logits_fake: PyTorch Tensor of shape (N,) or (N, 1) giving scores for the fake data.

    Returns:
    - loss: PyTorch Tensor containing (scalar) the loss for the discriminator:
      the binary cross-entropy of the real logits against label 1 plus that of the fake
      logits against label 0, each averaged over the batch.
    """
    loss = None
    ### BEGIN SOLUTION
    ### HINT: F.binary_cross_entropy_with_logits with targets torch.ones_like / torch.zeros_like.
    real = F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
    fake = F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
    loss = real + fake
    ### END SOLUTION
    return loss


def generator_loss(logits_fake):
    """Computes the non-saturating generator loss of the vanilla GAN (Goodfellow et al.).

    Inputs:
    - logits_fake: PyTorch Tensor of shape (N,) or (N, 1) giving scores for the fake data.

    Returns:
    - loss: PyTorch Tensor containing the (scalar) loss for the generator: the binary
      cross-entropy of the fake logits against label 1, averaged over the batch.
    """
    loss = None
    ### BEGIN SOLUTION
    ### HINT: F.binary_cross_entropy_with_logits with targets torch.ones_like(logits_fake).
    loss = F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))
    ### END SOLUTION
    return loss


def get_optimizer(model):
    """Construct and return an Adam optimizer for the model with learning rate 1e-3 and
    beta1=0.5, beta2=0.999.

    Input:
    - model: A PyTorch model that we want to optimize.

    Returns:
    - An Adam optimizer for the model with the desired hyperparameters.
    """
    optimizer = None
    ### BEGIN SOLUTION
    ### HINT: torch.optim.Adam(model.parameters(), lr=..., betas=(..., ...))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))
    ### END SOLUTION
    return optimizer


def ls_discriminator_loss(scores_real, scores_fake):
    """Compute the Least-Squares GAN loss for the discriminator.

    Inputs:
    - scores_real: PyTorch Tensor of shape (N,) or (N, 1) giving scores for the real data.
    - scores_fake: PyTorch Tensor of shape (N,) or (N, 1) giving scores for the fake data.

    Outputs:
    - loss: 1/2 mean((scores_real - 1)^2) + 1/2 mean(scores_fake^2)
    """
    loss = None
    ### BEGIN SOLUTION
    ### HINT: two means of squares, each times 0.5.
    loss = 0.5 * torch.mean((scores_real - 1) ** 2) + 0.5 * torch.mean(scores_fake ** 2)
    ### END SOLUTION
    return loss


def ls_generator_loss(scores_fake):
    """Computes the Least-Squares GAN loss for the generator.

    Inputs:
    - scores_fake: PyTorch Tensor of shape (N,) or (N, 1) giving scores for the fake data.

    Outputs:
    - loss: 1/2 mean((scores_fake - 1)^2)
    """
    loss = None
    ### BEGIN SOLUTION
    ### HINT: one mean of squares, times 0.5.
    loss = 0.5 * torch.mean((scores_fake - 1) ** 2)
    ### END SOLUTION
    return loss


def build_dc_classifier():
    """Build and return a PyTorch nn.Sequential model for the DCGAN discriminator.
    It takes flattened images (N, 784) and implements the architecture:

    Unflatten(1, (1, 28, 28)),
    Conv2d(1, 32, 5), LeakyReLU(0.01), MaxPool2d(2, 2),
    Conv2d(32, 64, 5), LeakyReLU(0.01), MaxPool2d(2, 2),
    Flatten, Linear(4*4*64, 4*4*64), LeakyReLU(0.01), Linear(4*4*64, 1)
    """
    model = None
    ### BEGIN SOLUTION
    ### HINT: nn.Sequential with the layers listed in the docstring.
    model = nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 32, kernel_size=5, stride=1), nn.LeakyReLU(0.01),
        nn.MaxPool2d(kernel_size=2, stride=2),
        nn.Conv2d(32, 64, kernel_size=5, stride=1), nn.LeakyReLU(0.01),
        nn.MaxPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 64, 4 * 4 * 64), nn.LeakyReLU(0.01),
        nn.Linear(4 * 4 * 64, 1),
    )
    ### END SOLUTION
    return model


def build_dc_generator(noise_dim=NOISE_DIM):
    """Build and return a PyTorch nn.Sequential model implementing the DCGAN generator:

    Linear(noise_dim, 1024), ReLU, BatchNorm1d(1024),
    Linear(1024, 7*7*128), ReLU, BatchNorm1d(7*7*128), Unflatten(1, (128, 7, 7)),
    ConvTranspose2d(128, 64, 4, stride=2, padding=1), ReLU, BatchNorm2d(64),
    ConvTranspose2d(64, 1, 4, stride=2, padding=1), Tanh, Flatten
    The output has shape (N, 784).
    """
    model = None
    ### BEGIN SOLUTION
    ### HINT: nn.Sequential with the layers listed in the docstring.
    model = nn.Sequential(
        nn.Linear(noise_dim, 1024), nn.ReLU(), nn.BatchNorm1d(1024),
        nn.Linear(1024, 7 * 7 * 128), nn.ReLU(), nn.BatchNorm1d(7 * 7 * 128),
        nn.Unflatten(1, (128, 7, 7)),
        nn.ConvTranspose2d(128, 64, kernel_size=4, stride=2, padding=1), nn.ReLU(),
        nn.BatchNorm2d(64),
        nn.ConvTranspose2d(64, 1, kernel_size=4, stride=2, padding=1), nn.Tanh(),
        nn.Flatten(),
    )
    ### END SOLUTION
    return model


# --------------------------------------------------------------------------------------
# Training loop and display helpers (given)
# --------------------------------------------------------------------------------------

def image_grid(images, nrow=None, padding=2, pad_value=0.0):
    """(N, 784) or (N, 1, H, W) images (a tensor, or a numpy array as the course's notebooks
    pass) -> one (H', W') numpy grid for plt.imshow.

    Images with negative values are assumed to be in [-1, 1] and mapped to [0, 1].
    `nrow` images per row (default: about sqrt(N)).
    """
    images = torch.as_tensor(images).detach().to("cpu", torch.float32)
    n = images.shape[0]
    side = math.isqrt(images[0].numel())
    images = images.reshape(n, side, side)
    if images.min() < 0:
        images = (images + 1) / 2
    images = images.clamp(0, 1)
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    step = side + padding
    grid = torch.full((ncol * step + padding, nrow * step + padding), float(pad_value))
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[padding + r * step: padding + r * step + side,
             padding + c * step: padding + c * step + side] = images[i]
    return grid.numpy()


def show_images(images, nrow=None, title=None, ax=None):
    """Show a batch of MNIST-sized images as one grid (see `image_grid`)."""
    import matplotlib.pyplot as plt

    grid = image_grid(images, nrow=nrow)
    if ax is None:
        scale = 0.4 * (grid.shape[1] / 30)
        plt.figure(figsize=(max(3.0, scale), max(3.0, scale * grid.shape[0] / grid.shape[1])))
        ax = plt.gca()
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title)
    return ax


def _in_notebook():
    return "ipykernel" in sys.modules


def _model_device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def run_a_gan(D, G, D_solver, G_solver, discriminator_loss, generator_loss, loader_train,
              show_every=250, batch_size=128, noise_size=96, num_epochs=10, device=None,
              max_iters=None, plot=None, num_snapshot=16, verbose=True):
    """Train a GAN: for every batch, one discriminator step then one generator step.

    Inputs:
    - D, G: PyTorch models for the discriminator and generator
    - D_solver, G_solver: torch.optim Optimizers to use for training the
      discriminator and generator.
    - discriminator_loss, generator_loss: Functions to use for computing the discriminator and
      generator loss, respectively.
    - loader_train: iterable of (x, y) batches of real images in [0, 1] (y is ignored);
      batches whose size is not `batch_size` are skipped, as in the course (a ValueError if
      a whole epoch has none).
    - show_every: every `show_every` iterations (and at the end) record the losses and a
      snapshot of G on a fixed noise batch of `num_snapshot` vectors; shown as an image
      grid when `plot` (default: only inside a notebook kernel; never when headless).
    - batch_size, noise_size, num_epochs: as in the course.
    - device: where to train (default: the device of D's parameters).
    - max_iters: optional cap on the number of iterations (smoke runs).

    Returns a history dict: "iteration", "d_loss", "g_loss" (every iteration),
    "snapshots" (list of (iteration, (num_snapshot, 784) CPU tensor in [-1, 1])),
    "iterations" (the number of iterations run).
    """
    device = _model_device(D) if device is None else torch.device(device)
    dtype = next(D.parameters()).dtype
    D.to(device)
    G.to(device)
    if plot is None:
        plot = _in_notebook()
    fixed_noise = sample_noise(num_snapshot, noise_size, dtype=dtype, device=device)
    history = {"iteration": [], "d_loss": [], "g_loss": [], "snapshots": [], "iterations": 0}

    def snapshot(iter_count):
        with evaluating(G):
            images = G(fixed_noise).to("cpu", torch.float32).reshape(num_snapshot, -1)
        history["snapshots"].append((iter_count, images))
        if verbose:
            print(f"Iter: {iter_count}, D: {history['d_loss'][-1]:.4}, G: {history['g_loss'][-1]:.4}")
        if plot:
            import matplotlib.pyplot as plt
            show_images(images, title=f"iteration {iter_count}")
            plt.show()

    iter_count = 0
    done = False
    D.train()
    G.train()
    for epoch in range(num_epochs):
        for x, _ in loader_train:
            if len(x) != batch_size:
                continue
            real_data = x.to(device=device, dtype=dtype).reshape(batch_size, -1)
            D_solver.zero_grad()
            logits_real = D(2 * (real_data - 0.5))
            g_fake_seed = sample_noise(batch_size, noise_size, dtype=dtype, device=device)
            fake_images = G(g_fake_seed).detach()
            logits_fake = D(fake_images.reshape(batch_size, -1))
            d_total_error = discriminator_loss(logits_real, logits_fake)
            d_total_error.backward()
            D_solver.step()

            G_solver.zero_grad()
            g_fake_seed = sample_noise(batch_size, noise_size, dtype=dtype, device=device)
            fake_images = G(g_fake_seed)
            gen_logits_fake = D(fake_images.reshape(batch_size, -1))
            g_error = generator_loss(gen_logits_fake)
            g_error.backward()
            G_solver.step()

            history["iteration"].append(iter_count)
            history["d_loss"].append(d_total_error.item())
            history["g_loss"].append(g_error.item())
            if show_every and iter_count % show_every == 0:
                snapshot(iter_count)
            iter_count += 1
            if max_iters is not None and iter_count >= max_iters:
                done = True
                break
        if iter_count == 0:
            raise ValueError(f"loader_train gave no batch of batch_size={batch_size} images in a whole "
                             "epoch (batches of another size are skipped): pass the loader's batch size")
        if done:
            break
    history["iterations"] = iter_count
    if iter_count and (not history["snapshots"] or history["snapshots"][-1][0] != iter_count - 1):
        snapshot(iter_count - 1)
    return history
