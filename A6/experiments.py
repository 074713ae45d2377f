"""A6 headline experiments: VAE, conditional VAE and three GANs on MNIST, each measured by
more than its loss.

`run(device)` (called by `make reproduce`) trains every model at the course's settings and
returns result records:

* VAE / CVAE (hidden 400, latent 15, Adam 1e-3, batch 128, 10 epochs; Linear weights
  Xavier-uniform, `vae.initialize_weights`): the negative ELBO per image, averaged over the
  10th training epoch and on the 10,000 test images. The CVAE's run goes on to 30 epochs
  (`train_cvae_with_snapshots`), and its samples are measured after the 30th;
* an evaluation classifier (`mnist_classifier.py`, >= 99% test accuracy) that measures
  samples: the fraction of CVAE digits classified as the digit asked for, and for every
  generator a Frechet distance between classifier features of 10,000 generated and the
  10,000 real test digits plus the mean top-class probability;
* GANs (Adam 1e-3, betas (0.5, 0.999), batch 128): vanilla (FC) and least-squares for 10
  epochs, DC-GAN for 5 epochs with Xavier-uniform weights, as in the course (`GAN_INIT`).

`run` = `classifier_records` + `vae_records` + `gan_records`; each part can be rerun alone to
refresh its rows.

The notebooks call the same functions (`train_vae_model`, `train_gan`, `gan_scores`, ...).
Sizes and iteration counts come from `eecs598.pick(full=..., quick=...)`. This file has no
solution regions: it only calls the assignment's functions.
"""
import math
import time

import torch

import gan
import mnist_classifier as mc
import vae
from eecs598.results import make_record
from eecs598.utils import device_name, evaluating, get_device, pick, quick_mode, reset_seed, timer

ASSIGNMENT = "A6"
DATA = "MNIST (official IDX files, from the data root; project loader eecs598.data.mnist)"
# Course reference solutions (../shared/COURSE_API.md, section 4): loss of the LAST BATCH of
# epoch 10.
VAE_REFERENCE = 110.66
CVAE_REFERENCE = 103.66
VAE_TARGET, CVAE_TARGET = 110.0, 104.0
CONDITIONAL_ACCURACY_TARGET = 0.95
CLASSIFIER_TARGET = 0.99
LATENT_SIZE = 15
# Weight init of the VAE/CVAE Linear layers (a recipe choice, not the architecture): Xavier-
# uniform, as the course's a6_helper.initialize_weights; PyTorch's default init trains the
# six-layer ReLU nets markedly slower (see README).
VAE_INIT = "xavier"
BATCH_SIZE = 128
GAN_KINDS = ("fc", "ls", "dc")
GAN_NAMES = {"fc": "vanilla GAN (fully connected)", "ls": "least-squares GAN (fully connected)",
             "dc": "DC-GAN (convolutional)"}
# Weight init of each GAN, as in the course's notebook: it applies a6_helper.initialize_weights
# (Xavier-uniform Linear and ConvTranspose2d weights; `vae.initialize_weights` here) to the
# DC-GAN's discriminator and generator only; the fully connected GANs keep PyTorch's default.
GAN_INIT = {"fc": "default", "ls": "default", "dc": "xavier"}


def settings():
    """Sizes and iteration counts for the current mode (full: the course's settings)."""
    return {
        "num_train": pick(full=60000, quick=512),
        "num_test": pick(full=10000, quick=512),
        # the course's 10 epochs: the VAE's run, and the CVAE's loss figures (its epoch 10)
        "vae_epochs": pick(full=10, quick=2),
        # the CVAE's run goes on to 30 epochs for its samples: the fraction that follows the
        # requested digit still rises after epoch 10 (see README: 93.0% at 10, 97.3% at 30)
        "cvae_epochs": pick(full=30, quick=3),
        "cvae_snapshot_every": pick(full=5, quick=1),
        "gan_epochs": {"fc": pick(full=10, quick=1), "ls": pick(full=10, quick=1),
                       "dc": pick(full=5, quick=1)},
        "show_every": pick(full=250, quick=4),
        "num_generated": pick(full=10000, quick=512),
        "cvae_per_digit": pick(full=1000, quick=32),
        "classifier": pick(full=dict(mc.DEFAULT_CONFIG),
                           quick={**mc.DEFAULT_CONFIG, "epochs": 1, "num_train": 1024}),
    }


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------

def load_data(num_train=None, num_test=None):
    """MNIST via the project's loader: (x_train, y_train, x_test, y_test), x in [0, 1] of
    shape (N, 1, 28, 28). Defaults: the sizes of the current mode (`settings()`)."""
    from eecs598.data import mnist

    s = settings()
    return mnist(num_train=num_train or s["num_train"], num_test=num_test or s["num_test"])


class BatchLoader:
    """A minimal re-iterable loader over in-memory tensors (like the course's DataLoader:
    batch 128, shuffled every epoch, drop_last). The order comes from its own seeded
    generator, so runs are reproducible and the global RNG is left alone."""

    def __init__(self, x, y, batch_size=BATCH_SIZE, shuffle=True, drop_last=True, seed=0):
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = self.x.shape[0]
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]


# --------------------------------------------------------------------------------------
# VAE / CVAE
# --------------------------------------------------------------------------------------

def build_vae(cond=False, init=VAE_INIT):
    """A VAE (cond=False) or CVAE (cond=True) at the course's sizes. init="xavier" (the
    default here) re-draws the Linear weights with `vae.initialize_weights` (Xavier-uniform);
    init="default" keeps PyTorch's default Linear init."""
    model = vae.CVAE(784, num_classes=10, latent_size=LATENT_SIZE) if cond else \
        vae.VAE(784, latent_size=LATENT_SIZE)
    if init == "xavier":
        model.apply(vae.initialize_weights)
    elif init != "default":
        raise ValueError(f"unknown init {init!r}; use 'xavier' or 'default'")
    return model


def train_vae_model(cond=False, device=None, num_epochs=None, data=None, seed=0, verbose=True,
                    epoch_callback=None, init=VAE_INIT):
    """Train a VAE (cond=False) or CVAE (cond=True) at the course settings.

    Returns (model, history, seconds); history as returned by `vae.train_vae`.
    """
    device = get_device(device)
    num_epochs = settings()["vae_epochs"] if num_epochs is None else num_epochs
    x_train, y_train, _, _ = load_data() if data is None else data
    reset_seed(seed)
    model = build_vae(cond, init).to(device)
    loader = BatchLoader(x_train, y_train, seed=seed)
    with timer() as t:
        history = vae.train_vae(model, loader, num_epochs=num_epochs, cond=cond, device=device,
                                verbose=verbose, epoch_callback=epoch_callback)
    return model, history, t.seconds


def evaluate_vae(model, x, y, cond=False, batch_size=1000, seed=0):
    """Negative ELBO per image (the training loss, one posterior sample per image) of a
    trained model on (x, y), in eval mode with a fixed seed (`evaluating`: the model's mode and
    the global random state are left as they were)."""
    total = 0.0
    with evaluating(model, seed) as (device, dtype):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size].to(device, dtype)
            if cond:
                c = vae.one_hot(y[start:start + batch_size].to(device), 10).to(dtype)
                x_hat, mu, logvar = model(xb, c)
            else:
                x_hat, mu, logvar = model(xb)
            total += vae.loss_function(x_hat, xb, mu, logvar).item() * xb.shape[0]
    return total / x.shape[0]


def train_cvae_with_snapshots(device=None, data=None, classifier=None, seed=0, verbose=True,
                              epoch_callback=None):
    """The CVAE's headline run: `settings()["cvae_epochs"]` epochs at the course's settings,
    measured on the way. After epoch `vae_epochs` (the course's 10), every
    `cvae_snapshot_every` epochs and the last, a snapshot: the epoch's average training loss,
    the test loss and, with a `classifier`, the conditional accuracy
    (`cvae_conditional_accuracy`). The measurements leave the training run unchanged
    (`evaluate_vae` restores the random state; sampling uses its own generator).
    `epoch_callback(epoch, model, history)` runs after every epoch, as in `vae.train_vae`.

    Returns (model, history, snapshots): snapshots is a list of dicts (epoch, train_loss,
    test_loss, test_seconds, train_set_loss (the model evaluated on the training images like the
    test loss; at epoch `vae_epochs` only, else None), last_batch_loss, conditional_accuracy or
    None, train_seconds: training time up to that epoch, measurements and callbacks excluded), in
    epoch order."""
    s = settings()
    data = load_data() if data is None else data
    x_train, y_train, x_test, y_test = data
    snapshots = []
    excluded = 0.0  # seconds spent measuring, not training

    def snapshot(epoch, model, history):
        nonlocal excluded
        t0 = time.perf_counter()
        e = epoch + 1
        if e == s["vae_epochs"] or e % s["cvae_snapshot_every"] == 0 or e == s["cvae_epochs"]:
            accuracy = None if classifier is None else \
                cvae_conditional_accuracy(model, classifier, s["cvae_per_digit"])[0]
            t_test = time.perf_counter()
            test_loss = evaluate_vae(model, x_test, y_test, cond=True)
            snapshots.append({"epoch": e, "train_loss": history["epoch_loss"][-1], "test_loss": test_loss,
                              "test_seconds": time.perf_counter() - t_test,
                              "train_set_loss": evaluate_vae(model, x_train, y_train, cond=True)
                              if e == s["vae_epochs"] else None,  # 60,000 images: only where a row uses it
                              "last_batch_loss": history["batch_loss"][-1],
                              "conditional_accuracy": accuracy, "train_seconds": t0 - start - excluded})
            if verbose:
                print(f"   cvae epoch {e}: train {snapshots[-1]['train_loss']:.2f}, "
                      f"test {snapshots[-1]['test_loss']:.2f}"
                      + ("" if accuracy is None else f", conditional accuracy {accuracy:.4f}"), flush=True)
        if epoch_callback is not None:
            epoch_callback(epoch, model, history)
        excluded += time.perf_counter() - t0

    start = time.perf_counter()
    model, history, _ = train_vae_model(True, device, s["cvae_epochs"], data, seed=seed, verbose=verbose,
                                        epoch_callback=snapshot)
    return model, history, snapshots


def decode(model, z, labels=None):
    """Decode latents z (N, Z) (with class labels (N,) for a CVAE) -> (N, 1, 28, 28) on the CPU,
    in the model's dtype."""
    with evaluating(model) as (device, dtype):
        z = z.to(device, dtype)
        if labels is not None:
            z = torch.cat([z, vae.one_hot(torch.as_tensor(labels).to(device), 10).to(dtype)], dim=1)
        return model.decoder(z).cpu()


def prior_latents(model, n, seed=0):
    """n latents z ~ N(0, I) (n, Z), drawn from their own seeded generator."""
    return torch.randn(n, model.latent_size, generator=torch.Generator().manual_seed(seed))


def vae_samples(model, n, labels=None, seed=0):
    """n digits generated from z ~ N(0, I) (for a CVAE, of the given labels (n,))."""
    return decode(model, prior_latents(model, n, seed), labels)


def digit_rows(model, per_digit=10, seed=0):
    """For a CVAE: `per_digit` samples of every digit 0..9, row by row -> (10 * per_digit, 1, 28, 28)."""
    labels = torch.arange(10).repeat_interleave(per_digit)
    return vae_samples(model, labels.numel(), labels, seed=seed), labels


def latent_interpolation(model, rows=10, steps=10, labels=None, seed=0):
    """`rows` straight lines in latent space between two random z, `steps` points each,
    decoded -> (rows * steps, 1, 28, 28). For a CVAE pass one label per row."""
    gen = torch.Generator().manual_seed(seed)
    z0 = torch.randn(rows, 1, model.latent_size, generator=gen)
    z1 = torch.randn(rows, 1, model.latent_size, generator=gen)
    t = torch.linspace(0, 1, steps).view(1, steps, 1)
    z = (z0 * (1 - t) + z1 * t).reshape(rows * steps, -1)
    if labels is not None:
        labels = torch.as_tensor(labels).repeat_interleave(steps)
    return decode(model, z, labels)


def requested_digit_hits(model, classifier, per_digit=1000, seed=0):
    """Generate `per_digit` digits of each class with the CVAE (`digit_rows`) and classify them.
    Returns (hits (10 * per_digit,) float64: 1 where the classifier agrees with the requested
    digit, labels (10 * per_digit,), the norms of the z that were decoded (10 * per_digit,))."""
    images, labels = digit_rows(model, per_digit, seed=seed)
    z_norm = prior_latents(model, labels.numel(), seed).norm(dim=1)  # the z digit_rows decoded
    hits = (mc.predict_logits(classifier, images).argmax(dim=1) == labels).double()
    return hits, labels, z_norm


def cvae_conditional_accuracy(model, classifier, per_digit=1000, seed=0, hits=None):
    """Generate `per_digit` digits of each class with the CVAE; return (fraction classified
    as the requested digit, per-digit fractions (10,)). `hits`: a `requested_digit_hits`
    result to reuse instead of generating again."""
    correct, _, _ = requested_digit_hits(model, classifier, per_digit, seed) if hits is None else hits
    return correct.mean().item(), correct.view(10, -1).mean(dim=1)


def conditional_accuracy_by_latent_norm(model, classifier, per_digit=1000, seed=0, bins=4, hits=None):
    """Where do the CVAE's wrong digits come from? The digits of `cvae_conditional_accuracy`
    (same z and labels), grouped into `bins` groups by the norm of their z, from the prior's
    centre to its tails. Returns (accuracy per group (bins,), the groups' upper norm edges
    (bins,)). When 10 * per_digit is a multiple of `bins` (as in both modes' settings), the
    groups are equal in size and their mean is the overall conditional accuracy; otherwise
    `torch.tensor_split` makes their sizes differ by one at most and the mean is only close to
    it. `hits` as in `cvae_conditional_accuracy`."""
    correct, _, z_norm = requested_digit_hits(model, classifier, per_digit, seed) if hits is None else hits
    groups = torch.tensor_split(z_norm.argsort(), bins)
    return (torch.stack([correct[g].mean() for g in groups]),
            torch.stack([z_norm[g].max() for g in groups]))


@torch.no_grad()
def _posterior_means(model, x, y, cond, batch_size=1000):
    out = []
    with evaluating(model) as (device, dtype):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size].to(device, dtype).flatten(1)
            if cond:
                xb = torch.cat([xb, vae.one_hot(y[start:start + batch_size].to(device), 10).to(dtype)], 1)
            out.append(model.mu_layer(model.encoder(xb)).float().cpu())
    return torch.cat(out)


def latent_class_probe(model, train, test, cond=False, steps=300, lr=1e-2, seed=0):
    """How much digit identity the latent code carries LINEARLY: a linear classifier (softmax
    regression, full-batch Adam) trained on the posterior means mu of `train` = (x, y) and
    scored on those of `test`. Chance is 0.1; a code that spells out the digit scores near 1.
    For a CVAE the encoder also sees the label, so a high score means z repeats it. A lower
    bound: on the headline CVAE this probe scores 0.31 and a one-hidden-layer probe 0.80
    (A6/README.md)."""
    m_train = _posterior_means(model, *train, cond)
    m_test = _posterior_means(model, *test, cond)
    mean, std = m_train.mean(0), m_train.std(0).clamp_min(1e-6)
    with torch.random.fork_rng(devices=[]):  # seeded probe init; the global RNG is left alone
        torch.manual_seed(seed)
        probe = torch.nn.Linear(m_train.shape[1], 10)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(probe((m_train - mean) / std), train[1]).backward()
            opt.step()
    with torch.no_grad():
        return (probe((m_test - mean) / std).argmax(1) == test[1]).double().mean().item()


# --------------------------------------------------------------------------------------
# GANs
# --------------------------------------------------------------------------------------

def build_gan(kind, noise_dim=gan.NOISE_DIM, init=None):
    """(D, G, discriminator loss, generator loss) for kind "fc", "ls" or "dc".

    init: "xavier" (`vae.initialize_weights` on D and G) or "default" (PyTorch's init);
    None: the course's choice, GAN_INIT[kind]."""
    if kind == "fc":
        built = gan.discriminator(), gan.generator(noise_dim), gan.discriminator_loss, gan.generator_loss
    elif kind == "ls":
        built = (gan.discriminator(), gan.generator(noise_dim), gan.ls_discriminator_loss,
                 gan.ls_generator_loss)
    elif kind == "dc":
        built = (gan.build_dc_classifier(), gan.build_dc_generator(noise_dim), gan.discriminator_loss,
                 gan.generator_loss)
    else:
        raise ValueError(f"unknown GAN kind {kind!r}; use one of {GAN_KINDS}")
    init = GAN_INIT[kind] if init is None else init
    if init == "xavier":
        built[0].apply(vae.initialize_weights)
        built[1].apply(vae.initialize_weights)
    elif init != "default":
        raise ValueError(f'init must be "xavier", "default" or None, not {init!r}')
    return built


def train_gan(kind, device=None, num_epochs=None, data=None, seed=0, show_every=None,
              max_iters=None, plot=None, verbose=True):
    """Train one GAN ("fc", "ls" or "dc") with `gan.run_a_gan` at the course settings.

    Returns (D, G, history, seconds); history as returned by `run_a_gan` (losses and
    snapshots of G on a fixed noise batch every `show_every` iterations).
    """
    device = get_device(device)
    s = settings()
    num_epochs = s["gan_epochs"][kind] if num_epochs is None else num_epochs
    show_every = s["show_every"] if show_every is None else show_every
    x_train, y_train, _, _ = load_data() if data is None else data
    reset_seed(seed)
    D, G, d_loss, g_loss = build_gan(kind)
    D, G = D.to(device), G.to(device)
    D_solver, G_solver = gan.get_optimizer(D), gan.get_optimizer(G)
    loader = BatchLoader(x_train, y_train, seed=seed)
    with timer() as t:
        history = gan.run_a_gan(D, G, D_solver, G_solver, d_loss, g_loss, loader,
                                show_every=show_every, batch_size=BATCH_SIZE,
                                noise_size=gan.NOISE_DIM, num_epochs=num_epochs, device=device,
                                max_iters=max_iters, plot=plot, verbose=verbose)
    return D, G, history, t.seconds


def generate(G, n, noise_dim=gan.NOISE_DIM, batch_size=1000, seed=0):
    """n images from G in eval mode -> (n, 784) on the CPU, values in [-1, 1]. The noise comes
    from torch's generator seeded with `seed`; G's mode and the global random state are left
    as they were (`evaluating`)."""
    out = []
    with evaluating(G, seed) as (device, dtype):
        for start in range(0, n, batch_size):
            noise = gan.sample_noise(min(batch_size, n - start), noise_dim, dtype=dtype, device=device)
            out.append(G(noise).reshape(noise.shape[0], -1).float().cpu())
    return torch.cat(out)


def gan_latent_interpolation(G, rows=6, steps=10, noise_dim=gan.NOISE_DIM, seed=0):
    """Straight lines between two noise vectors, decoded by G -> (rows * steps, 784) in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    z0 = torch.rand(rows, 1, noise_dim, generator=gen) * 2 - 1
    z1 = torch.rand(rows, 1, noise_dim, generator=gen) * 2 - 1
    t = torch.linspace(0, 1, steps).view(1, steps, 1)
    z = (z0 * (1 - t) + z1 * t).reshape(rows * steps, noise_dim)
    with evaluating(G) as (device, dtype):
        return G(z.to(device, dtype)).reshape(rows * steps, -1).cpu()


def sample_scores(images, classifier, real_feats, value_range=(0.0, 1.0)):
    """Classifier-based scores of generated images: Frechet distance to the real features,
    mean top-class probability, and the fraction of images predicted as each digit."""
    feats, logits = mc.features_and_logits(classifier, images, value_range)
    proba = logits.softmax(dim=1)
    histogram = torch.bincount(proba.argmax(dim=1), minlength=10).double() / images.shape[0]
    return {"frechet_distance": mc.frechet_distance(feats, real_feats),
            "mean_top_class_probability": proba.max(dim=1).values.double().mean().item(),
            "predicted_digit_fractions": [round(v, 4) for v in histogram.tolist()]}


def gan_scores(G, classifier, real_feats, n=None, seed=0):
    """`sample_scores` of n images generated by G (default: the current mode's size)."""
    n = settings()["num_generated"] if n is None else n
    return sample_scores(generate(G, n, seed=seed), classifier, real_feats, value_range=(-1.0, 1.0))


# --------------------------------------------------------------------------------------
# make reproduce
# --------------------------------------------------------------------------------------

def get_classifier(device=None, data=None, verbose=True):
    """The evaluation classifier of the current mode (trained once, then loaded from the cache)."""
    return mc.load_or_train(settings()["classifier"], device=get_device(device), verbose=verbose,
                            data=data)


def _recorder(records, device):
    """record(metric, value, unit, seconds, reference=None, details=None): appends an A6 result
    record (data MNIST, device `device`) to `records`."""
    dev_name = device_name(device)

    def record(metric, value, unit, seconds, reference=None, details=None):
        records.append(make_record(ASSIGNMENT, metric, value, unit, DATA, dev_name, seconds,
                                   reference=reference, details=details))

    return record


def vae_records(device, data, classifier, real_feats, models=("vae", "cvae")):
    """Train the VAE and/or the CVAE (`models`) at the course settings and measure them:
    train and test loss, Frechet distance of samples, CVAE conditional accuracy. Returns
    result records (`run` calls this; it can also be run alone to refresh only these rows)."""
    device = get_device(device)
    s = settings()
    records = []
    record = _recorder(records, device)
    x_train, y_train, x_test, y_test = data
    sizes = {"num_train": int(x_train.shape[0]), "num_test": int(x_test.shape[0])}

    for cond, name, reference, target in ((False, "vae", VAE_REFERENCE, VAE_TARGET),
                                          (True, "cvae", CVAE_REFERENCE, CVAE_TARGET)):
        if name not in models:
            continue
        if cond:  # one run of cvae_epochs; the loss figures are its epoch vae_epochs (the course's 10)
            model, history, snapshots = train_cvae_with_snapshots(device, data, classifier)
            at = next(r for r in snapshots if r["epoch"] == s["vae_epochs"])
            train_loss, test_loss, test_seconds = at["train_loss"], at["test_loss"], at["test_seconds"]
            train_seconds, final_train_loss = at["train_seconds"], at["train_set_loss"]
            last_batch, epoch_losses = at["last_batch_loss"], history["epoch_loss"][:s["vae_epochs"]]
        else:
            model, history, train_seconds = train_vae_model(cond, device, s["vae_epochs"], data, verbose=True)
            train_loss, epoch_losses = history["epoch_loss"][-1], history["epoch_loss"]
            last_batch = history["batch_loss"][-1]
            with timer() as t:
                test_loss = evaluate_vae(model, x_test, y_test, cond)
            test_seconds = t.seconds
            final_train_loss = evaluate_vae(model, x_train, y_train, cond)
        common = {"epochs": s["vae_epochs"], "batch_size": BATCH_SIZE, "optimizer": "Adam lr 1e-3",
                  "hidden_size": vae.HIDDEN_SIZE, "latent_size": LATENT_SIZE,
                  "init": "Xavier-uniform Linear weights (vae.initialize_weights)"
                  if VAE_INIT == "xavier" else "PyTorch default", **sizes}
        if cond:
            common["run"] = (f"epoch {s['vae_epochs']} of one {s['cvae_epochs']}-epoch run (the sample "
                             f"measures use its last epoch)")
        record(f"{name}_train_loss", train_loss, "nats per image", train_seconds,
               reference=reference,
               details={**common, "target": f"<= {target}",
                        "definition": "negative ELBO (BCE summed over pixels + KL) per image, "
                                      "averaged over every batch of the training epoch",
                        "reference_definition": "the reference's figure is the loss of the LAST "
                                                "BATCH of epoch 10 (noisy, one batch of 128)",
                        "last_batch_loss": round(last_batch, 3),
                        "final_model_train_loss": round(final_train_loss, 3),
                        "final_model_train_loss_definition": "the model at that epoch evaluated on "
                                                             "the training images like the test loss",
                        "epoch_losses": [round(v, 3) for v in epoch_losses]})
        record(f"{name}_test_loss", test_loss, "nats per image", test_seconds,
               details={**common, "definition": "same loss on the test images (eval mode, one "
                                                "posterior sample per image, seed 0)"})
        met = "quick mode: not compared with" if quick_mode() else \
            "meets" if train_loss <= target else "MISSES"
        print(f"   {name}: train {train_loss:.2f} ({met} the target <= {target}; "
              f"last batch {last_batch:.2f}, reference {reference} = last batch), "
              f"test {test_loss:.2f}", flush=True)
        with timer() as t:
            n = s["num_generated"]
            labels = torch.arange(n) % 10 if cond else None
            scores = sample_scores(vae_samples(model, n, labels), classifier, real_feats)
        record(f"{name}_frechet_distance", scores["frechet_distance"], "feature FD", t.seconds,
               details={"num_generated": n, "num_real": sizes["num_test"],
                        "mean_top_class_probability": round(scores["mean_top_class_probability"], 4),
                        "predicted_digit_fractions": scores["predicted_digit_fractions"],
                        "sampling": "z ~ N(0, I)" + (", labels 0..9 in turn" if cond else ""),
                        "epochs": s["cvae_epochs"] if cond else s["vae_epochs"]})
        if cond:
            with timer() as t:
                hits = requested_digit_hits(model, classifier, s["cvae_per_digit"])
                accuracy, per_digit = cvae_conditional_accuracy(model, classifier, hits=hits)
            by_norm, edges = conditional_accuracy_by_latent_norm(model, classifier, hits=hits)
            probe = latent_class_probe(model, (x_train, y_train), (x_test, y_test), cond=True)
            record("cvae_conditional_accuracy", accuracy, "fraction", snapshots[-1]["train_seconds"],
                   details={"target": CONDITIONAL_ACCURACY_TARGET,
                            "per_digit": [round(v, 4) for v in per_digit.tolist()],
                            "accuracy_by_z_norm_quartile": [round(v, 4) for v in by_norm.tolist()],
                            "z_norm_quartile_upper_edges": [round(v, 3) for v in edges.tolist()],
                            "latent_class_probe_test_accuracy": round(probe, 4),
                            "latent_class_probe": "softmax regression on the posterior means "
                                                  "(train digits -> test digits); chance 0.1",
                            "num_generated": 10 * s["cvae_per_digit"],
                            "epochs": s["cvae_epochs"],
                            "by_epoch": [{"epoch": r["epoch"],
                                          "conditional_accuracy": round(r["conditional_accuracy"], 4),
                                          "train_loss": round(r["train_loss"], 3),
                                          "test_loss": round(r["test_loss"], 3),
                                          "train_seconds": round(r["train_seconds"], 1)} for r in snapshots],
                            "definition": "fraction of CVAE digits (z ~ N(0, I)) that the "
                                          "evaluation classifier assigns to the requested digit, "
                                          "after the run's last epoch"})
            print(f"   cvae conditional accuracy {accuracy:.4f}; by |z| quartile "
                  f"{[round(v, 3) for v in by_norm.tolist()]}; class probe on mu {probe:.3f}",
                  flush=True)
    return records


def gan_records(device, data, classifier, real_feats, real_fd, kinds=GAN_KINDS, other_fds=None):
    """Train the GANs of `kinds` at the course settings and measure their samples (Frechet
    distance, mean top-class probability). `real_fd`: the real train-vs-test floor, stored in
    the details; `other_fds`: {kind: FD} of GANs not rerun, so that the DC-GAN's record can
    say which GAN scores best when only some are rerun. Returns result records (`run` calls
    this; it can also be run alone to refresh only these rows)."""
    device = get_device(device)
    s = settings()
    records = []
    record = _recorder(records, device)
    x_test = data[2]

    fds = dict(other_fds or {})
    for kind in kinds:
        D, G, history, train_seconds = train_gan(kind, device, data=data, plot=False,
                                                 verbose=False)
        with timer() as t:
            scores = gan_scores(G, classifier, real_feats)
        fds[kind] = scores["frechet_distance"]
        details = {"model": GAN_NAMES[kind], "epochs": s["gan_epochs"][kind],
                   "iterations": history["iterations"], "batch_size": BATCH_SIZE,
                   "optimizer": "Adam lr 1e-3 betas (0.5, 0.999)", "noise_dim": gan.NOISE_DIM,
                   "init": ("Xavier-uniform Linear and ConvTranspose2d weights (vae.initialize_weights)"
                            if GAN_INIT[kind] == "xavier" else "PyTorch default"),
                   "final_d_loss": round(history["d_loss"][-1], 4),
                   "final_g_loss": round(history["g_loss"][-1], 4),
                   "train_seconds": round(train_seconds, 1),
                   "num_generated": s["num_generated"], "num_real": int(x_test.shape[0]),
                   "real_train_vs_test_fd": round(real_fd, 3),
                   "predicted_digit_fractions": scores["predicted_digit_fractions"],
                   "features": "evaluation classifier, penultimate layer (128-d); G in eval mode"}
        if kind == "dc" and set(GAN_KINDS) <= set(fds):
            best = min(fds, key=fds.get)
            details["best_gan_by_frechet_distance"] = best
            details["dc_is_best"] = best == "dc"
            if best != "dc" and not quick_mode():
                print(f"   NOTE: the DC-GAN does NOT score best by Frechet distance "
                      f"({ {k: round(v, 2) for k, v in fds.items()} })", flush=True)
        record(f"{kind}_gan_frechet_distance", scores["frechet_distance"], "feature FD",
               train_seconds + t.seconds, details=details)
        record(f"{kind}_gan_mean_top_class_probability", scores["mean_top_class_probability"],
               "probability", t.seconds,
               details={"model": GAN_NAMES[kind], "num_generated": s["num_generated"],
                        "definition": "mean over generated digits of the evaluation "
                                      "classifier's largest class probability"})
        print(f"   {kind} GAN: FD {scores['frechet_distance']:.3f}, top-class p "
              f"{scores['mean_top_class_probability']:.4f} ({train_seconds:.0f} s)", flush=True)
    return records


def classifier_records(device, data):
    """The evaluation classifier (trained on the first config["num_train"] digits, or loaded from
    the cache) and the Frechet distance's floor (real training vs test digits). Returns
    (records, classifier, real_feats, real_fd): what `vae_records` and `gan_records` measure with."""
    device = get_device(device)
    s = settings()
    records = []
    record = _recorder(records, device)

    x_train, y_train, x_test, y_test = data
    sizes = {"num_train": int(x_train.shape[0]), "num_test": int(x_test.shape[0])}
    with timer() as t:
        num_clf = s["classifier"]["num_train"]
        clf_data = data if num_clf == sizes["num_train"] else load_data(num_train=num_clf)
        classifier, info = get_classifier(device, data=clf_data)
        if info["cached"]:
            info["test_accuracy"] = mc.class_accuracy(classifier, x_test, y_test)
        real_feats = mc.features(classifier, x_test)
    record("mnist_classifier_test_accuracy", info["test_accuracy"], "fraction", t.seconds,
           details={"target": CLASSIFIER_TARGET, "cached": info["cached"],
                    "train_seconds": round(info["train_seconds"], 1),
                    "train_device": info["train_device"], "config": info["config"],
                    "architecture": "conv3x3(32)-BN-pool-conv3x3(64)-BN-pool-fc128-fc10, "
                                    "Adam + one-cycle LR",
                    "num_test": sizes["num_test"],
                    "note": "used only to measure generated digits; weights cached under "
                            "$EECS598_CACHE/a6/ keyed by a hash of the config"})
    print(f"   classifier test accuracy {info['test_accuracy']:.4f}", flush=True)

    with timer() as t:
        n_real = min(s["num_generated"], x_train.shape[0])
        real_fd = mc.frechet_distance(mc.features(classifier, x_train[:n_real]), real_feats)
    record("real_train_vs_test_frechet_distance", real_fd, "feature FD", t.seconds,
           details={"what": f"first {n_real} real training digits vs the {sizes['num_test']} "
                            "test digits: the floor a perfect generator would reach",
                    "features": "evaluation classifier, penultimate layer (128-d)"})
    return records, classifier, real_feats, real_fd


def run(device=None):
    """Train and measure every A6 model; return the result records."""
    data = load_data()
    records, classifier, real_feats, real_fd = classifier_records(device, data)
    records += vae_records(device, data, classifier, real_feats)
    records += gan_records(device, data, classifier, real_feats, real_fd)
    return records
