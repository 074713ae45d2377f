"""Unit tests for A6/mnist_classifier.py (the evaluation classifier and the Frechet distance).

References: closed forms of the Frechet distance (1-D and diagonal / commuting
covariances), an independent trace term from the eigenvalues of cov_a @ cov_b (numpy, not
the symmetric square-root route of the code), torch.cov for the statistics, and a
hand-built scoring model for the accuracy helpers. No accuracy assertions (those are
recorded by experiments.py); no MNIST needed.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import mnist_classifier as mc
from eecs598.testing import assert_close


def test_classifier_shapes_features_and_input_conversion():
    torch.manual_seed(0)
    model = mc.MnistClassifier().eval()
    x = torch.rand(5, 1, 28, 28)
    assert model(x).shape == (5, 10)
    feats = mc.features(model, x)
    assert feats.shape == (5, mc.FEATURE_DIM) and feats.dtype == torch.float64
    assert (feats >= 0).all()  # post-ReLU penultimate layer
    # Flat GAN-style images in [-1, 1] give the same features as the same images in [0, 1].
    flat = x.reshape(5, 784) * 2 - 1
    assert_close(mc.features(model, flat, value_range=(-1, 1)), feats, 1e-5, "features of rescaled input")
    proba = mc.predict_proba(model, x)
    assert proba.shape == (5, 10)
    assert_close(proba.sum(dim=1), torch.ones(5), 1e-6, "probabilities sum to one")


def test_gaussian_stats_match_torch_cov():
    torch.manual_seed(0)
    feats = torch.randn(50, 4, dtype=torch.float64) @ torch.randn(4, 4, dtype=torch.float64)
    mu, cov = mc.gaussian_stats(feats)
    assert_close(mu, feats.mean(dim=0), 1e-12, "mean")
    assert_close(cov, torch.cov(feats.T), 1e-12, "covariance")


def test_frechet_distance_of_a_set_with_itself_is_zero():
    torch.manual_seed(0)
    feats = torch.randn(500, 16, dtype=torch.float64) @ torch.randn(16, 16, dtype=torch.float64)
    scale = torch.trace(torch.cov(feats.T)).item()
    assert abs(mc.frechet_distance(feats, feats)) < 1e-8 * scale
    assert abs(mc.frechet_distance(feats, feats[torch.randperm(500)])) < 1e-8 * scale


def test_frechet_distance_one_dimension():
    """FD(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2."""
    value = mc.frechet_distance_from_stats(torch.tensor([1.0]), torch.tensor([[4.0]]),
                                           torch.tensor([-2.0]), torch.tensor([[0.25]]))
    assert abs(value - (9.0 + (2.0 - 0.5) ** 2)) < 1e-12


def test_frechet_distance_diagonal_closed_form():
    """Diagonal covariances: |mu_a - mu_b|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    gen = torch.Generator().manual_seed(0)
    d = 20
    f64 = {"generator": gen, "dtype": torch.float64}
    mu_a, mu_b = torch.randn(d, **f64), torch.randn(d, **f64)
    var_a, var_b = torch.rand(d, **f64) * 3, torch.rand(d, **f64) * 3
    var_b[:3] = 0.0  # singular covariance is allowed
    expected = ((mu_a - mu_b) ** 2).sum() + ((var_a.sqrt() - var_b.sqrt()) ** 2).sum()
    value = mc.frechet_distance_from_stats(mu_a, torch.diag(var_a), mu_b, torch.diag(var_b))
    assert abs(value - expected.item()) < 1e-9 * expected.item()


def test_frechet_distance_commuting_rotated_covariances():
    """Covariances sharing an eigenbasis Q: the same closed form in the eigenvalues."""
    gen = torch.Generator().manual_seed(1)
    d = 8
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    a, b = torch.rand(d, generator=gen, dtype=torch.float64) + 0.1, \
        torch.rand(d, generator=gen, dtype=torch.float64) + 0.1
    cov_a, cov_b = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    mu = torch.zeros(d, dtype=torch.float64)
    expected = ((a.sqrt() - b.sqrt()) ** 2).sum().item()
    assert abs(mc.frechet_distance_from_stats(mu, cov_a, mu, cov_b) - expected) < 1e-9


def test_frechet_distance_general_covariances_vs_eigenvalues_of_product():
    """Tr((A^1/2 B A^1/2)^1/2) = sum of sqrt(eigenvalues of A B) (numpy's general eig)."""
    rng = np.random.default_rng(2)
    d = 12
    ma, mb = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    cov_a, cov_b = ma @ ma.T + 0.1 * np.eye(d), mb @ mb.T + 0.1 * np.eye(d)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    trace_sqrt = np.sqrt(np.linalg.eigvals(cov_a @ cov_b).real.clip(min=0)).sum()
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    value = mc.frechet_distance_from_stats(*(torch.from_numpy(t) for t in (mu_a, cov_a, mu_b, cov_b)))
    assert abs(value - expected) < 1e-8 * abs(expected)
    # Symmetric in its arguments.
    swapped = mc.frechet_distance_from_stats(*(torch.from_numpy(t) for t in (mu_b, cov_b, mu_a, cov_a)))
    assert abs(value - swapped) < 1e-8 * abs(expected)


def test_frechet_distance_of_samples_approaches_the_closed_form():
    """20,000 samples of two diagonal Gaussians in 3-D: within 5% of the exact value."""
    gen = torch.Generator().manual_seed(3)
    n = 20_000
    mu_a, mu_b = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    sd_a, sd_b = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([2.0, 1.0, 0.5])
    a = mu_a + sd_a * torch.randn(n, 3, generator=gen)
    b = mu_b + sd_b * torch.randn(n, 3, generator=gen)
    expected = ((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum()
    assert abs(mc.frechet_distance(a, b) - expected.item()) < 0.05 * expected.item()


class _GreyLevelModel(nn.Module):
    """Logits -(9 * mean pixel - k)^2 for k = 0..9: an image filled with k/9 is class k."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        level = 9 * x.mean(dim=(1, 2, 3))
        return -(level[:, None] - torch.arange(10.0)[None]) ** 2 + self.dummy


def test_class_accuracy_and_mean_top_class_probability():
    levels = torch.tensor([0, 3, 3, 9, 5, 7.5])  # the last one sits between 7 and 8
    images = (levels / 9).view(-1, 1, 1, 1).expand(-1, 1, 28, 28).clone()
    labels = torch.tensor([0, 3, 4, 9, 5, 7])
    model = _GreyLevelModel()
    assert abs(mc.class_accuracy(model, images, labels) - 4 / 6) < 1e-12
    logits = -(levels[:, None] - torch.arange(10.0)[None]) ** 2
    expected = logits.softmax(dim=1).max(dim=1).values.mean().item()
    assert abs(mc.mean_top_class_probability(model, images) - expected) < 1e-6
    # The same images flattened to [-1, 1] (the GAN convention).
    flat = images.reshape(6, 784) * 2 - 1
    assert abs(mc.class_accuracy(model, flat, labels, value_range=(-1, 1)) - 4 / 6) < 1e-12


def test_config_key_is_stable_and_specific():
    config = dict(mc.DEFAULT_CONFIG)
    assert mc.config_key(config) == mc.config_key(dict(reversed(list(config.items()))))
    assert mc.config_key(config) != mc.config_key({**config, "epochs": config["epochs"] + 1})


def test_load_or_train_caches_under_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EECS598_CACHE", str(tmp_path / "cache"))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (96,), generator=gen)
    config = {**mc.DEFAULT_CONFIG, "epochs": 1, "num_train": 64, "batch_size": 32}
    model, info = mc.load_or_train(config, device="cpu", verbose=False, data=(x, y, x[64:], y[64:]))
    assert not info["cached"] and info["num_test"] == 32
    path = mc.cache_path(config)
    assert path.is_file() and (tmp_path / "cache") in path.parents
    assert path.name == f"mnist_classifier-{mc.config_key(config)}.pt"
    again, info2 = mc.load_or_train(config, device="cpu", verbose=False, data=None)
    assert info2["cached"] and info2["test_accuracy"] == info["test_accuracy"]
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert not again.training
    with pytest.raises(ValueError, match="num_train=200 but the data hold 96"):  # nothing cached under a false name
        mc.load_or_train({**config, "num_train": 200}, device="cpu", verbose=False, data=(x, y, x[64:], y[64:]))
    assert not mc.cache_path({**config, "num_train": 200}).exists()


def test_onecycle_schedule_is_used_and_trains(monkeypatch):
    created = []
    original = torch.optim.lr_scheduler.OneCycleLR

    def spy(*args, **kwargs):
        created.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.optim.lr_scheduler, "OneCycleLR", spy)
    x = torch.rand(40, 1, 28, 28)
    y = torch.randint(0, 10, (40,))
    model, losses = mc.train_mnist_classifier(x, y, epochs=2, batch_size=16, lr=1e-3, verbose=False)
    assert len(losses) == 2 * math.ceil(40 / 16)
    assert created and created[0]["total_steps"] == len(losses) and created[0]["max_lr"] == 1e-3
    with pytest.raises(ValueError):
        mc.train_mnist_classifier(x, y, epochs=1, schedule="cosine", verbose=False)


def test_features_and_logits_match_the_separate_helpers():
    torch.manual_seed(0)
    model = mc.MnistClassifier().eval()
    x = torch.rand(7, 784) * 2 - 1
    feats, logits = mc.features_and_logits(model, x, value_range=(-1, 1), batch_size=3)
    assert_close(feats, mc.features(model, x, value_range=(-1, 1)), 1e-6, "features")
    assert_close(logits, mc.predict_logits(model, x, value_range=(-1, 1)), 1e-5, "logits")


def test_training_is_seeded_and_leaves_the_global_generator_alone():
    """Two trainings with the same seed give the same model, whatever the global generator's
    state, and the global generator is where it was (the cached-or-trained classifier must not
    change a notebook's later random draws)."""
    x = torch.rand(32, 1, 28, 28)
    y = torch.randint(0, 10, (32,))
    models = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        model, _ = mc.train_mnist_classifier(x, y, epochs=1, batch_size=16, seed=5, verbose=False)
        assert torch.equal(torch.get_rng_state(), state)
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)


def test_measures_restore_the_model_mode():
    model = mc.MnistClassifier().train()
    mc.features(model, torch.rand(3, 784))
    assert model.training
    model.eval()
    mc.predict_logits(model, torch.rand(3, 784))
    assert not model.training
