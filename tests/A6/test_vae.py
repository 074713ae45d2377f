"""Unit tests for A6/vae.py (VAE, CVAE, reparametrize, loss_function, one_hot, train_vae).

References are independent of the code under test: parameter counts from the layer sizes
of the course's architecture, torch.distributions for the KL term, the explicit BCE
formula in float64, F.one_hot, and the sampling distribution of the mean/variance for the
reparametrization statistics. Synthetic tensors throughout; one optional test uses the
first 512 MNIST digits and skips without the data.
"""
import copy
import inspect
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import eecs598.testing
import vae
from eecs598.reproduce import load_experiments
from eecs598.testing import assert_close

A6 = Path(__file__).resolve().parents[2] / "A6"  # experiments.py by path (tests/conftest.py)

H, Z, C = 400, 15, 10


def _linear_count(fan_in, fan_out):
    return fan_in * fan_out + fan_out


def _linear_shapes(module):
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_hello(capsys):
    vae.hello_vae()
    assert capsys.readouterr().out.strip() == "Hello from vae.py!"


def test_vae_architecture_and_parameter_count():
    model = vae.VAE(784, latent_size=Z)
    assert model.hidden_dim == H and model.latent_size == Z
    assert _linear_shapes(model.encoder) == [(784, H), (H, H), (H, H)]
    assert _linear_shapes(model.mu_layer) == [(H, Z)]
    assert _linear_shapes(model.logvar_layer) == [(H, Z)]
    assert _linear_shapes(model.decoder) == [(Z, H), (H, H), (H, H), (H, 784)]
    assert isinstance(model.encoder[0], nn.Flatten)
    assert any(isinstance(m, nn.Sigmoid) for m in model.decoder)
    expected = (_linear_count(784, H) + 2 * _linear_count(H, H) + 2 * _linear_count(H, Z)
                + _linear_count(Z, H) + 2 * _linear_count(H, H) + _linear_count(H, 784))
    assert sum(p.numel() for p in model.parameters()) == expected == 1_288_414


def test_cvae_architecture_and_parameter_count():
    model = vae.CVAE(784, num_classes=C, latent_size=Z)
    assert _linear_shapes(model.encoder) == [(784 + C, H), (H, H), (H, H)]
    assert _linear_shapes(model.decoder) == [(Z + C, H), (H, H), (H, H), (H, 784)]
    expected = (_linear_count(784 + C, H) + 2 * _linear_count(H, H) + 2 * _linear_count(H, Z)
                + _linear_count(Z + C, H) + 2 * _linear_count(H, H) + _linear_count(H, 784))
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vae_forward_shapes_range_and_dtype(dtype):
    torch.manual_seed(0)
    model = vae.VAE(784).to(dtype)
    x = torch.rand(5, 1, 28, 28, dtype=dtype)
    x_hat, mu, logvar = model(x)
    assert x_hat.shape == (5, 1, 28, 28) and mu.shape == (5, Z) and logvar.shape == (5, Z)
    assert x_hat.dtype == mu.dtype == logvar.dtype == dtype
    assert (x_hat > 0).all() and (x_hat < 1).all()


def test_vae_forward_samples_from_the_posterior():
    """mu/logvar are deterministic given x; x_hat depends on the noise (the seed)."""
    torch.manual_seed(0)
    model = vae.VAE(784)
    x = torch.rand(4, 1, 28, 28)
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    torch.manual_seed(1)
    c = model(x)
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert not torch.equal(a[0], b[0])
    assert torch.equal(a[0], c[0])
    # The decoder sees mu + sigma * eps, recomputed here with the same noise.
    torch.manual_seed(1)
    eps = torch.randn(4, Z)
    expected = model.decoder(a[1] + torch.exp(0.5 * a[2]) * eps)
    assert_close(a[0], expected, 1e-5, "x_hat vs decoder(mu + sigma * eps)")


def test_cvae_forward_shapes_and_conditioning():
    torch.manual_seed(0)
    model = vae.CVAE(784)
    x = torch.rand(6, 1, 28, 28)
    c = vae.one_hot(torch.tensor([0, 1, 2, 3, 4, 5]), C)
    x_hat, mu, logvar = model(x, c)
    assert x_hat.shape == (6, 1, 28, 28) and mu.shape == (6, Z) and logvar.shape == (6, Z)
    # The label changes the posterior (it enters the encoder).
    _, mu2, _ = model(x, vae.one_hot(torch.tensor([9, 9, 9, 9, 9, 9]), C))
    assert not torch.allclose(mu, mu2)


def test_cvae_decoder_reads_z_and_the_label(monkeypatch):
    """x_hat is the decoder applied to [z, c] (z = the reparametrized sample, here made
    deterministic as mu); the label changes what the decoder draws for the same z."""
    torch.manual_seed(0)
    monkeypatch.setattr(vae, "reparametrize", lambda mu, logvar: mu)
    model = vae.CVAE(784)
    x = torch.rand(6, 1, 28, 28)
    c = vae.one_hot(torch.tensor([0, 1, 2, 3, 4, 5]), C).float()
    x_hat, mu, _ = model(x, c)
    with torch.no_grad():
        expected = model.decoder(torch.cat([mu, c], dim=1)).reshape_as(x_hat)
        other = model.decoder(torch.cat([mu, c.roll(1, dims=0)], dim=1)).reshape_as(x_hat)
    assert_close(x_hat.detach(), expected, 1e-6, "x_hat = decoder([z, c])")
    assert (other - expected).abs().max() > 1e-3, "the decoder ignores the label"


def test_reparametrize_statistics():
    """Mean and variance of 200,000 samples vs mu and exp(logvar).

    Tolerance: 5 standard errors of the sample mean (sigma / sqrt(n)) and of the sample
    variance (sigma^2 * sqrt(2 / (n - 1)) for a normal distribution).
    """
    torch.manual_seed(0)
    n = 200_000
    mu0 = torch.tensor([0.0, 2.0, -3.0, 0.5], dtype=torch.float64)
    logvar0 = torch.tensor([0.0, -2.0, 1.5, 0.3], dtype=torch.float64)
    z = vae.reparametrize(mu0.expand(n, 4).clone(), logvar0.expand(n, 4).clone())
    assert z.shape == (n, 4) and z.dtype == torch.float64
    var0 = logvar0.exp()
    mean_err = (z.mean(dim=0) - mu0).abs()
    var_err = (z.var(dim=0) - var0).abs()
    assert (mean_err < 5 * var0.sqrt() / n ** 0.5).all(), (z.mean(dim=0), mu0)
    assert (var_err < 5 * var0 * (2 / (n - 1)) ** 0.5).all(), (z.var(dim=0), var0)
    # Samples are not all equal (noise is drawn per element).
    assert z[:, 0].unique().numel() > n // 2


def test_reparametrize_gradients():
    """dz/dmu = 1 and dz/dlogvar = 0.5 * exp(logvar / 2) * eps (eps = (z - mu) / sigma)."""
    torch.manual_seed(0)
    mu = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    z = vae.reparametrize(mu, logvar)
    assert z.requires_grad
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None
    assert torch.equal(mu.grad, torch.ones_like(mu))
    with torch.no_grad():
        sigma = torch.exp(0.5 * logvar)
        eps = (z - mu) / sigma
        assert_close(logvar.grad, 0.5 * sigma * eps, 1e-10, "d sum(z) / d logvar")


def test_reparametrize_honours_dtype_and_device():
    mu = torch.zeros(2, 3, dtype=torch.float64)
    z = vae.reparametrize(mu, mu)
    assert z.dtype == torch.float64 and z.device == mu.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reparametrize_and_models_on_cuda():
    mu = torch.zeros(2, 3, device="cuda")
    assert vae.reparametrize(mu, mu).device == mu.device
    model = vae.CVAE(784).to("cuda")
    x_hat, _, _ = model(torch.rand(2, 1, 28, 28, device="cuda"),
                        vae.one_hot(torch.tensor([1, 2], device="cuda"), C))
    assert x_hat.device == mu.device


def _reference_loss(x_hat, x, mu, logvar):
    """Independent negative ELBO per sample: explicit BCE in float64 + torch.distributions KL."""
    x_hat, x, mu, logvar = (t.double() for t in (x_hat, x, mu, logvar))
    bce = -(x * torch.log(x_hat) + (1 - x) * torch.log(1 - x_hat)).sum()
    posterior = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    prior = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    kl = torch.distributions.kl_divergence(posterior, prior).sum()
    return (bce + kl) / mu.shape[0]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_loss_function_matches_independent_reference(dtype, tol):
    torch.manual_seed(0)
    N = 7
    x = torch.rand(N, 1, 28, 28, dtype=dtype)
    x_hat = torch.rand(N, 1, 28, 28, dtype=dtype) * 0.98 + 0.01
    mu = torch.randn(N, Z, dtype=dtype)
    logvar = torch.randn(N, Z, dtype=dtype)
    loss = vae.loss_function(x_hat, x, mu, logvar)
    assert loss.dim() == 0
    assert_close(loss.double(), _reference_loss(x_hat, x, mu, logvar), tol, "negative ELBO")


def test_loss_function_is_a_per_sample_average_and_differentiable():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    x_hat = (torch.rand(3, 1, 28, 28, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    mu = torch.randn(3, Z, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(3, Z, dtype=torch.float64, requires_grad=True)
    loss = vae.loss_function(x_hat, x, mu, logvar)
    doubled = vae.loss_function(x_hat.repeat(2, 1, 1, 1), x.repeat(2, 1, 1, 1),
                                mu.repeat(2, 1), logvar.repeat(2, 1))
    assert_close(doubled, loss, 1e-12, "loss of a batch repeated twice")
    loss.backward()
    # d/dmu of KL/N = mu / N.
    assert_close(mu.grad, mu.detach() / 3, 1e-10, "d loss / d mu")
    assert x_hat.grad is not None and logvar.grad is not None


def test_one_hot_matches_F_one_hot():
    labels = torch.tensor([3, 0, 9, 9, 1])
    out = vae.one_hot(labels, 10)
    assert out.dtype.is_floating_point and out.shape == (5, 10)
    assert torch.equal(out, F.one_hot(labels, 10).float())


def test_initialize_weights_is_xavier_uniform_and_leaves_biases():
    """Xavier-uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), so std a / sqrt(3)
    (the formula of Glorot & Bengio 2010, not torch.nn.init). Biases and other modules keep
    their values. Statistical tolerances: 240,000 / 160,000 draws, std within 2%."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(600, 400), nn.ReLU(), nn.ConvTranspose2d(400, 8, 7),
                          nn.BatchNorm2d(8))
    biases = [model[0].bias.detach().clone(), model[2].bias.detach().clone()]
    bn_weight = model[3].weight.detach().clone()
    model.apply(vae.initialize_weights)
    # ConvTranspose2d(400, 8, 7): weight (400, 8, 7, 7), fan_in = 8 * 49, fan_out = 400 * 49.
    for w, fan_in, fan_out in ((model[0].weight, 600, 400), (model[2].weight, 8 * 49, 400 * 49)):
        a = (6.0 / (fan_in + fan_out)) ** 0.5
        assert w.abs().max().item() <= a
        assert abs(w.std().item() / (a / 3 ** 0.5) - 1) < 0.02
        assert abs(w.mean().item()) < 0.02 * a
    assert torch.equal(model[0].bias, biases[0]) and torch.equal(model[2].bias, biases[1])
    assert torch.equal(model[3].weight, bn_weight)


@pytest.mark.parametrize("cond", [False, True])
def test_experiments_build_vae_uses_xavier_init_by_default(cond):
    """experiments.build_vae: Xavier-uniform Linear weights (std sqrt(2 / (fan_in + fan_out)))
    by default, PyTorch's default (U(+-1/sqrt(fan_in)), std 1/sqrt(3 fan_in)) with
    init="default". 400 x 400 weights: std within 3%."""
    experiments = load_experiments(A6)

    torch.manual_seed(0)
    for init, std in (("xavier", (2.0 / (H + H)) ** 0.5), ("default", 1.0 / (3 * H) ** 0.5)):
        model = experiments.build_vae(cond, init=init)
        hidden = [m for m in model.encoder.modules() if isinstance(m, nn.Linear)][1]
        assert (hidden.in_features, hidden.out_features) == (H, H)
        assert abs(hidden.weight.std().item() / std - 1) < 0.03, init
    with pytest.raises(ValueError):
        experiments.build_vae(cond, init="nonsense")


class _PixelReader(nn.Module):
    """A stand-in classifier with MnistClassifier's interface: features = the first 10 pixels
    (scaled), head = identity, so an image that lights pixel k is classified as k."""

    def __init__(self):
        super().__init__()
        self.head = nn.Identity()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def features(self, x):
        return self.scale * x.flatten(1)[:, :10]

    def forward(self, x):
        return self.head(self.features(x))


class _NormGatedDecoder(nn.Module):
    """Decodes cat([z, one_hot(label)]) to an image lighting pixel `label` when |z| < radius,
    and pixel label + 1 (a wrong digit) otherwise."""

    def __init__(self, latent_size, radius):
        super().__init__()
        self.latent_size, self.radius = latent_size, radius

    def forward(self, zc):
        z, c = zc[:, :self.latent_size], zc[:, self.latent_size:]
        label = c.argmax(1)
        shown = torch.where(z.norm(dim=1) < self.radius, label, (label + 1) % 10)
        out = torch.zeros(zc.shape[0], 784)
        out[torch.arange(zc.shape[0]), shown] = 1.0
        return out.view(-1, 1, 28, 28)


def test_conditional_accuracy_by_latent_norm_sorts_the_same_digits_by_z_norm():
    """With a decoder that gets the digit wrong exactly when |z| >= radius (the median norm of
    the drawn z), the inner half of the groups is all right and the outer half all wrong; the
    groups' mean equals cvae_conditional_accuracy on the same samples."""
    experiments = load_experiments(A6)

    per_digit, seed = 40, 3
    z = torch.randn(10 * per_digit, Z, generator=torch.Generator().manual_seed(seed))
    radius = z.norm(dim=1).median().item() + 1e-6
    model = vae.CVAE(784, latent_size=Z)
    model.decoder = _NormGatedDecoder(Z, radius)
    classifier = _PixelReader()
    by_norm, edges = experiments.conditional_accuracy_by_latent_norm(model, classifier, per_digit,
                                                                     seed=seed, bins=4)
    overall, _ = experiments.cvae_conditional_accuracy(model, classifier, per_digit, seed=seed)
    assert by_norm.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert torch.all(edges[1:] > edges[:-1])
    assert by_norm.mean().item() == pytest.approx(overall) == pytest.approx(0.5, abs=0.01)
    hits = experiments.requested_digit_hits(model, classifier, per_digit, seed=seed)
    assert experiments.cvae_conditional_accuracy(model, classifier, hits=hits)[0] == overall
    assert torch.equal(experiments.conditional_accuracy_by_latent_norm(model, classifier, hits=hits)[0], by_norm)
    # 400 digits in 3 groups: sizes 134, 133, 133 (chunk would give 134, 134, 132)
    by_norm3, _ = experiments.conditional_accuracy_by_latent_norm(model, classifier, hits=hits, bins=3)
    inner = (hits[2].sort().values < radius).double()  # the right ones, in |z| order
    assert torch.allclose(by_norm3, torch.stack([inner[:134].mean(), inner[134:267].mean(), inner[267:].mean()]))


def test_latent_class_probe_reads_a_code_that_carries_the_digit_and_not_noise():
    """An encoder whose posterior mean spells out the digit (here: one-hot of the label, for a
    CVAE, which sees the label) scores ~1; one whose mean ignores the input scores ~chance."""
    experiments = load_experiments(A6)

    x, y = _synthetic_digits(600, seed=1)
    xt, yt = _synthetic_digits(300, seed=2)
    model = vae.CVAE(784, latent_size=Z)
    model.encoder = nn.Identity()  # the encoder input is cat([x.flatten(1), one_hot(y)])
    copy_label = nn.Linear(784 + C, Z)
    with torch.no_grad():
        copy_label.weight.zero_()
        copy_label.bias.zero_()
        copy_label.weight[:C, 784:] = torch.eye(C)
    model.mu_layer = copy_label
    assert experiments.latent_class_probe(model, (x, y), (xt, yt), cond=True) > 0.97
    with torch.no_grad():
        copy_label.weight.zero_()
        copy_label.bias.normal_()
    assert experiments.latent_class_probe(model, (x, y), (xt, yt), cond=True) < 0.25


def _synthetic_digits(n, seed=0):
    """Blurry random strokes in [0, 1]: structured enough for a VAE to learn something."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(10, 1, 7, 7, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    x = F.interpolate(base[labels], size=(28, 28), mode="bilinear", align_corners=False)
    x = (x + 0.1 * torch.rand(n, 1, 28, 28, generator=gen)).clamp(0, 1)
    return x, labels


class _CountingAdam(torch.optim.Adam):
    created = 0

    def __init__(self, *args, **kwargs):
        type(self).created += 1
        super().__init__(*args, **kwargs)


@pytest.mark.parametrize("cond", [False, True])
def test_train_vae_one_optimizer_epoch_average_and_progress(monkeypatch, cond):
    _CountingAdam.created = 0
    monkeypatch.setattr(torch.optim, "Adam", _CountingAdam)
    x, y = _synthetic_digits(512)
    # Unequal batch sizes (200, 200, 112): the epoch loss must weight batches by size.
    batches = [(x[i:i + 200], y[i:i + 200]) for i in range(0, 512, 200)]
    torch.manual_seed(0)
    model = vae.CVAE(784) if cond else vae.VAE(784)
    history = vae.train_vae(model, batches, num_epochs=2, cond=cond, verbose=False)
    assert _CountingAdam.created == 1, "train_vae must create ONE optimizer for the whole run"
    assert isinstance(history["optimizer"], _CountingAdam)
    assert len(history["epoch_loss"]) == 2 and len(history["batch_loss"]) == 6
    for epoch in range(2):
        losses = history["batch_loss"][3 * epoch:3 * epoch + 3]
        expected = (200 * losses[0] + 200 * losses[1] + 112 * losses[2]) / 512
        assert abs(history["epoch_loss"][epoch] - expected) < 1e-6 * expected
    assert history["epoch_loss"][1] < history["epoch_loss"][0]


@pytest.mark.parametrize("cond", [False, True])
def test_train_vae_course_form_trains_one_epoch_per_call_with_one_optimizer(monkeypatch, capsys, cond):
    """The course's loop `for e in range(2): train_vae(e, model, loader, cond)` works and trains
    exactly as one `train_vae(model, loader, num_epochs=2, cond)` run: one Adam, whose moment
    estimates carry over from call to call (the course re-created it every call)."""
    x, y = _synthetic_digits(256)
    batches = [(x[i:i + 100], y[i:i + 100]) for i in range(0, 256, 100)]
    torch.manual_seed(0)
    reference = vae.CVAE(784) if cond else vae.VAE(784)
    model = copy.deepcopy(reference)
    torch.manual_seed(1)
    expected = vae.train_vae(reference, batches, num_epochs=2, cond=cond, verbose=False)["epoch_loss"]
    _CountingAdam.created = 0
    monkeypatch.setattr(torch.optim, "Adam", _CountingAdam)
    torch.manual_seed(1)
    histories = [vae.train_vae(epoch, model, batches, cond=cond) for epoch in range(2)]
    assert _CountingAdam.created == 1 and histories[0]["optimizer"] is histories[1]["optimizer"]
    assert [h["epoch_loss"][0] for h in histories] == expected
    assert [line.split("  ")[0] for line in capsys.readouterr().out.splitlines()] == ["Train Epoch: 0", "Train Epoch: 1"]


def test_train_vae_uses_a_given_optimizer(monkeypatch):
    x, y = _synthetic_digits(64)
    model = vae.VAE(784)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    _CountingAdam.created = 0
    monkeypatch.setattr(torch.optim, "Adam", _CountingAdam)
    before = [p.detach().clone() for p in model.parameters()]
    history = vae.train_vae(model, [(x, y)], num_epochs=1, optimizer=optimizer, verbose=False)
    assert history["optimizer"] is optimizer and _CountingAdam.created == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


requires_mnist = pytest.mark.skipif(not eecs598.testing.shared_data_available("mnist"),
                                    reason="MNIST not in $EECS598_DATA")


@requires_mnist
def test_train_vae_on_512_mnist_digits_reduces_the_loss():
    from eecs598.data import mnist

    x, y, _, _ = mnist(num_train=512, num_test=1)
    batches = [(x[i:i + 128], y[i:i + 128]) for i in range(0, 512, 128)]
    torch.manual_seed(0)
    history = vae.train_vae(vae.VAE(784), batches, num_epochs=2, verbose=False)
    assert history["epoch_loss"][1] < history["epoch_loss"][0]
    assert history["batch_loss"][-1] < history["batch_loss"][0]


def test_no_hard_coded_cuda():
    source = inspect.getsource(vae)
    assert not re.search(r"\.cuda\(|['\"]cuda", source), "vae.py must not hard-code CUDA"


def test_cvae_snapshots_measure_without_changing_the_run(monkeypatch):
    """train_cvae_with_snapshots measures the CVAE after epoch `vae_epochs`, every
    `cvae_snapshot_every` epochs and the last; its measurements (test loss, samples) draw random
    numbers, yet the run's epoch losses equal those of a plain train_vae_model run with the
    same seed, and each snapshot's test loss is evaluate_vae's on the model of that epoch."""
    experiments = load_experiments(A6)

    base = experiments.settings()
    monkeypatch.setattr(experiments, "settings", lambda: {**base, "vae_epochs": 2, "cvae_epochs": 3,
                                                          "cvae_snapshot_every": 3, "cvae_per_digit": 4})
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (256,), generator=gen)
    data = (x, y, x[:64], y[:64])
    seen = {}

    def keep_test_loss(epoch, model, history):
        seen[epoch + 1] = experiments.evaluate_vae(model, x[:64], y[:64], cond=True)

    _, history, snapshots = experiments.train_cvae_with_snapshots("cpu", data, classifier=_PixelReader(),
                                                                  verbose=False, epoch_callback=keep_test_loss)
    _, plain, _ = experiments.train_vae_model(True, "cpu", 3, data, verbose=False)
    assert history["epoch_loss"] == plain["epoch_loss"]
    assert [r["epoch"] for r in snapshots] == [2, 3]
    for r in snapshots:
        assert r["train_loss"] == history["epoch_loss"][r["epoch"] - 1]
        assert r["test_loss"] == seen[r["epoch"]]
        assert 0.0 <= r["conditional_accuracy"] <= 1.0
    assert 0 < snapshots[0]["train_seconds"] < snapshots[1]["train_seconds"]


@pytest.mark.parametrize("cond", [False, True])
def test_sampling_helpers_work_in_float64_and_leave_the_model_training(cond):
    experiments = load_experiments(A6)

    torch.manual_seed(0)
    model = (vae.CVAE(784, latent_size=4) if cond else vae.VAE(784, latent_size=4)).double()
    labels = torch.arange(3) if cond else None
    samples = experiments.vae_samples(model, 3, labels)
    lines = experiments.latent_interpolation(model, rows=2, steps=3, labels=[1, 2] if cond else None)
    x, y = torch.rand(5, 1, 28, 28, dtype=torch.float64), torch.arange(5)
    means = experiments._posterior_means(model, x, y, cond)
    assert samples.dtype == lines.dtype == torch.float64
    assert samples.shape == (3, 1, 28, 28) and lines.shape == (6, 1, 28, 28) and means.shape == (5, 4)
    assert model.training
    # the decoded samples are the model's decoder on the same latents, in float64
    z = experiments.prior_latents(model, 3).double()
    if cond:
        z = torch.cat([z, vae.one_hot(labels, 10).double()], 1)
    model.eval()
    assert torch.equal(samples, model.decoder(z).detach())


def test_generate_leaves_the_global_random_state_and_the_mode_alone():
    experiments = load_experiments(A6)
    import gan

    G = gan.generator(noise_dim=8)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    first = experiments.generate(G, 5, noise_dim=8, batch_size=2, seed=7)
    assert torch.equal(torch.rand(4), expected) and G.training
    # the same seed gives the same images, and they are G's on torch's seeded noise
    assert torch.equal(experiments.generate(G, 5, noise_dim=8, batch_size=2, seed=7), first)
    torch.manual_seed(7)
    noise = gan.sample_noise(5, 8)
    G.eval()
    assert_close(first, G(noise).detach(), 1e-5, "generate vs G on seeded noise")


def test_train_vae_casts_batches_to_the_model_dtype():
    """float32 batches train a float64 model (as every other A6 helper casts its inputs)."""
    x, y = _synthetic_digits(32)
    torch.manual_seed(0)
    model = vae.CVAE(784).double()
    history = vae.train_vae(model, [(x.float(), y)], num_epochs=1, cond=True, verbose=False)
    assert len(history["batch_loss"]) == 1 and math.isfinite(history["batch_loss"][0])
    assert all(p.dtype == torch.float64 for p in model.parameters())


@pytest.mark.parametrize("cond", [False, True])
def test_train_vae_updates_match_a_hand_written_loop(cond):
    """Two SGD steps of train_vae against a loop written here: per batch, zero the gradients,
    the negative ELBO (explicit float64 reference) of model(x) (with the batch's OWN one-hot
    labels for a CVAE), backward, step. Same noise (same seed); tolerance 1e-9 in float64."""
    import copy

    x, y = _synthetic_digits(12, seed=4)
    x, y = x.double(), torch.arange(12) % 10  # labels differ from those of any other image
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    torch.manual_seed(0)
    model = (vae.CVAE(784, latent_size=4) if cond else vae.VAE(784, latent_size=4)).double()
    ref = copy.deepcopy(model)
    torch.manual_seed(1)
    vae.train_vae(model, batches, num_epochs=1, cond=cond,
                  optimizer=torch.optim.SGD(model.parameters(), lr=0.05), verbose=False)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    torch.manual_seed(1)
    for xb, yb in batches:
        opt.zero_grad()
        out = ref(xb, F.one_hot(yb, C).double()) if cond else ref(xb)
        _reference_loss(out[0], xb, out[1], out[2]).backward()
        opt.step()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert_close(p.detach(), q.detach(), 1e-9, name)


@pytest.mark.parametrize("cond", [False, True])
def test_forward_decodes_the_reparametrized_sample_and_uses_both_heads(monkeypatch, cond):
    """With a sentinel reparametrize (returns mu + 1, records its inputs): x_hat is the decoder
    on [mu + 1 (, c)], and reparametrize got mu_layer(h) and logvar_layer(h), h the encoder's
    output, all recomputed here layer by layer."""
    seen = []

    def sentinel(mu, logvar):
        seen.append((mu.detach().clone(), logvar.detach().clone()))
        return mu + 1

    monkeypatch.setattr(vae, "reparametrize", sentinel)
    torch.manual_seed(0)
    model = (vae.CVAE(784) if cond else vae.VAE(784)).double()
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    c = F.one_hot(torch.tensor([0, 3, 3, 7, 9]), C).double()
    with torch.no_grad():
        x_hat, mu, logvar = model(x, c) if cond else model(x)
        h = model.encoder(torch.cat([x.flatten(1), c], 1) if cond else x)
        mu_ref, logvar_ref = model.mu_layer(h), model.logvar_layer(h)
        z = mu_ref + 1
        expected = model.decoder(torch.cat([z, c], 1) if cond else z)
    assert len(seen) == 1
    assert_close(seen[0][0], mu_ref, 1e-12, "mu given to reparametrize")
    assert_close(seen[0][1], logvar_ref, 1e-12, "logvar given to reparametrize")
    assert_close(mu, mu_ref, 1e-12, "returned mu")
    assert_close(logvar, logvar_ref, 1e-12, "returned logvar")
    assert_close(x_hat, expected.reshape_as(x_hat), 1e-12, "x_hat = decoder(z)")


@pytest.mark.parametrize("cond", [False, True])
def test_evaluate_vae_is_the_per_image_loss_of_the_whole_set(monkeypatch, cond):
    """Deterministic posterior sample (reparametrize -> mu): evaluate_vae in batches of 100
    equals the reference negative ELBO of all images at once (300 images: equal batches; 250:
    a short last batch, which must weigh by its size)."""
    experiments = load_experiments(A6)

    monkeypatch.setattr(vae, "reparametrize", lambda mu, logvar: mu)
    torch.manual_seed(0)
    model = (vae.CVAE(784) if cond else vae.VAE(784)).double()
    x, y = _synthetic_digits(300, seed=5)
    for n in (300, 250):
        with torch.no_grad():
            xd = x[:n].double()
            out = model(xd, F.one_hot(y[:n], C).double()) if cond else model(xd)
            expected = _reference_loss(out[0], xd, out[1], out[2]).item()
        value = experiments.evaluate_vae(model, x[:n], y[:n], cond=cond, batch_size=100)
        assert value == pytest.approx(expected, rel=1e-9), n


class _EchoDecoder(nn.Module):
    """Decodes [z, one_hot(label)] to an image whose first Z pixels are z and whose pixel
    Z + label is 1 (so both the latent and the label can be read back)."""

    def __init__(self, latent_size):
        super().__init__()
        self.latent_size = latent_size

    def forward(self, zc):
        n, zs = zc.shape[0], self.latent_size
        out = torch.zeros(n, 784, dtype=zc.dtype)
        out[:, :zs] = zc[:, :zs]
        if zc.shape[1] > zs:
            out[torch.arange(n), zs + zc[:, zs:].argmax(1)] = 1.0
        return out.view(n, 1, 28, 28)


def _echoed(images, latent_size):
    flat = images.flatten(1)
    return flat[:, :latent_size], flat[:, latent_size:latent_size + C].argmax(1)


def test_digit_rows_draws_the_digits_row_by_row():
    """digit_rows(per_digit=k): k samples of 0, then k of 1, ..., k of 9 (labels and images)."""
    experiments = load_experiments(A6)

    model = vae.CVAE(784, latent_size=4)
    model.decoder = _EchoDecoder(4)
    images, labels = experiments.digit_rows(model, per_digit=3)
    expected = torch.tensor([d for d in range(10) for _ in range(3)])
    assert torch.equal(labels, expected)
    assert torch.equal(_echoed(images, 4)[1], expected)


@pytest.mark.parametrize("cond", [False, True])
def test_latent_interpolation_rows_are_straight_lines(cond):
    """Each row of `steps` consecutive outputs decodes evenly spaced points of one segment
    (second differences 0), different rows are different segments, and a CVAE row keeps its
    label throughout."""
    experiments = load_experiments(A6)

    rows, steps, zs = 3, 5, 4
    model = vae.CVAE(784, latent_size=zs) if cond else vae.VAE(784, latent_size=zs)
    model.decoder = _EchoDecoder(zs)
    out = experiments.latent_interpolation(model, rows=rows, steps=steps,
                                           labels=[7, 2, 5] if cond else None)
    assert out.shape == (rows * steps, 1, 28, 28)
    z, label = _echoed(out, zs)
    z = z.reshape(rows, steps, zs)
    second = z[:, 2:] - 2 * z[:, 1:-1] + z[:, :-2]
    assert second.abs().max() < 1e-5
    step = z[:, 1] - z[:, 0]
    assert (step.norm(dim=1) > 1e-3).all()
    assert not torch.allclose(step[0], step[1]) and not torch.allclose(z[0, 0], z[1, 0])
    if cond:
        assert torch.equal(label.reshape(rows, steps), torch.tensor([7, 2, 5])[:, None].expand(rows, steps))


def test_sample_scores_predicted_digit_fractions_are_fractions():
    """20 images lighting pixels 0 (x5), 3 (x12), 9 (x3): fractions 0.25, 0.6, 0.15, sum 1."""
    experiments = load_experiments(A6)

    shown = torch.tensor([0] * 5 + [3] * 12 + [9] * 3)
    images = torch.zeros(20, 784)
    images[torch.arange(20), shown] = 1.0
    real_feats = torch.rand(30, 10, dtype=torch.float64)
    scores = experiments.sample_scores(images.view(20, 1, 28, 28), _PixelReader(), real_feats)
    expected = [0.0] * 10
    expected[0], expected[3], expected[9] = 0.25, 0.6, 0.15
    assert scores["predicted_digit_fractions"] == pytest.approx(expected, abs=1e-12)
    assert sum(scores["predicted_digit_fractions"]) == pytest.approx(1.0)


def test_vae_records_score_cvae_samples_of_every_digit_equally(monkeypatch):
    """The CVAE's Frechet-distance samples ask for the ten digits equally often (200 samples:
    20 of each), not one digit. Training is replaced by a fixed untrained CVAE."""
    experiments = load_experiments(A6)

    base = experiments.settings()
    monkeypatch.setattr(experiments, "settings", lambda: {**base, "vae_epochs": 1, "cvae_epochs": 1,
                                                          "num_generated": 200, "cvae_per_digit": 3})
    torch.manual_seed(0)
    model = vae.CVAE(784, latent_size=15)
    snap = {"epoch": 1, "train_loss": 1.0, "test_loss": 1.0, "test_seconds": 0.0, "train_set_loss": 1.0,
            "last_batch_loss": 1.0, "conditional_accuracy": 0.5, "train_seconds": 0.0}
    monkeypatch.setattr(experiments, "train_cvae_with_snapshots",
                        lambda *a, **k: (model, {"epoch_loss": [1.0], "batch_loss": [1.0]}, [snap]))
    monkeypatch.setattr(experiments, "latent_class_probe", lambda *a, **k: 0.5)
    asked = []
    real_vae_samples = experiments.vae_samples

    def spy(model, n, labels=None, seed=0):
        asked.append((n, None if labels is None else torch.as_tensor(labels).clone()))
        return real_vae_samples(model, n, labels, seed)

    monkeypatch.setattr(experiments, "vae_samples", spy)
    x, y = _synthetic_digits(40)
    records = experiments.vae_records("cpu", (x, y, x[:20], y[:20]), _PixelReader(),
                                      torch.rand(20, 10, dtype=torch.float64), models=("cvae",))
    assert any(r["metric"] == "cvae_frechet_distance" for r in records)
    fd_labels = [labels for n, labels in asked if n == 200]
    assert len(fd_labels) == 1 and fd_labels[0].shape == (200,)
    assert torch.equal(torch.bincount(fd_labels[0], minlength=10), torch.full((10,), 20))


# --- gaps found by mutation testing (each test fails on a one-line bug the others let through)

def test_batch_loader_partitions_an_epoch():
    """BatchLoader: an epoch is len(x)//B disjoint batches of B (drop_last)
    (kills order[i:i+B] -- overlapping batches -- and len ignoring drop_last)."""
    ex = load_experiments(A6)
    x = torch.arange(10).float()[:, None]
    bl = ex.BatchLoader(x, torch.arange(10), batch_size=3, seed=0)
    batches = [xb[:, 0].long().tolist() for xb, _ in bl]
    assert len(bl) == 3 and len(batches) == 3
    flat = sum(batches, [])
    assert len(flat) == 9 and len(set(flat)) == 9
