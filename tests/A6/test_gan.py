"""Unit tests for A6/gan.py.

References: the course's parameter counts (267,009 / 1,858,320 / 1,102,721 / 6,580,801;
the course's notebook checks the generators with noise_dim=4), counts recomputed from the
layer sizes for NOISE_DIM=96, F.binary_cross_entropy_with_logits and the explicit
softplus formula in float64 for the GAN losses, the least-squares formulas written out
here, and the moments of U(-1, 1) for sample_noise. Synthetic data only.
"""
import inspect
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gan
from eecs598.reproduce import load_experiments
from eecs598.testing import assert_close

A6 = Path(__file__).resolve().parents[2] / "A6"  # experiments.py by path (tests/conftest.py)


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _lin(fan_in, fan_out):
    return fan_in * fan_out + fan_out


def test_hello(capsys):
    gan.hello_gan()
    assert capsys.readouterr().out.strip() == "Hello from gan.py!"


def test_noise_dim_constant():
    assert gan.NOISE_DIM == 96


# --- sample_noise ----------------------------------------------------------------------

def test_sample_noise_shape_dtype_range_and_moments():
    torch.manual_seed(0)
    noise = gan.sample_noise(2000, 50)
    assert noise.shape == (2000, 50) and noise.dtype == torch.float32 and noise.device.type == "cpu"
    assert noise.min() >= -1 and noise.max() < 1
    # U(-1, 1): mean 0 (std error sqrt(1/3)/sqrt(n)), variance 1/3; 5 standard errors.
    n = noise.numel()
    assert abs(noise.double().mean().item()) < 5 * (1 / 3) ** 0.5 / n ** 0.5
    assert abs(noise.double().var().item() - 1 / 3) < 5 * (4 / 45 / n) ** 0.5
    assert (noise < -0.9).any() and (noise > 0.9).any()
    assert not torch.equal(noise, gan.sample_noise(2000, 50))


def test_sample_noise_honours_dtype_and_device():
    noise = gan.sample_noise(3, 4, dtype=torch.float64)
    assert noise.dtype == torch.float64 and noise.shape == (3, 4)
    meta = gan.sample_noise(3, 4, dtype=torch.float16, device="meta")
    assert meta.device.type == "meta" and meta.dtype == torch.float16
    assert gan.sample_noise(2, 3, device=torch.device("cpu")).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sample_noise_on_cuda():
    assert gan.sample_noise(2, 3, device="cuda").device.type == "cuda"


# --- architectures ---------------------------------------------------------------------

def test_discriminator_parameter_count_and_layers():
    model = gan.discriminator()
    assert _count(model) == 267_009  # course value
    assert [type(m) for m in model] == [nn.Flatten, nn.Linear, nn.LeakyReLU, nn.Linear,
                                        nn.LeakyReLU, nn.Linear]
    assert all(m.negative_slope == 0.01 for m in model if isinstance(m, nn.LeakyReLU))


def test_generator_parameter_count_and_layers():
    assert _count(gan.generator(4)) == 1_858_320  # course value (its check uses noise_dim=4)
    model = gan.generator()
    assert _count(model) == _lin(96, 1024) + _lin(1024, 1024) + _lin(1024, 784) == 1_952_528
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear, nn.Tanh]


def test_dc_classifier_parameter_count():
    model = gan.build_dc_classifier()
    assert _count(model) == 1_102_721  # course value
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 32, (5, 5)),
                                                                               (32, 64, (5, 5))]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model) == 2


def test_dc_generator_parameter_count():
    assert _count(gan.build_dc_generator(4)) == 6_580_801  # course value (noise_dim=4)
    bn = 2 * 1024 + 2 * 6272 + 2 * 64
    convt = (128 * 64 * 16 + 64) + (64 * 1 * 16 + 1)
    assert _count(gan.build_dc_generator()) == _lin(96, 1024) + _lin(1024, 6272) + bn + convt \
        == 6_675_009


@pytest.mark.parametrize("build", [gan.discriminator, gan.build_dc_classifier])
def test_discriminators_take_flat_images_and_return_one_logit(build):
    torch.manual_seed(0)
    model = build()
    out = model(torch.rand(5, 784) * 2 - 1)
    assert out.shape == (5, 1)


@pytest.mark.parametrize("build", [gan.generator, gan.build_dc_generator])
def test_generators_output_flat_images_in_minus_one_one(build):
    torch.manual_seed(0)
    model = build()
    out = model(gan.sample_noise(6, gan.NOISE_DIM))
    assert out.shape == (6, 784)
    assert out.min() >= -1 and out.max() <= 1


def test_dc_generator_output_size():
    model = gan.build_dc_generator(8)
    assert model(torch.rand(3, 8)).shape == (3, 784)


# --- losses -----------------------------------------------------------------------------

def _softplus(x):
    return torch.log1p(torch.exp(-x.abs())) + x.clamp(min=0)


@pytest.mark.parametrize("shape", [(64,), (64, 1)])
def test_discriminator_loss_matches_references(shape):
    torch.manual_seed(0)
    real = torch.randn(shape, dtype=torch.float64) * 3
    fake = torch.randn(shape, dtype=torch.float64) * 3
    loss = gan.discriminator_loss(real, fake)
    ref_bce = F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + \
        F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    ref_formula = _softplus(-real).mean() + _softplus(fake).mean()  # -log s(r) - log(1 - s(f))
    assert loss.dim() == 0
    assert_close(loss, ref_bce, 1e-12, "discriminator_loss vs BCE-with-logits")
    assert_close(loss, ref_formula, 1e-12, "discriminator_loss vs softplus formula")


@pytest.mark.parametrize("shape", [(64,), (64, 1)])
def test_generator_loss_matches_references(shape):
    torch.manual_seed(1)
    fake = torch.randn(shape, dtype=torch.float64) * 3
    loss = gan.generator_loss(fake)
    assert_close(loss, F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake)), 1e-12,
                 "generator_loss vs BCE-with-logits")
    assert_close(loss, _softplus(-fake).mean(), 1e-12, "generator_loss vs softplus formula")


def test_bce_losses_are_stable_for_large_logits():
    big = torch.tensor([100.0, -100.0, 50.0], dtype=torch.float64)
    assert torch.isfinite(gan.discriminator_loss(big, -big))
    assert torch.isfinite(gan.generator_loss(-big))


def test_ls_losses_match_formulas():
    torch.manual_seed(2)
    real = torch.randn(32, 1, dtype=torch.float64)
    fake = torch.randn(32, 1, dtype=torch.float64)
    expected_d = 0.5 * sum((r - 1) ** 2 for r in real.flatten().tolist()) / 32 + \
        0.5 * sum(f ** 2 for f in fake.flatten().tolist()) / 32
    expected_g = 0.5 * sum((f - 1) ** 2 for f in fake.flatten().tolist()) / 32
    assert abs(gan.ls_discriminator_loss(real, fake).item() - expected_d) < 1e-12
    assert abs(gan.ls_generator_loss(fake).item() - expected_g) < 1e-12


def test_losses_are_differentiable():
    logits = torch.randn(8, 1, requires_grad=True)
    for loss in (gan.generator_loss(logits), gan.ls_generator_loss(logits),
                 gan.discriminator_loss(logits, logits), gan.ls_discriminator_loss(logits, logits)):
        logits.grad = None
        loss.backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # d/dx 0.5 * mean((x - 1)^2) = (x - 1) / N
    logits.grad = None
    gan.ls_generator_loss(logits).backward()
    assert_close(logits.grad, (logits.detach() - 1) / 8, 1e-6, "d ls_generator_loss")


def test_get_optimizer():
    model = gan.discriminator()
    optimizer = gan.get_optimizer(model)
    assert isinstance(optimizer, torch.optim.Adam)
    group = optimizer.param_groups[0]
    assert group["lr"] == 1e-3 and tuple(group["betas"]) == (0.5, 0.999)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == 267_009


# --- run_a_gan --------------------------------------------------------------------------

def _loader(n_batches, batch_size, last=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.rand(batch_size, 1, 28, 28, generator=gen), torch.zeros(batch_size))
               for _ in range(n_batches)]
    if last:
        batches.append((torch.rand(last, 1, 28, 28, generator=gen), torch.zeros(last)))
    return batches


class _Tiny(nn.Module):
    """A very small generator/discriminator pair keeps the loop test fast."""

    def __init__(self, fan_in, fan_out, out=None):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(fan_in, fan_out))
        self.out = out

    def forward(self, x):
        y = self.net(x)
        return self.out(y) if self.out else y


@pytest.mark.parametrize("losses", [(gan.discriminator_loss, gan.generator_loss),
                                    (gan.ls_discriminator_loss, gan.ls_generator_loss)])
def test_run_a_gan_trains_and_returns_history(losses):
    torch.manual_seed(0)
    D, G = _Tiny(784, 1), _Tiny(8, 784, nn.Tanh())
    d0 = [p.detach().clone() for p in D.parameters()]
    g0 = [p.detach().clone() for p in G.parameters()]
    loader = _loader(3, 16, last=5)  # the short last batch is skipped, as in the course
    history = gan.run_a_gan(D, G, gan.get_optimizer(D), gan.get_optimizer(G), *losses, loader,
                            show_every=2, batch_size=16, noise_size=8, num_epochs=2,
                            plot=False, verbose=False, num_snapshot=4)
    assert history["iterations"] == 6
    assert history["iteration"] == list(range(6))
    assert len(history["d_loss"]) == len(history["g_loss"]) == 6
    assert all(torch.isfinite(torch.tensor(history["d_loss"] + history["g_loss"])))
    assert [it for it, _ in history["snapshots"]] == [0, 2, 4, 5]
    assert all(img.shape == (4, 784) and img.device.type == "cpu" for _, img in history["snapshots"])
    assert torch.equal(history["snapshots"][0][1], history["snapshots"][0][1].clamp(-1, 1))
    assert all(not torch.equal(a, b) for a, b in zip(d0, D.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(g0, G.parameters()))


def test_run_a_gan_updates_match_a_hand_written_loop(monkeypatch):
    """Three iterations of run_a_gan against a loop written here from the algorithm: per batch,
    zero D's gradients, one D step on [real scaled to [-1, 1], G(noise).detach()], then zero G's
    gradients, one G step on D(G(noise')). Plain SGD, losses given as arguments, the noise
    drawn from a fixed list (the first draw is the snapshot noise). Tolerance 1e-12 in float64."""
    import copy
    torch.manual_seed(0)
    noise = [torch.rand(n, 8, dtype=torch.float64) * 2 - 1 for n in [4] + [5] * 6]
    draws = iter(noise)
    monkeypatch.setattr(gan, "sample_noise", lambda n, d, dtype=None, device=None: next(draws))
    D, G = _Tiny(784, 1).double(), _Tiny(8, 784, nn.Tanh()).double()
    D_ref, G_ref = copy.deepcopy(D), copy.deepcopy(G)
    bce = F.binary_cross_entropy_with_logits

    def d_loss(real, fake):
        return bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))

    def g_loss(fake):
        return bce(fake, torch.ones_like(fake))

    loader = _loader(3, 5)
    sgd = lambda model: torch.optim.SGD(model.parameters(), lr=0.5)  # noqa: E731
    gan.run_a_gan(D, G, sgd(D), sgd(G), d_loss, g_loss, loader, show_every=0, batch_size=5,
                  noise_size=8, num_epochs=1, plot=False, verbose=False, num_snapshot=4)

    d_opt, g_opt = sgd(D_ref), sgd(G_ref)
    k = 1
    for x, _ in loader:
        real = 2 * x.double().reshape(5, -1) - 1
        d_opt.zero_grad()
        d_loss(D_ref(real), D_ref(G_ref(noise[k]).detach())).backward()
        d_opt.step()
        g_opt.zero_grad()
        g_loss(D_ref(G_ref(noise[k + 1]))).backward()
        g_opt.step()
        k += 2
    for name, model, ref in (("D", D, D_ref), ("G", G, G_ref)):
        for (pname, p), q in zip(model.named_parameters(), ref.parameters()):
            assert_close(p.detach(), q.detach(), 1e-12, f"{name}.{pname}")


def test_run_a_gan_max_iters_and_float64():
    torch.manual_seed(0)
    D, G = _Tiny(784, 1).double(), _Tiny(8, 784, nn.Tanh()).double()
    history = gan.run_a_gan(D, G, gan.get_optimizer(D), gan.get_optimizer(G),
                            gan.discriminator_loss, gan.generator_loss, _loader(5, 4),
                            show_every=0, batch_size=4, noise_size=8, num_epochs=3, max_iters=7,
                            plot=False, verbose=False)
    assert history["iterations"] == 7
    assert [it for it, _ in history["snapshots"]] == [6]


def test_run_a_gan_feeds_the_discriminator_real_images_rescaled_to_minus_one_one():
    """Real images come in [0, 1] and go to D as 2 x - 1, the range of G's tanh output; D sees,
    in each iteration, the real batch, G's batch, then G's new batch for the generator step."""
    seen = []

    class RecordingD(_Tiny):
        def forward(self, x):
            seen.append(x.detach().clone())
            return super().forward(x)

    torch.manual_seed(0)
    D, G = RecordingD(784, 1), _Tiny(8, 784, nn.Tanh())
    real = [(torch.zeros(4, 1, 28, 28), torch.zeros(4)), (torch.full((4, 1, 28, 28), 0.75), torch.zeros(4))]
    gan.run_a_gan(D, G, gan.get_optimizer(D), gan.get_optimizer(G), gan.discriminator_loss,
                  gan.generator_loss, real, show_every=0, batch_size=4, noise_size=8, num_epochs=1,
                  plot=False, verbose=False)
    assert len(seen) == 6  # 2 iterations x (real, fake, fake for G)
    assert torch.equal(seen[0], torch.full((4, 784), -1.0)) and torch.equal(seen[3], torch.full((4, 784), 0.5))
    for fake in (seen[1], seen[2], seen[4], seen[5]):
        assert fake.shape == (4, 784) and fake.abs().max() <= 1 and not torch.equal(fake, seen[0])


def test_run_a_gan_refuses_a_loader_of_another_batch_size():
    D, G = _Tiny(784, 1), _Tiny(8, 784, nn.Tanh())
    with pytest.raises(ValueError, match="no batch of batch_size=128"):
        gan.run_a_gan(D, G, gan.get_optimizer(D), gan.get_optimizer(G), gan.discriminator_loss,
                      gan.generator_loss, _loader(3, 64), noise_size=8, num_epochs=2, plot=False,
                      verbose=False)


def test_run_a_gan_with_the_dc_models():
    torch.manual_seed(0)
    D, G = gan.build_dc_classifier(), gan.build_dc_generator()
    history = gan.run_a_gan(D, G, gan.get_optimizer(D), gan.get_optimizer(G),
                            gan.discriminator_loss, gan.generator_loss, _loader(2, 4),
                            show_every=1, batch_size=4, num_epochs=1, plot=False, verbose=False)
    assert history["iterations"] == 2 and len(history["snapshots"]) == 2
    assert history["snapshots"][0][1].shape == (16, 784)


def test_image_grid_shape_and_range():
    images = torch.linspace(-1, 1, 5 * 784).reshape(5, 784)
    grid = gan.image_grid(images, nrow=3, padding=2)
    assert grid.shape == (2 * 30 + 2, 3 * 30 + 2)
    assert grid.min() >= 0 and grid.max() <= 1
    # the course's notebooks pass numpy arrays
    assert (gan.image_grid(images.numpy(), nrow=3, padding=2) == grid).all()


def test_no_hard_coded_cuda():
    source = inspect.getsource(gan)
    assert not re.search(r"\.cuda\(|['\"]cuda", source), "gan.py must not hard-code CUDA"


def _xavier_std(module):
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(module.weight)
    return (2.0 / (fan_in + fan_out)) ** 0.5


def _default_linear_std(module):  # U(+-1/sqrt(fan_in)): std 1/sqrt(3 fan_in)
    return 1.0 / (3 * module.weight.shape[1]) ** 0.5


@pytest.mark.parametrize("kind", ["fc", "ls", "dc"])
def test_experiments_build_gan_inits_as_the_course(kind):
    """The course applies initialize_weights (Xavier-uniform Linear and ConvTranspose2d weights)
    to the DC-GAN's D and G only; the FC GANs keep PyTorch's default. Standard deviations of
    the large weight matrices within 3% of the formula's."""
    experiments = load_experiments(A6)

    torch.manual_seed(0)
    D, G, _, _ = experiments.build_gan(kind)
    layers = [m for net in (D, G) for m in net.modules()
              if isinstance(m, (nn.Linear, nn.ConvTranspose2d)) and m.weight.numel() >= 50_000]
    assert len(layers) >= 3
    for m in layers:
        expected = _xavier_std(m) if kind == "dc" else _default_linear_std(m)
        assert abs(m.weight.std().item() / expected - 1) < 0.03, (kind, m)
    with pytest.raises(ValueError):
        experiments.build_gan(kind, init="kaiming")


def test_dc_generator_layer_order_is_the_courses():
    """The course's order: each BatchNorm comes after its ReLU (Linear, ReLU, BN, ...), with
    ConvTranspose2d(k 4, s 2, p 1) layers and a Tanh output, flattened."""
    model = gan.build_dc_generator()
    assert [type(m) for m in model] == [
        nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Unflatten,
        nn.ConvTranspose2d, nn.ReLU, nn.BatchNorm2d, nn.ConvTranspose2d, nn.Tanh, nn.Flatten]
    assert [m.num_features for m in model if isinstance(m, nn.modules.batchnorm._BatchNorm)] == \
        [1024, 7 * 7 * 128, 64]
    for m in model:
        if isinstance(m, nn.ConvTranspose2d):
            assert (m.kernel_size, m.stride, m.padding) == ((4, 4), (2, 2), (1, 1))


def test_run_a_gan_snapshots_leave_the_generator_batchnorm_statistics_alone():
    """Snapshots run G in eval mode: a DC-GAN run with a snapshot every iteration ends with the
    same G state (weights and BatchNorm running statistics) as the run without, and each
    BatchNorm counted exactly the 2 training forward passes per iteration."""
    states = []
    for show_every in (1, 0):
        torch.manual_seed(0)
        D, G = _Tiny(784, 1), gan.build_dc_generator(noise_dim=8)
        gan.run_a_gan(D, G, gan.get_optimizer(D), gan.get_optimizer(G), gan.discriminator_loss,
                      gan.generator_loss, _loader(3, 4), show_every=show_every, batch_size=4,
                      noise_size=8, num_epochs=1, plot=False, verbose=False, num_snapshot=3)
        states.append(G.state_dict())
    for name, value in states[0].items():
        if name.endswith("num_batches_tracked"):
            assert value.item() == 2 * 3, name
        assert torch.equal(value, states[1][name]), name


class _ProjectionClassifier(nn.Module):
    """A stand-in evaluation classifier with MnistClassifier's interface: features are a fixed
    random projection of the [0, 1] pixels to 12 dimensions, the head a fixed linear map."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.projection = nn.Parameter(torch.randn(784, 12, generator=gen) / 28)
        self.head = nn.Linear(12, 10)

    def features(self, x):
        return x.flatten(1) @ self.projection

    def forward(self, x):
        return self.head(self.features(x))


class _Replay(nn.Module):
    """A "generator" that returns the first N of its stored images, whatever the noise."""

    def __init__(self, images):
        super().__init__()
        self.register_buffer("images", images)

    def forward(self, noise):
        return self.images[:noise.shape[0]]


def test_gan_scores_reads_generator_output_in_minus_one_one():
    """A generator replaying the real images, scaled to G's range [-1, 1], scores a Frechet
    distance ~0 against the features of those real images (given in [0, 1])."""
    experiments = load_experiments(A6)
    import mnist_classifier as mc

    gen = torch.Generator().manual_seed(1)
    real = torch.rand(200, 1, 28, 28, generator=gen)
    classifier = _ProjectionClassifier()
    real_feats = mc.features(classifier, real)
    scores = experiments.gan_scores(_Replay(real.reshape(200, 784) * 2 - 1), classifier, real_feats, n=200)
    scale = torch.trace(torch.cov(real_feats.T)).item()
    assert scores["frechet_distance"] < 1e-6 * scale


def test_classifier_records_floor_is_real_train_versus_test(monkeypatch):
    """The real-vs-real Frechet distance floor compares the first num_generated TRAINING digits
    with the test digits (here from different distributions, so it is clearly > 0); computed
    here from the stand-in classifier's projection directly."""
    experiments = load_experiments(A6)
    import mnist_classifier as mc

    base = experiments.settings()
    monkeypatch.setattr(experiments, "settings", lambda: {
        **base, "num_generated": 150, "classifier": {**base["classifier"], "num_train": 300}})
    classifier = _ProjectionClassifier()
    info = {"cached": False, "test_accuracy": 0.5, "train_seconds": 0.0, "train_device": "cpu",
            "config": {}}
    monkeypatch.setattr(experiments, "get_classifier", lambda *a, **k: (classifier, info))
    gen = torch.Generator().manual_seed(2)
    x_train = torch.rand(300, 1, 28, 28, generator=gen)
    x_test = torch.rand(200, 1, 28, 28, generator=gen) ** 2
    y_train, y_test = torch.zeros(300, dtype=torch.long), torch.zeros(200, dtype=torch.long)
    records, _, real_feats, real_fd = experiments.classifier_records("cpu", (x_train, y_train, x_test, y_test))
    with torch.no_grad():
        expected = mc.frechet_distance((x_train[:150].flatten(1) @ classifier.projection).double(),
                                       (x_test.flatten(1) @ classifier.projection).double())
    assert expected > 0.01
    assert real_fd == pytest.approx(expected, rel=1e-4)
    floor = [r for r in records if r["metric"] == "real_train_vs_test_frechet_distance"]
    assert len(floor) == 1 and floor[0]["value"] == pytest.approx(expected, rel=1e-4)


def test_dc_classifier_leaky_relu_slopes_are_001():
    """The docstring's LeakyReLU(0.01) after each hidden layer (a mutation testing gap: the other
    tests count parameters and layer types)."""
    slopes = [m.negative_slope for m in gan.build_dc_classifier() if isinstance(m, nn.LeakyReLU)]
    assert slopes == [0.01, 0.01, 0.01]
