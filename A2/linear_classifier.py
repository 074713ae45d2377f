"""
Linear classifiers on CIFAR-10: a multiclass SVM and a softmax classifier.

Everything is written by hand with tensor operations: the losses, their gradients and the
stochastic gradient descent loop. No torch.autograd and no torch.nn in this file.
The code is device- and dtype-agnostic: it follows the device and dtype of its inputs.

Regularization convention of the course: loss + reg * sum(W ** 2), gradient + 2 * reg * W.
"""
import random

import torch


def hello_linear_classifier():
    """Smoke test: prints a greeting so the notebook knows this file was imported."""
    print("Hello from linear_classifier.py!")


# ---------------------------------------------------------------------------------------------
# The classifier classes. They only dispatch to the functions below.
# ---------------------------------------------------------------------------------------------
class LinearClassifier:
    """An abstract linear classifier; LinearSVM and Softmax choose the loss."""

    def __init__(self):
        random.seed(0)
        torch.manual_seed(0)
        self.W = None

    def train(self, X_train, y_train, learning_rate=1e-3, reg=1e-5, num_iters=100,
              batch_size=200, verbose=False, learning_rate_decay=1.0, decay_every=None):
        """Train with SGD (see `train_linear_classifier`); returns the list of losses."""
        self.W, loss_history = train_linear_classifier(
            self.loss, self.W, X_train, y_train, learning_rate, reg, num_iters, batch_size,
            verbose, learning_rate_decay=learning_rate_decay, decay_every=decay_every)
        return loss_history

    def predict(self, X):
        """Predicted labels (N,) int64 for the rows of X (both in the promotion of their dtypes,
        on X's device: a float64 checkpoint such as the course's predicts float32 data too)."""
        dtype = torch.promote_types(self.W.dtype, X.dtype)
        return predict_linear_classifier(self.W.to(device=X.device, dtype=dtype), X.to(dtype))

    def loss(self, W, X_batch, y_batch, reg):
        """Loss and gradient for a minibatch: (loss, dW). Subclasses override this."""
        raise NotImplementedError

    def save(self, path):
        """Write {"W": W} to `path` with torch.save."""
        torch.save({"W": self.W}, path)
        print(f"Saved in {path}")

    def load(self, path, device="cpu"):
        """Read W back from a file written by `save`, onto `device` (that of the X to predict)."""
        W_dict = torch.load(path, map_location=device, weights_only=True)
        if "W" not in W_dict:
            raise ValueError(f"{path} holds no 'W' entry")
        self.W = W_dict["W"]
        print(f"load checkpoint file: {path}")


class LinearSVM(LinearClassifier):
    """A linear classifier that uses the multiclass SVM (hinge) loss."""

    def loss(self, W, X_batch, y_batch, reg):
        return svm_loss_vectorized(W, X_batch, y_batch, reg)


class Softmax(LinearClassifier):
    """A linear classifier that uses the softmax + cross-entropy loss."""

    def loss(self, W, X_batch, y_batch, reg):
        return softmax_loss_vectorized(W, X_batch, y_batch, reg)


# ---------------------------------------------------------------------------------------------
# Multiclass SVM
# ---------------------------------------------------------------------------------------------
def svm_loss_naive(W, X, y, reg):
    """
    Multiclass SVM loss with margin 1, written with explicit loops.

    Inputs have dimension D, there are C classes, and we operate on minibatches of N examples.
    W: (D, C) weights; X: (N, D) minibatch; y: (N,) labels, y[i] = c means X[i] has label c,
    0 <= c < C; reg: (float) regularization strength.

    Returns (loss, dW): loss as a 0-dim tensor (mean hinge loss + reg * sum(W ** 2)), and
    dW, the gradient with respect to W, shaped like W.
    """
    dW = torch.zeros_like(W)
    num_classes = W.shape[1]
    num_train = X.shape[0]
    loss = torch.zeros((), dtype=W.dtype, device=W.device)
    ### BEGIN SOLUTION
    ### HINT: loop over the samples and the classes; for every class j != y[i] with a positive margin, add the margin to the loss, X[i] to column j of dW and -X[i] to column y[i]. Average over N, then add the regularization to both.
    for i in range(num_train):
        yi = int(y[i])
        scores = W.t().mv(X[i])
        correct_class_score = scores[yi]
        for j in range(num_classes):
            if j == yi:
                continue
            margin = scores[j] - correct_class_score + 1  # note delta = 1
            if margin > 0:
                loss = loss + margin
                dW[:, j] += X[i]
                dW[:, yi] -= X[i]
    loss = loss / num_train
    dW /= num_train
    loss = loss + reg * torch.sum(W * W)
    dW += 2 * reg * W
    ### END SOLUTION
    return loss, dW


def svm_loss_vectorized(W, X, y, reg):
    """
    Multiclass SVM loss, vectorized: same inputs and outputs as `svm_loss_naive`.
    No Python loops.
    """
    ### BEGIN SOLUTION
    ### HINT: scores = X @ W; margins = max(0, s_j - s_y + 1) with the correct class's margin set to 0; the gradient is X^T @ M, where M holds 1 for positive margins and minus their count in the correct class's column.
    num_train = X.shape[0]
    rows = torch.arange(num_train, device=X.device)
    scores = X.mm(W)
    correct = scores[rows, y].unsqueeze(1)
    margins = (scores - correct + 1).clamp(min=0)
    margins[rows, y] = 0
    loss = margins.sum() / num_train + reg * torch.sum(W * W)

    coeff = (margins > 0).to(W.dtype)
    coeff[rows, y] = -coeff.sum(dim=1)
    dW = X.t().mm(coeff) / num_train + 2 * reg * W
    ### END SOLUTION
    return loss, dW


# ---------------------------------------------------------------------------------------------
# Softmax
# ---------------------------------------------------------------------------------------------
def softmax_loss_naive(W, X, y, reg):
    """
    Softmax (cross-entropy) loss, written with explicit loops.

    Same inputs as `svm_loss_naive`. Returns (loss, dW): the mean of -log softmax(X[i] W)[y[i]]
    plus reg * sum(W ** 2), and its gradient. Numerically stable: the scores of each sample
    are shifted by their maximum before exponentiating.
    """
    dW = torch.zeros_like(W)
    num_classes = W.shape[1]
    num_train = X.shape[0]
    loss = torch.zeros((), dtype=W.dtype, device=W.device)
    ### BEGIN SOLUTION
    ### HINT: for each sample, shift its scores by their max, then loss_i = log(sum_j exp(s_j)) - s_y and dL_i/ds_j = p_j - [j == y_i]; column j of dW gains X[i] * dL_i/ds_j.
    for i in range(num_train):
        yi = int(y[i])
        scores = W.t().mv(X[i])
        scores = scores - scores.max()
        exp_scores = scores.exp()
        total = exp_scores.sum()
        loss = loss + torch.log(total) - scores[yi]
        for j in range(num_classes):
            p_j = exp_scores[j] / total
            dW[:, j] += (p_j - (1.0 if j == yi else 0.0)) * X[i]
    loss = loss / num_train
    dW /= num_train
    loss = loss + reg * torch.sum(W * W)
    dW += 2 * reg * W
    ### END SOLUTION
    return loss, dW


def softmax_loss_vectorized(W, X, y, reg):
    """
    Softmax loss, vectorized: same inputs and outputs as `softmax_loss_naive`. No loops.
    Numerically stable (log-sum-exp with a max shift), so logits of size 1e4 are fine.
    """
    ### BEGIN SOLUTION
    ### HINT: shift each row of scores by its max, log_probs = shifted - log(sum(exp(shifted))); loss = -mean(log_probs[range(N), y]); dscores = softmax - onehot(y).
    num_train = X.shape[0]
    rows = torch.arange(num_train, device=X.device)
    scores = X.mm(W)
    shifted = scores - scores.max(dim=1, keepdim=True).values
    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    loss = -log_probs[rows, y].sum() / num_train + reg * torch.sum(W * W)

    dscores = log_probs.exp()
    dscores[rows, y] -= 1
    dW = X.t().mm(dscores) / num_train + 2 * reg * W
    ### END SOLUTION
    return loss, dW


# ---------------------------------------------------------------------------------------------
# Training and prediction
# ---------------------------------------------------------------------------------------------
def sample_batch(X, y, num_train, batch_size):
    """
    A minibatch of `batch_size` samples drawn uniformly **with replacement** from the first
    `num_train` rows of X (N, D) / y (N,) (every one of them can be drawn, the last included).
    Indices are created on X's device. Returns (X_batch (batch_size, D), y_batch (batch_size,)).
    """
    ### BEGIN SOLUTION
    ### HINT: draw batch_size indices uniformly, with replacement, from all num_train samples (on the device of X).
    idx = torch.randint(num_train, (batch_size,), device=X.device)
    X_batch = X[idx]
    y_batch = y[idx]
    ### END SOLUTION
    return X_batch, y_batch


def train_linear_classifier(loss_func, W, X, y, learning_rate=1e-3, reg=1e-5, num_iters=100,
                            batch_size=200, verbose=False, learning_rate_decay=1.0,
                            decay_every=None):
    """
    Train a linear classifier with stochastic gradient descent.

    loss_func: (W, X_batch, y_batch, reg) -> (loss, dW); W: (D, C) initial weights or None
    (then 1e-6 * randn with C = max(y) + 1, on X's device and dtype); X: (N, D); y: (N,);
    learning_rate, reg, num_iters, batch_size as usual; verbose prints every 100 iterations.
    learning_rate_decay / decay_every (additions to the course API): multiply the learning
    rate by `learning_rate_decay` every `decay_every` iterations (None: never, the course's
    constant learning rate).

    Returns (W, loss_history) with loss_history a list of Python floats, one per iteration.
    A W passed in is updated in place (and returned): pass W.clone() to keep the original.
    """
    num_train, dim = X.shape
    if W is None:
        num_classes = int(torch.max(y).item()) + 1
        W = 0.000001 * torch.randn(dim, num_classes, device=X.device, dtype=X.dtype)
    else:
        num_classes = W.shape[1]

    loss_history = []
    for it in range(num_iters):
        ### BEGIN SOLUTION
        ### HINT: sample a minibatch, evaluate loss_func, record loss.item(), step W against the gradient; decay the learning rate when asked.
        X_batch, y_batch = sample_batch(X, y, num_train, batch_size)
        loss, grad = loss_func(W, X_batch, y_batch, reg)
        loss_history.append(loss.item())
        W -= learning_rate * grad
        if decay_every and (it + 1) % decay_every == 0:
            learning_rate *= learning_rate_decay
        ### END SOLUTION
        if verbose and it % 100 == 0:
            print(f"iteration {it} / {num_iters}: loss {loss_history[-1]:f}")
    return W, loss_history


def predict_linear_classifier(W, X):
    """Predicted labels for X (N, D) with weights W (D, C): argmax over classes of X @ W, as an
    (N,) int64 tensor."""
    y_pred = torch.zeros(X.shape[0], dtype=torch.int64, device=X.device)
    ### BEGIN SOLUTION
    ### HINT: one matrix product and an argmax over dim 1.
    y_pred = torch.argmax(X.mm(W), dim=1)
    ### END SOLUTION
    return y_pred


# ---------------------------------------------------------------------------------------------
# Hyperparameter search
# ---------------------------------------------------------------------------------------------
def svm_get_search_params():
    """
    The (learning_rates, regularization_strengths) lists to search for the SVM.
    At most 25 combinations in all (len(lrs) * len(regs) <= 25).
    """
    learning_rates = []
    regularization_strengths = []
    ### BEGIN SOLUTION
    ### HINT: choose at most 25 (learning rate, regularization) pairs; log-spaced values around the ones that work in a first coarse run.
    learning_rates = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    regularization_strengths = [1e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    ### END SOLUTION
    return learning_rates, regularization_strengths


def softmax_get_search_params():
    """The (learning_rates, regularization_strengths) lists for the softmax classifier (<= 25 pairs)."""
    learning_rates = []
    regularization_strengths = []
    ### BEGIN SOLUTION
    ### HINT: as for the SVM; the softmax gradient is smaller, so it tolerates larger learning rates.
    learning_rates = [1e-2, 3e-2, 1e-1, 3e-1, 1.0]
    regularization_strengths = [1e-5, 1e-4, 1e-3, 3e-3, 1e-2]
    ### END SOLUTION
    return learning_rates, regularization_strengths


def test_one_param_set(cls, data_dict, lr, reg, num_iters=2000, batch_size=200,
                       learning_rate_decay=1.0, decay_every=None):
    """
    Train `cls` (a LinearClassifier instance) on data_dict["X_train"] / ["y_train"] with
    learning rate `lr` and regularization `reg`, then measure its accuracy on the training and
    validation sets.

    Returns (cls, train_acc, val_acc), accuracies in percent.
    """
    train_acc = 0.0
    val_acc = 0.0
    ### BEGIN SOLUTION
    ### HINT: cls.train(...), then compare cls.predict(...) with the labels for X_train and X_val.
    cls.train(data_dict["X_train"], data_dict["y_train"], lr, reg, num_iters, batch_size,
              learning_rate_decay=learning_rate_decay, decay_every=decay_every)
    y_train_pred = cls.predict(data_dict["X_train"])
    train_acc = 100.0 * (data_dict["y_train"] == y_train_pred).double().mean().item()
    y_val_pred = cls.predict(data_dict["X_val"])
    val_acc = 100.0 * (data_dict["y_val"] == y_val_pred).double().mean().item()
    ### END SOLUTION
    return cls, train_acc, val_acc
