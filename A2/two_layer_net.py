"""
A two-layer fully connected network (FC - ReLU - FC - softmax) on CIFAR-10, from scratch.

Forward pass, softmax loss and the backward pass are written by hand with tensor operations;
no torch.autograd and no torch.nn in this file. Device- and dtype-agnostic: the parameters
follow the `device` / `dtype` given to TwoLayerNet, the functions follow their inputs.

Regularization convention of the course: loss + reg * (sum(W1 ** 2) + sum(W2 ** 2)),
gradients + 2 * reg * W (biases are not regularized).
"""
import itertools
import random

import torch

from linear_classifier import sample_batch


def hello_two_layer_net():
    """Smoke test: prints a greeting so the notebook knows this file was imported."""
    print("Hello from two_layer_net.py!")


# Train accuracy is measured on a fixed random sample of this many training samples.
TRAIN_ACC_SAMPLES = 1000


class TwoLayerNet:
    """
    input - fully connected layer - ReLU - fully connected layer - softmax

    Input dimension D, hidden dimension H, C classes. Weights are drawn as std * randn,
    biases start at zero. Parameters live in the dict self.params:
    W1 (D, H), b1 (H,), W2 (H, C), b2 (C,).
    """

    def __init__(self, input_size, hidden_size, output_size, dtype=torch.float32,
                 device="cpu", std=1e-4):
        random.seed(0)
        torch.manual_seed(0)
        self.params = {
            "W1": std * torch.randn(input_size, hidden_size, dtype=dtype, device=device),
            "b1": torch.zeros(hidden_size, dtype=dtype, device=device),
            "W2": std * torch.randn(hidden_size, output_size, dtype=dtype, device=device),
            "b2": torch.zeros(output_size, dtype=dtype, device=device),
        }

    def loss(self, X, y=None, reg=0.0):
        """Scores (y None) or (loss, grads) (see `nn_forward_backward`)."""
        return nn_forward_backward(self.params, X, y, reg)

    def train(self, X, y, X_val, y_val, learning_rate=1e-3, learning_rate_decay=0.95,
              reg=5e-6, num_iters=100, batch_size=200, verbose=False):
        """SGD (see `nn_train`); returns the stats dict."""
        return nn_train(self.params, nn_forward_backward, nn_predict, X, y, X_val, y_val,
                        learning_rate, learning_rate_decay, reg, num_iters, batch_size, verbose)

    def predict(self, X):
        """Predicted labels (N,) int64 for X (N, D)."""
        return nn_predict(self.params, nn_forward_backward, X)

    def save(self, path):
        """Write the params dict to `path` with torch.save."""
        torch.save(self.params, path)
        print(f"Saved in {path}")

    def load(self, path):
        """Read params written by `save`; they keep the dtype/device of this net's parameters."""
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        missing = [k for k in ("W1", "b1", "W2", "b2") if k not in checkpoint]
        if missing:
            raise ValueError(f"Failed to load your checkpoint {path}: missing {missing}")
        ref = self.params["W1"]
        self.params = {k: checkpoint[k].to(dtype=ref.dtype, device=ref.device)
                       for k in ("W1", "b1", "W2", "b2")}
        print(f"load checkpoint file: {path}")


def nn_forward_pass(params, X):
    """
    The forward pass: scores = relu(X W1 + b1) W2 + b2.

    params: dict with W1 (D, H), b1 (H,), W2 (H, C), b2 (C,); X: (N, D).
    Returns (scores, hidden): scores (N, C), hidden (N, H) the ReLU activations.
    """
    W1, b1 = params["W1"], params["b1"]
    W2, b2 = params["W2"], params["b2"]
    hidden = None
    scores = None
    ### BEGIN SOLUTION
    ### HINT: two matrix products with a ReLU (clamp(min=0)) in between; add the biases.
    hidden = (X.mm(W1) + b1).clamp(min=0)
    scores = hidden.mm(W2) + b2
    ### END SOLUTION
    return scores, hidden


def nn_forward_backward(params, X, y=None, reg=0.0):
    """
    Loss and gradients of the two-layer net.

    params: as in `nn_forward_pass`; X: (N, D); y: (N,) labels in [0, C) or None;
    reg: regularization strength.

    If y is None, returns the scores (N, C). Otherwise returns (loss, grads): loss is the mean
    softmax cross-entropy plus reg * (sum(W1 ** 2) + sum(W2 ** 2)) as a 0-dim tensor; grads
    maps each name in params to the gradient of the loss with respect to it. The softmax is
    numerically stable (max shift), so large scores give finite values.
    """
    W1, b1 = params["W1"], params["b1"]
    W2, b2 = params["W2"], params["b2"]
    N, D = X.shape

    scores, h1 = nn_forward_pass(params, X)
    if y is None:
        return scores

    loss = None
    grads = {}
    ### BEGIN SOLUTION
    ### HINT: stable log-softmax (shift by the row max), loss = -mean(log p_y) + reg * (sum W1^2 + sum W2^2); dscores = (p - onehot(y)) / N, then backprop through W2, the ReLU (zero where hidden == 0) and W1.
    rows = torch.arange(N, device=X.device)
    shifted = scores - scores.max(dim=1, keepdim=True).values
    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    data_loss = -log_probs[rows, y].sum() / N
    loss = data_loss + reg * (torch.sum(W1 * W1) + torch.sum(W2 * W2))

    dscores = log_probs.exp()
    dscores[rows, y] -= 1
    dscores /= N
    grads["W2"] = h1.t().mm(dscores) + 2 * reg * W2
    grads["b2"] = dscores.sum(dim=0)
    dh = dscores.mm(W2.t())
    dh = dh * (h1 > 0).to(dh.dtype)
    grads["W1"] = X.t().mm(dh) + 2 * reg * W1
    grads["b1"] = dh.sum(dim=0)
    ### END SOLUTION
    return loss, grads


def nn_train(params, loss_func, pred_func, X, y, X_val, y_val, learning_rate=1e-3,
             learning_rate_decay=0.95, reg=5e-6, num_iters=100, batch_size=200, verbose=False):
    """
    Train a network with stochastic gradient descent (updates `params` in place).

    params: dict of parameter tensors; loss_func(params, X, y=..., reg=...) -> (loss, grads);
    pred_func(params, loss_func, X) -> labels; X, y: training data (N, D), (N,);
    X_val, y_val: validation data; learning_rate; learning_rate_decay: the factor applied to
    the learning rate after each epoch; reg; num_iters; batch_size; verbose: print progress.

    An epoch is max(N // batch_size, 1) iterations. At the end of every epoch (and after
    the last iteration when it does not end an epoch) this records the accuracy on a fixed
    random sample of TRAIN_ACC_SAMPLES training samples (all of them when N is smaller; the
    sample does not depend on the global RNG) and on the whole validation set, then
    decays the learning rate.

    Returns a dict: loss_history (one float per iteration), train_acc_history and
    val_acc_history (floats in [0, 1], one per record).
    """
    num_train = X.shape[0]
    iterations_per_epoch = max(num_train // batch_size, 1)
    sample_gen = torch.Generator().manual_seed(0)
    acc_idx = torch.randperm(num_train, generator=sample_gen)[:TRAIN_ACC_SAMPLES].to(X.device)
    X_acc, y_acc = X[acc_idx], y[acc_idx]

    loss_history = []
    train_acc_history = []
    val_acc_history = []

    for it in range(num_iters):
        X_batch, y_batch = sample_batch(X, y, num_train, batch_size)
        loss, grads = loss_func(params, X_batch, y=y_batch, reg=reg)
        loss_history.append(loss.item())

        ### BEGIN SOLUTION
        ### HINT: vanilla SGD: move every parameter against its gradient, scaled by the learning rate, in place.
        for name in params:
            params[name] -= learning_rate * grads[name]
        ### END SOLUTION

        if verbose and it % 100 == 0:
            print(f"iteration {it} / {num_iters}: loss {loss.item():f}")

        end_of_epoch = (it + 1) % iterations_per_epoch == 0
        if end_of_epoch or it == num_iters - 1:
            ### BEGIN SOLUTION
            ### HINT: accuracies on (X_acc, y_acc) and (X_val, y_val) via pred_func; append them; decay the learning rate at the end of an epoch.
            train_acc = (pred_func(params, loss_func, X_acc) == y_acc).double().mean().item()
            val_acc = (pred_func(params, loss_func, X_val) == y_val).double().mean().item()
            train_acc_history.append(train_acc)
            val_acc_history.append(val_acc)
            if end_of_epoch:
                learning_rate *= learning_rate_decay
            ### END SOLUTION

    return {
        "loss_history": loss_history,
        "train_acc_history": train_acc_history,
        "val_acc_history": val_acc_history,
    }


def nn_predict(params, loss_func, X):
    """Predicted labels (N,) int64: the argmax of the scores loss_func(params, X)."""
    y_pred = None
    ### BEGIN SOLUTION
    ### HINT: loss_func(params, X) without labels returns the scores.
    y_pred = torch.argmax(loss_func(params, X), dim=1)
    ### END SOLUTION
    return y_pred


def nn_get_search_params():
    """
    Hyperparameter lists to search: (learning_rates, hidden_sizes, regularization_strengths,
    learning_rate_decays). `find_best_net` tries every combination.
    """
    learning_rates = []
    hidden_sizes = []
    regularization_strengths = []
    learning_rate_decays = []
    ### BEGIN SOLUTION
    ### HINT: a few values per list; the product is the number of networks trained.
    learning_rates = [0.1, 0.3, 1.0]
    hidden_sizes = [256]
    regularization_strengths = [1e-4, 1e-3]
    learning_rate_decays = [0.85]
    ### END SOLUTION
    return learning_rates, hidden_sizes, regularization_strengths, learning_rate_decays


def find_best_net(data_dict, get_param_set_fn, num_iters=3000, batch_size=1000, std=1e-4,
                  verbose=False, results=None):
    """
    Train one TwoLayerNet per hyperparameter combination from `get_param_set_fn()` (the
    product of its four lists: learning rates, hidden sizes, regularization strengths,
    learning rate decays) on data_dict["X_train"], validating on data_dict["X_val"], and keep
    the net whose trained weights score highest on the validation set (the returned net, as
    it is, reproduces best_val_acc); the first one wins a tie. Every net starts from the same
    seed (TwoLayerNet seeds 0).

    Additions to the course signature: num_iters / batch_size (course values 3000 / 1000),
    std (weight init scale), verbose (print each configuration), and results: a dict that,
    when given, receives (learning_rate, hidden_size, reg, decay) -> stats for every
    configuration. Each trained net gets an attribute `hparams` (a dict of its
    hyperparameters) so that the chosen ones can be reported.

    Returns (best_net, best_stat, best_val_acc), best_val_acc a fraction in [0, 1].
    """
    best_net = None
    best_stat = None
    best_val_acc = 0.0
    ### BEGIN SOLUTION
    ### HINT: loop over itertools.product of the four lists; build a TwoLayerNet on the data's device and dtype, train it, compare the trained net's validation accuracy (the last entry of val_acc_history).
    X_train, y_train = data_dict["X_train"], data_dict["y_train"]
    X_val, y_val = data_dict["X_val"], data_dict["y_val"]
    num_classes = int(torch.max(y_train).item()) + 1
    lrs, hidden_sizes, regs, decays = get_param_set_fn()
    for lr, hs, reg, decay in itertools.product(lrs, hidden_sizes, regs, decays):
        net = TwoLayerNet(X_train.shape[1], hs, num_classes, dtype=X_train.dtype,
                          device=X_train.device, std=std)
        stats = net.train(X_train, y_train, X_val, y_val, learning_rate=lr,
                          learning_rate_decay=decay, reg=reg, num_iters=num_iters,
                          batch_size=batch_size)
        net.hparams = {"learning_rate": lr, "hidden_size": hs, "reg": reg,
                       "learning_rate_decay": decay}
        if results is not None:
            results[(lr, hs, reg, decay)] = stats
        val_acc = stats["val_acc_history"][-1]  # nn_train checks the final weights last
        if verbose:
            print(f"lr {lr:.2e} hidden {hs} reg {reg:.2e} decay {decay}: "
                  f"val {100 * val_acc:.2f}% (best during training "
                  f"{100 * max(stats['val_acc_history']):.2f}%)")
        if best_net is None or val_acc > best_val_acc:
            best_net, best_stat, best_val_acc = net, stats, val_acc
    ### END SOLUTION
    return best_net, best_stat, best_val_acc
