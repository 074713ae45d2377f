"""A6 part 1: variational autoencoders (VAE) and conditional VAEs (CVAE) on MNIST.

Course API (names and signatures kept): `VAE(input_size, latent_size=15)` with hidden size
400, `CVAE(input_size, num_classes=10, latent_size=15)`, `reparametrize(mu, logvar)`,
`loss_function(x_hat, x, mu, logvar)`, plus the helpers the course kept in `a6_helper.py`:
`one_hot(labels, class_size)` and `train_vae(...)`.

Differences from the reference solutions (on purpose):
* nothing is hard-coded to CUDA: noise is drawn on the device and in the dtype of its inputs,
  and `train_vae` moves batches to the model's device;
* `train_vae` creates its optimizer once for the whole run (the reference built a new Adam
  every epoch, which resets the moment estimates) and reports the average per-sample loss
  over each epoch (the reference printed the loss of the last batch only);
* the encoder runs once per forward pass (the reference ran it twice).
"""
import math
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

HIDDEN_SIZE = 400


def hello_vae():
    """Smoke test: check that this file is importable from the notebook."""
    print("Hello from vae.py!")


def _image_shape(input_size):
    """(1, s, s) for a square single-channel image of `input_size` pixels, else (input_size,)."""
    side = math.isqrt(input_size)
    return (1, side, side) if side * side == input_size else (input_size,)


class VAE(nn.Module):
    """A fully connected VAE for images of `input_size` pixels with values in [0, 1].

    Architecture (H = 400 hidden units, Z = `latent_size`):
      encoder: Flatten, Linear(input_size, H), ReLU, Linear(H, H), ReLU, Linear(H, H), ReLU
      mu_layer: Linear(H, Z);  logvar_layer: Linear(H, Z)
      decoder: Linear(Z, H), ReLU, Linear(H, H), ReLU, Linear(H, H), ReLU,
               Linear(H, input_size), Sigmoid, Unflatten to (1, 28, 28) for MNIST
    """

    def __init__(self, input_size, latent_size=15):
        super().__init__()
        self.input_size = input_size  # H*W
        self.latent_size = latent_size  # Z
        self.hidden_dim = HIDDEN_SIZE  # H
        self.encoder = None
        self.mu_layer = None
        self.logvar_layer = None
        self.decoder = None
        ### BEGIN SOLUTION
        ### HINT: build self.encoder, self.mu_layer, self.logvar_layer and self.decoder as described in the class docstring (nn.Sequential, nn.Flatten, nn.Unflatten).
        H, Z = self.hidden_dim, self.latent_size
        self.encoder = nn.Sequential(
            nn.Flatten(),
            nn.Linear(input_size, H), nn.ReLU(),
            nn.Linear(H, H), nn.ReLU(),
            nn.Linear(H, H), nn.ReLU(),
        )
        self.mu_layer = nn.Linear(H, Z)
        self.logvar_layer = nn.Linear(H, Z)
        self.decoder = nn.Sequential(
            nn.Linear(Z, H), nn.ReLU(),
            nn.Linear(H, H), nn.ReLU(),
            nn.Linear(H, H), nn.ReLU(),
            nn.Linear(H, input_size), nn.Sigmoid(),
            nn.Unflatten(1, _image_shape(input_size)),
        )
        ### END SOLUTION

    def forward(self, x):
        """Encode, sample a latent with the reparametrization trick, decode.

        Inputs:
        - x: Batch of input images of shape (N, 1, H, W)

        Returns:
        - x_hat: Reconstructed input data of shape (N, 1, H, W)
        - mu: Matrix representing estimated posterior mu (N, Z)
        - logvar: Matrix representing estimated variance in log-space (N, Z)
        """
        x_hat = None
        mu = None
        logvar = None
        ### BEGIN SOLUTION
        ### HINT: encoder -> (mu_layer, logvar_layer) -> reparametrize -> decoder.
        h = self.encoder(x)
        mu = self.mu_layer(h)
        logvar = self.logvar_layer(h)
        z = reparametrize(mu, logvar)
        x_hat = self.decoder(z)
        ### END SOLUTION
        return x_hat, mu, logvar


class CVAE(nn.Module):
    """A conditional VAE: the one-hot class vector c is appended to the encoder's input
    (the flattened image) and to the decoder's input (the latent z).

    Same layer sizes as `VAE`, with input_size + num_classes encoder inputs and
    latent_size + num_classes decoder inputs.
    """

    def __init__(self, input_size, num_classes=10, latent_size=15):
        super().__init__()
        self.input_size = input_size  # H*W
        self.latent_size = latent_size  # Z
        self.num_classes = num_classes  # C
        self.hidden_dim = HIDDEN_SIZE  # H
        self.encoder = None
        self.mu_layer = None
        self.logvar_layer = None
        self.decoder = None
        ### BEGIN SOLUTION
        ### HINT: as in VAE, but the encoder takes input_size + num_classes inputs (no Flatten: forward concatenates) and the decoder latent_size + num_classes.
        H, Z, C = self.hidden_dim, self.latent_size, self.num_classes
        self.encoder = nn.Sequential(
            nn.Linear(input_size + C, H), nn.ReLU(),
            nn.Linear(H, H), nn.ReLU(),
            nn.Linear(H, H), nn.ReLU(),
        )
        self.mu_layer = nn.Linear(H, Z)
        self.logvar_layer = nn.Linear(H, Z)
        self.decoder = nn.Sequential(
            nn.Linear(Z + C, H), nn.ReLU(),
            nn.Linear(H, H), nn.ReLU(),
            nn.Linear(H, H), nn.ReLU(),
            nn.Linear(H, input_size), nn.Sigmoid(),
            nn.Unflatten(1, _image_shape(input_size)),
        )
        ### END SOLUTION

    def forward(self, x, c):
        """
        Inputs:
        - x: Input data for this timestep of shape (N, 1, H, W)
        - c: One hot vector representing the input class (0-9) (N, C)

        Returns:
        - x_hat: Reconstructed input data of shape (N, 1, H, W)
        - mu: Matrix representing estimated posterior mu (N, Z)
        - logvar: Matrix representing estimated variance in log-space (N, Z)
        """
        x_hat = None
        mu = None
        logvar = None
        ### BEGIN SOLUTION
        ### HINT: concatenate the flattened x with c for the encoder, and z with c for the decoder.
        c = c.to(dtype=x.dtype)
        h = self.encoder(torch.cat([x.flatten(1), c], dim=1))
        mu = self.mu_layer(h)
        logvar = self.logvar_layer(h)
        z = reparametrize(mu, logvar)
        x_hat = self.decoder(torch.cat([z, c], dim=1))
        ### END SOLUTION
        return x_hat, mu, logvar


def reparametrize(mu, logvar):
    """Differentiably sample z ~ N(mu, exp(logvar)) with the reparametrization trick:
    z = mu + sigma * epsilon, sigma = exp(logvar / 2), epsilon ~ N(0, I).

    Inputs:
    - mu: Tensor of shape (N, Z), the posterior means
    - logvar: Tensor of shape (N, Z), the log-variances of the posterior

    Returns:
    - z: Tensor of shape (N, Z), on the device and in the dtype of `mu`; gradients flow
      to both `mu` and `logvar`.
    """
    z = None
    ### BEGIN SOLUTION
    ### HINT: draw epsilon with torch.randn_like(mu) (same device and dtype), then z = mu + exp(logvar / 2) * epsilon.
    epsilon = torch.randn_like(mu)
    z = mu + torch.exp(0.5 * logvar) * epsilon
    ### END SOLUTION
    return z


def loss_function(x_hat, x, mu, logvar):
    """The negative variational lower bound (ELBO), averaged over the minibatch:

        loss = (sum over pixels and batch of BCE(x_hat, x)
                + sum over latent dims and batch of KL(N(mu, exp(logvar)) || N(0, I))) / N
        KL   = -1/2 * sum(1 + logvar - mu^2 - exp(logvar))

    Inputs:
    - x_hat: Reconstruced input data of shape (N, 1, H, W), values in (0, 1)
    - x: Input data of shape (N, 1, H, W), values in [0, 1]
    - mu: (N, Z) posterior means;  logvar: (N, Z) posterior log-variances

    Returns:
    - loss: scalar tensor, the negative ELBO per sample of the minibatch
    """
    loss = None
    ### BEGIN SOLUTION
    ### HINT: F.binary_cross_entropy(..., reduction="sum") for the reconstruction term, the closed-form KL above, both divided by N.
    N = mu.shape[0]
    reconstruction = F.binary_cross_entropy(x_hat, x, reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    loss = (reconstruction + kl) / N
    ### END SOLUTION
    return loss


# --------------------------------------------------------------------------------------
# Helpers (the course kept these in a6_helper.py; they are given, not part of the exercise)
# --------------------------------------------------------------------------------------

def one_hot(labels, class_size):
    """(N,) integer labels -> (N, class_size) float one-hot matrix on the labels' device."""
    labels = torch.as_tensor(labels)
    targets = torch.zeros(labels.shape[0], class_size, device=labels.device)
    targets[torch.arange(labels.shape[0], device=labels.device), labels.long()] = 1.0
    return targets


def initialize_weights(m):
    """Xavier-uniform weights for nn.Linear and nn.ConvTranspose2d modules (biases keep their
    default init); use as model.apply(initialize_weights). The course's a6_helper helper.

    The VAE/CVAE experiments use it: with PyTorch's default Linear init (bound 1/sqrt(fan_in))
    the six-layer ReLU VAE/CVAE learn markedly slower at the course's Adam 1e-3 / batch 128.
    """
    if isinstance(m, (nn.Linear, nn.ConvTranspose2d)):
        nn.init.xavier_uniform_(m.weight)


def _model_device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


_COURSE_FORM_OPTIMIZERS = weakref.WeakKeyDictionary()  # model -> the Adam of its per-epoch calls


def train_vae(model, train_loader, num_epochs=10, cond=False, optimizer=None, lr=1e-3,
              device=None, num_classes=10, verbose=True, epoch_callback=None):
    """Train a VAE (or, with `cond=True`, a CVAE) for `num_epochs` epochs.

    Inputs:
    - model: a VAE (forward(x)) or a CVAE (forward(x, one_hot(y))).
    - train_loader: iterable of (x, y) batches, x of shape (N, 1, 28, 28) in [0, 1];
      iterated once per epoch (a DataLoader, or a list of batches).
    - optimizer: used if given; otherwise ONE Adam(lr) is created for the whole run.
    - device: where to train; default: the device of the model's parameters. Batches are
      moved there and cast to the dtype of the model's parameters.
    - epoch_callback: optional f(epoch, model, history), called after every epoch
      (e.g. to show samples during training).

    The course's per-epoch form, `train_vae(epoch, model, train_loader, cond=False)`, also
    works: it trains one epoch and prints `epoch`; its calls share one Adam(lr) per model (the
    course built a new one per call, which reset the moment estimates every epoch).

    Returns a history dict:
    - "epoch_loss": average negative ELBO per sample over each epoch (weighted by batch
      size, so it is the mean over every sample seen in the epoch, not the last batch);
    - "batch_loss": the loss of every minibatch;  "optimizer": the optimizer used.
    """
    if isinstance(model, int):  # the course's form: train_vae(epoch, model, train_loader, cond=False)
        epoch, model, train_loader = model, train_loader, num_epochs
        if optimizer is None:  # one Adam per model across the per-epoch calls (the course made one per call)
            optimizer = _COURSE_FORM_OPTIMIZERS.get(model)
            if optimizer is None:
                optimizer = _COURSE_FORM_OPTIMIZERS[model] = torch.optim.Adam(model.parameters(), lr=lr)
        history = train_vae(model, train_loader, 1, cond, optimizer, lr, device, num_classes, verbose=False)
        if verbose:
            print(f"Train Epoch: {epoch}  average loss per sample: {history['epoch_loss'][0]:.4f}")
        return history
    device = _model_device(model) if device is None else torch.device(device)
    model.to(device)
    dtype = next(model.parameters()).dtype  # batches follow the model's dtype
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = {"epoch_loss": [], "batch_loss": [], "optimizer": optimizer}
    for epoch in range(num_epochs):
        model.train()
        total, count = 0.0, 0
        for data, labels in train_loader:
            data = data.to(device, dtype)
            if cond:
                x_hat, mu, logvar = model(data, one_hot(labels.to(device), num_classes).to(data.dtype))
            else:
                x_hat, mu, logvar = model(data)
            optimizer.zero_grad()
            loss = loss_function(x_hat, data, mu, logvar)
            loss.backward()
            optimizer.step()
            value = loss.item()
            history["batch_loss"].append(value)
            total += value * data.shape[0]
            count += data.shape[0]
        epoch_loss = total / max(count, 1)
        history["epoch_loss"].append(epoch_loss)
        if verbose:
            print(f"Train Epoch: {epoch}  average loss per sample: {epoch_loss:.4f}  "
                  f"(last batch {history['batch_loss'][-1]:.4f})" if count else
                  f"Train Epoch: {epoch}  (empty loader)")
        if epoch_callback is not None:
            epoch_callback(epoch, model, history)
    return history
