"""A small MNIST classifier used to *measure* generated digits (project infrastructure).

Loss values say little about sample quality, so A6 scores its generative models with a
classifier trained here on real MNIST (>= 99% test accuracy):

* conditional accuracy: the fraction of CVAE digits classified as the digit asked for;
* mean top-class probability: how confidently generated digits look like *some* digit;
* a Frechet distance between the classifier's penultimate-layer features of generated and
  real test digits (the FID recipe, with an MNIST classifier instead of Inception):

      FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)

The trained weights are cached under `eecs598.data.cache_dir()` (never in the repository),
in a file named after a hash of the training configuration, so `make reproduce` and the
notebooks train the classifier once. This file has no solution regions.
"""
import hashlib
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from eecs598.utils import evaluating

ARCHITECTURE_VERSION = "cnn32bn-64bn-fc128-v2"
FEATURE_DIM = 128

DEFAULT_CONFIG = {
    "architecture": ARCHITECTURE_VERSION,
    "epochs": 3,
    "batch_size": 128,
    "lr": 3e-3,  # peak learning rate of the one-cycle schedule
    "schedule": "onecycle",
    "seed": 0,
    "num_train": 60000,
}


class MnistClassifier(nn.Module):
    """Conv(1->32, 3x3) BN ReLU MaxPool, Conv(32->64, 3x3) BN ReLU MaxPool,
    Linear(3136->128) ReLU [features], Linear(128->10). Input: (N, 1, 28, 28) in [0, 1]."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x):
        """(N, 1, 28, 28) images in [0, 1] -> (N, 128) penultimate-layer activations."""
        return self.body((x - 0.5) / 0.5)

    def forward(self, x):
        return self.head(self.features(x))


def config_key(config):
    """A short, stable hash of a training configuration (the cache file name)."""
    text = json.dumps(config, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(config):
    from eecs598.data import cache_dir

    return cache_dir() / "a6" / f"mnist_classifier-{config_key(config)}.pt"


def prepare_images(images, value_range=(0.0, 1.0)):
    """Images of shape (N, 784) or (N, 1, 28, 28) with values in `value_range` -> the
    classifier's input: (N, 1, 28, 28) float in [0, 1]. GAN samples use value_range=(-1, 1)."""
    lo, hi = value_range
    images = images.reshape(images.shape[0], 1, 28, 28).float()
    if (lo, hi) != (0.0, 1.0):
        images = (images - lo) / (hi - lo)
    return images.clamp(0, 1)


def train_mnist_classifier(x_train, y_train, epochs=3, batch_size=128, lr=3e-3, seed=0,
                           device=None, verbose=True, schedule="onecycle"):
    """Train a fresh `MnistClassifier` with Adam on (x_train, y_train); return (model, losses).

    x_train: (N, 1, 28, 28) in [0, 1]; y_train: (N,) int64. `schedule="onecycle"` warms the
    learning rate up to `lr` and anneals it to ~0 over the run (torch OneCycleLR); None keeps
    it constant. The shuffling order and the initialisation come from `seed` (a private
    generator for the order). Three epochs reach about 99.3% test accuracy.
    """
    from eecs598.utils import get_device

    device = get_device(device)
    with torch.random.fork_rng(devices=[]):  # seeded init; the global RNG is left alone
        torch.manual_seed(seed)
        model = MnistClassifier()
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order_gen = torch.Generator().manual_seed(seed)
    n = x_train.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    scheduler = None
    if schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr,
                                                        total_steps=epochs * steps_per_epoch)
    elif schedule is not None:
        raise ValueError(f"unknown schedule {schedule!r}")
    losses = []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=order_gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            x = x_train[idx].to(device)
            y = y_train[idx].to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.item())
            total += losses[-1] * len(idx)
        if verbose:
            print(f"classifier epoch {epoch}: mean training loss {total / n:.4f}")
    model.eval()
    return model, losses


def _in_batches(model, fn, images, value_range, batch_size):
    """[fn(x) for each batch x of prepared `images` on the model's device], model in eval mode
    (its mode is restored afterwards)."""
    with evaluating(model) as (device, _):
        return [fn(prepare_images(images[start:start + batch_size], value_range).to(device))
                for start in range(0, images.shape[0], batch_size)]


def predict_logits(model, images, value_range=(0.0, 1.0), batch_size=1000):
    """Logits (N, 10) on the CPU for images (see `prepare_images`)."""
    out = _in_batches(model, lambda x: model(x).float().cpu(), images, value_range, batch_size)
    return torch.cat(out) if out else torch.zeros(0, 10)


def predict_proba(model, images, value_range=(0.0, 1.0), batch_size=1000):
    """Class probabilities (N, 10) on the CPU."""
    return predict_logits(model, images, value_range, batch_size).softmax(dim=1)


def features(model, images, value_range=(0.0, 1.0), batch_size=1000):
    """Penultimate-layer features (N, 128), float64 on the CPU, for the Frechet distance."""
    out = _in_batches(model, lambda x: model.features(x).double().cpu(), images, value_range, batch_size)
    return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM, dtype=torch.float64)


def features_and_logits(model, images, value_range=(0.0, 1.0), batch_size=1000):
    """`features` and `predict_logits` in one pass: ((N, 128) float64, (N, 10)) on the CPU."""
    def both(x):
        f = model.features(x)
        return f.double().cpu(), model.head(f).float().cpu()

    out = _in_batches(model, both, images, value_range, batch_size)
    if not out:
        return torch.zeros(0, FEATURE_DIM, dtype=torch.float64), torch.zeros(0, 10)
    return torch.cat([f for f, _ in out]), torch.cat([lg for _, lg in out])


def class_accuracy(model, images, labels, value_range=(0.0, 1.0)):
    """Fraction of images whose predicted class equals `labels`."""
    pred = predict_logits(model, images, value_range).argmax(dim=1)
    return (pred == torch.as_tensor(labels).cpu()).double().mean().item()


def mean_top_class_probability(model, images, value_range=(0.0, 1.0)):
    """Mean over images of max_k p(k | image): 1.0 when every image is classified with
    certainty, 0.1 for images that look like no digit in particular."""
    return predict_proba(model, images, value_range).max(dim=1).values.double().mean().item()


def gaussian_stats(feats):
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    feats = torch.as_tensor(feats).double()
    mu = feats.mean(dim=0)
    centred = feats - mu
    cov = centred.T @ centred / max(feats.shape[0] - 1, 1)
    return mu, cov


def _sqrtm_psd(matrix):
    """Square root of a symmetric positive semi-definite matrix (eigendecomposition)."""
    matrix = (matrix + matrix.T) / 2
    w, v = torch.linalg.eigh(matrix)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b):
    """Frechet (2-Wasserstein) distance between N(mu_a, cov_a) and N(mu_b, cov_b):

        |mu_a - mu_b|^2 + Tr(cov_a) + Tr(cov_b) - 2 Tr((cov_a^1/2 cov_b cov_a^1/2)^1/2)

    cov_a^1/2 cov_b cov_a^1/2 is symmetric PSD and similar to cov_a cov_b, so its
    eigenvalues are real and >= 0: no complex matrix square root is needed.
    """
    mu_a, cov_a, mu_b, cov_b = (torch.as_tensor(t).double() for t in (mu_a, cov_a, mu_b, cov_b))
    root_a = _sqrtm_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    eigenvalues = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0)
    value = ((mu_a - mu_b) ** 2).sum() + torch.trace(cov_a) + torch.trace(cov_b) \
        - 2 * eigenvalues.sqrt().sum()
    return max(float(value), 0.0)


def frechet_distance(feats_a, feats_b):
    """Frechet distance between Gaussians fitted to two feature sets (N_a, D), (N_b, D)."""
    return frechet_distance_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


def load_or_train(config=None, device=None, verbose=True, data=None):
    """The evaluation classifier for `config` (default DEFAULT_CONFIG): loaded from the cache
    if a file for this configuration exists, otherwise trained on the first
    `config["num_train"]` MNIST training digits and saved there.

    data: optional (x_train, y_train, x_test, y_test) to avoid reloading MNIST.
    Returns (model in eval mode on `device`, info dict with "test_accuracy", "num_test",
    "train_seconds", "cached", "path", "config").
    """
    from eecs598.data import mnist
    from eecs598.utils import get_device, timer

    config = dict(DEFAULT_CONFIG if config is None else config)
    device = get_device(device)
    path = cache_path(config)
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = MnistClassifier()
        model.load_state_dict(saved["state_dict"])
        model.to(device).eval()
        info = {k: saved[k] for k in ("test_accuracy", "num_test", "train_seconds", "train_device")}
        info.update(cached=True, path=str(path), config=config)
        if verbose:
            print(f"MNIST classifier loaded from {path} "
                  f"(test accuracy {info['test_accuracy']:.4f})")
        return model, info
    if data is None:
        data = mnist()
    x_train, y_train, x_test, y_test = data
    n = config["num_train"]
    if x_train.shape[0] < n:  # the cache file is named by the config: it must be what trained
        raise ValueError(f"config num_train={n} but the data hold {x_train.shape[0]} training images")
    with timer() as t:
        model, _ = train_mnist_classifier(
            x_train[:n], y_train[:n], epochs=config["epochs"], batch_size=config["batch_size"],
            lr=config["lr"], seed=config["seed"], device=device, verbose=verbose,
            schedule=config.get("schedule"))
    accuracy = class_accuracy(model, x_test, y_test)
    info = {"test_accuracy": accuracy, "num_test": int(x_test.shape[0]),
            "train_seconds": t.seconds, "train_device": str(device)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent trainers do not clash
    torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                "config": config, **info}, tmp)
    tmp.replace(path)
    info.update(cached=False, path=str(path), config=config)
    if verbose:
        print(f"MNIST classifier trained in {t.seconds:.1f} s, test accuracy {accuracy:.4f}; "
              f"saved to {path}")
    return model, info
