"""Unit tests for A2/linear_classifier.py.

References: torch.autograd / torch.nn.functional in float64, numeric gradients from
eecs598.grad, brute-force Python. Small shapes, fixed seeds, stated tolerances.
"""
import pytest
import torch
import torch.nn.functional as F

import linear_classifier as lc
from eecs598.grad import compute_numeric_gradient, rel_error
from eecs598.testing import assert_close

N, D, C = 24, 13, 5
LOSSES = {
    "svm_naive": lc.svm_loss_naive, "svm_vectorized": lc.svm_loss_vectorized,
    "softmax_naive": lc.softmax_loss_naive, "softmax_vectorized": lc.softmax_loss_vectorized,
}


def make_problem(seed=0, n=N, d=D, c=C, w_scale=0.1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=dtype)
    W = w_scale * torch.randn(d, c, generator=g, dtype=dtype)
    y = torch.randint(c, (n,), generator=g)
    return W, X, y


# --- independent references (autograd) -------------------------------------------------------
def svm_reference(W, X, y, reg):
    """Multiclass hinge loss (margin 1) + reg * sum(W^2), written without in-place ops."""
    scores = X @ W
    correct = scores.gather(1, y.view(-1, 1))
    not_correct = torch.ones_like(scores).scatter(1, y.view(-1, 1), 0.0)
    margins = torch.relu(scores - correct + 1) * not_correct
    return margins.sum() / X.shape[0] + reg * (W ** 2).sum()


def softmax_reference(W, X, y, reg):
    return F.cross_entropy(X @ W, y) + reg * (W ** 2).sum()


def reference_loss_and_grad(kind, W, X, y, reg):
    W = W.detach().clone().requires_grad_(True)
    fn = svm_reference if kind.startswith("svm") else softmax_reference
    loss = fn(W, X, y, reg)
    (grad,) = torch.autograd.grad(loss, W)
    return loss.detach(), grad


# --- losses and gradients ----------------------------------------------------------------------
@pytest.mark.parametrize("reg", [0.0, 0.05])
@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_and_grad_match_autograd(name, reg):
    W, X, y = make_problem(seed=1)
    loss, dW = LOSSES[name](W.clone(), X, y, reg)
    ref_loss, ref_grad = reference_loss_and_grad(name, W, X, y, reg)
    assert torch.is_tensor(loss) and loss.dim() == 0, "loss must be a 0-dim tensor"
    assert dW.shape == W.shape and dW.dtype == W.dtype
    assert_close(loss, ref_loss, 1e-10, f"{name} loss (reg={reg})")
    assert_close(dW, ref_grad, 1e-9, f"{name} gradient (reg={reg})")


@pytest.mark.parametrize("reg", [0.0, 0.1])
@pytest.mark.parametrize("name", list(LOSSES))
def test_grad_matches_numeric_gradient(name, reg):
    W, X, y = make_problem(seed=2, n=6, d=4, c=3, w_scale=0.5)
    _, dW = LOSSES[name](W.clone(), X, y, reg)
    numeric = compute_numeric_gradient(lambda w: LOSSES[name](w, X, y, reg)[0], W.clone(), h=1e-6)
    assert_close(dW, numeric, 1e-6, f"{name} gradient vs numeric (reg={reg})")


@pytest.mark.parametrize("reg", [0.0, 0.05])
@pytest.mark.parametrize("kind", ["svm", "softmax"])
def test_naive_and_vectorized_agree(kind, reg):
    W, X, y = make_problem(seed=3, n=40, d=20, c=7)
    loss_naive, grad_naive = LOSSES[f"{kind}_naive"](W.clone(), X, y, reg)
    loss_vec, grad_vec = LOSSES[f"{kind}_vectorized"](W.clone(), X, y, reg)
    assert rel_error(loss_naive, loss_vec) < 1e-6, f"loss: naive {loss_naive} vs vectorized {loss_vec}"
    assert rel_error(grad_naive, grad_vec) < 1e-6, "gradients of naive and vectorized differ"


def test_svm_loss_of_known_case():
    """Hand-computed: scores [[1, 2, 0]], label 0 -> margins 2 and 0 -> loss 2."""
    X = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    W = torch.tensor([[1.0, 2.0, 0.0], [0, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.float64)
    y = torch.tensor([0])
    for fn in (lc.svm_loss_naive, lc.svm_loss_vectorized):
        loss, dW = fn(W.clone(), X, y, 0.0)
        assert abs(loss.item() - 2.0) < 1e-12, f"{fn.__name__}: loss {loss.item()} != 2"
        expected = torch.zeros_like(W)
        expected[0, 0], expected[0, 1] = -1.0, 1.0
        assert_close(dW, expected, 1e-12, f"{fn.__name__} gradient")


@pytest.mark.parametrize("name", ["softmax_naive", "softmax_vectorized"])
def test_softmax_is_numerically_stable(name):
    W, X, y = make_problem(seed=4, n=10, d=6, c=4)
    W = W / W.abs().max()
    X = X / X.abs().max() * 1e4 / W.shape[0]
    X[0] = 1e4 * torch.sign(W[:, 0])  # one sample with a logit of size ~1e4 * d
    for dtype in (torch.float64, torch.float32):
        loss, dW = LOSSES[name](W.to(dtype), X.to(dtype), y, 0.01)
        assert torch.isfinite(loss), f"{name} loss is not finite in {dtype} for logits ~1e4"
        assert torch.isfinite(dW).all(), f"{name} gradient is not finite in {dtype}"
    ref_loss, ref_grad = reference_loss_and_grad("softmax", W, X, y, 0.01)
    loss, dW = LOSSES[name](W, X, y, 0.01)
    assert_close(loss, ref_loss, 1e-9, f"{name} loss at large logits")
    assert_close(dW, ref_grad, 1e-9, f"{name} gradient at large logits")


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_follow_dtype(name):
    W, X, y = make_problem(seed=5, dtype=torch.float32)
    loss, dW = LOSSES[name](W, X, y, 0.1)
    assert loss.dtype == torch.float32 and dW.dtype == torch.float32
    ref_loss, ref_grad = reference_loss_and_grad(name, W.double(), X.double(), y, 0.1)
    assert_close(loss, ref_loss, 1e-5, f"{name} float32 loss")
    assert_close(dW, ref_grad, 1e-4, f"{name} float32 gradient")


# --- sampling, training, prediction ------------------------------------------------------------
def test_sample_batch_draws_every_sample_and_pairs_rows():
    torch.manual_seed(0)
    num_rows, num_train = 15, 10
    X = torch.arange(num_rows, dtype=torch.float64).view(-1, 1).repeat(1, 3)
    y = torch.arange(num_rows)
    seen = torch.zeros(num_rows, dtype=torch.int64)
    for _ in range(50):
        X_batch, y_batch = lc.sample_batch(X, y, num_train, 20)
        assert X_batch.shape == (20, 3) and y_batch.shape == (20,)
        assert torch.equal(X_batch[:, 0].long(), y_batch), "X_batch and y_batch rows do not match"
        seen += torch.bincount(y_batch, minlength=num_rows)
    # 1000 uniform draws over 10 indices: each is missed with probability 0.9^1000 ~ 1e-46.
    assert (seen[:num_train] > 0).all(), f"some samples are never drawn: counts {seen.tolist()}"
    assert seen[num_train - 1] > 0, "the last sample (index num_train-1) is never drawn"
    assert (seen[num_train:] == 0).all(), "drew rows beyond num_train"
    # Uniform: each count is Binomial(1000, 0.1) (mean 100, sd 9.5); 6 sd bounds.
    assert seen[:num_train].min() > 40 and seen[:num_train].max() < 160, seen.tolist()


def test_train_linear_classifier_sgd_update_and_decay():
    G = torch.randn(D, C, dtype=torch.float64)
    calls = []

    def constant_grad_loss(W, X_batch, y_batch, reg):
        calls.append((X_batch.shape, reg))
        return torch.tensor(3.0, dtype=torch.float64), G

    _, X, y = make_problem(seed=6)
    W0 = torch.randn(D, C, dtype=torch.float64)
    W_in = W0.clone()
    W, hist = lc.train_linear_classifier(constant_grad_loss, W_in, X, y, learning_rate=0.1,
                                         reg=0.25, num_iters=7, batch_size=5)
    assert W is W_in, "a W passed in is updated in place and returned (the docstring)"
    assert hist == [3.0] * 7 and len(calls) == 7
    assert all(shape == (5, D) and reg == 0.25 for shape, reg in calls)
    assert_close(W, W0 - 0.1 * 7 * G, 1e-12, "W after 7 constant-gradient SGD steps")

    # learning rate halved every 2 iterations: steps 0.1, 0.1, 0.05, 0.05, 0.025
    W, _ = lc.train_linear_classifier(constant_grad_loss, W0.clone(), X, y, learning_rate=0.1,
                                      num_iters=5, batch_size=5, learning_rate_decay=0.5,
                                      decay_every=2)
    assert_close(W, W0 - 0.325 * G, 1e-12, "W with a step-decayed learning rate")


def test_train_linear_classifier_initialises_and_learns():
    torch.manual_seed(0)
    # Separable 3-class problem: class c has a large value in feature c.
    y = torch.arange(60) % 3
    X = 0.1 * torch.randn(60, 4, dtype=torch.float64)
    X[torch.arange(60), y] += 2.0
    for loss_fn in (lc.svm_loss_vectorized, lc.softmax_loss_vectorized):
        W, hist = lc.train_linear_classifier(loss_fn, None, X, y, learning_rate=0.1, reg=1e-4,
                                             num_iters=200, batch_size=20)
        assert W.shape == (4, 3) and W.dtype == X.dtype and W.device == X.device
        assert len(hist) == 200 and all(isinstance(v, float) for v in hist)
        assert sum(hist[-20:]) / 20 < 0.5 * sum(hist[:5]) / 5, f"{loss_fn.__name__}: loss did not drop"
        assert ((X @ W).argmax(dim=1) == y).all()


def test_predict_linear_classifier():
    W, X, y = make_problem(seed=7)
    pred = lc.predict_linear_classifier(W, X)
    expected = [max(range(C), key=lambda j: sum(X[i, k].item() * W[k, j].item() for k in range(D)))
                for i in range(N)]
    assert pred.shape == (N,) and pred.dtype == torch.int64
    assert pred.tolist() == expected


@pytest.mark.parametrize("cls,kind", [(lc.LinearSVM, "svm"), (lc.Softmax, "softmax")])
def test_classifier_classes(cls, kind, tmp_path):
    W, X, y = make_problem(seed=8)
    model = cls()
    loss, dW = model.loss(W, X, y, 0.02)
    ref_loss, ref_grad = reference_loss_and_grad(kind, W, X, y, 0.02)
    assert_close(loss, ref_loss, 1e-10, f"{cls.__name__}.loss")
    assert_close(dW, ref_grad, 1e-9, f"{cls.__name__}.loss gradient")

    hist = model.train(X, y, learning_rate=1e-2, reg=1e-3, num_iters=10, batch_size=8)
    assert len(hist) == 10 and model.W.shape == (D, C)
    pred = model.predict(X)
    assert pred.shape == (N,) and torch.equal(pred, (X @ model.W).argmax(dim=1))

    path = tmp_path / f"{kind}.pt"
    model.save(str(path))
    other = cls()
    other.load(str(path))
    assert torch.equal(other.W, model.W)
    assert torch.equal(other.predict(X), pred)
    if torch.cuda.is_available():
        on_gpu = cls()
        on_gpu.load(str(path), device="cuda")
        assert on_gpu.W.is_cuda and torch.equal(on_gpu.predict(X.cuda()).cpu(), pred)


@pytest.mark.parametrize("fn", [lc.svm_get_search_params, lc.softmax_get_search_params])
def test_search_params_sizes(fn):
    lrs, regs = fn()
    assert 5 <= len(lrs) * len(regs) <= 25, "the course asks for 5 to 25 settings"
    assert all(v > 0 for v in lrs) and all(v >= 0 for v in regs)


def test_test_one_param_set():
    torch.manual_seed(0)
    y = torch.arange(80) % 4
    X = torch.randn(80, 6, dtype=torch.float64)
    X[torch.arange(80), y] += 1.5
    data = {"X_train": X[:60], "y_train": y[:60], "X_val": X[60:], "y_val": y[60:]}
    model, train_acc, val_acc = lc.test_one_param_set(lc.Softmax(), data, 0.1, 1e-3, num_iters=30)
    assert isinstance(model, lc.Softmax) and model.W is not None
    ref_train = 100.0 * sum(int(p == t) for p, t in zip((X[:60] @ model.W).argmax(1).tolist(), y[:60].tolist())) / 60
    ref_val = 100.0 * sum(int(p == t) for p, t in zip((X[60:] @ model.W).argmax(1).tolist(), y[60:].tolist())) / 20
    assert abs(train_acc - ref_train) < 1e-9 and abs(val_acc - ref_val) < 1e-9


# ---------------------------------------------------------------- the SGD loop, by hand
def _fixed_batches(X, y, seed=3):
    """A sample_batch stand-in that records its (num_train, batch_size) arguments and serves
    batches from its own generator (so the reference loop can replay them)."""
    gen = torch.Generator().manual_seed(seed)
    calls, served = [], []

    def sample(X_, y_, num_train, batch_size):
        calls.append((num_train, batch_size))
        idx = torch.randint(num_train, (batch_size,), generator=gen)
        served.append(idx)
        return X_[idx], y_[idx]
    return sample, calls, served


def test_train_linear_classifier_is_sgd_on_sampled_batches(monkeypatch):
    """W starts at 1e-6 * N(0, 1) (std checked); every iteration draws a batch with
    sample_batch(X, y, N, batch_size) and steps W -= lr * dW of loss_func(W, batch, reg); the
    learning rate is multiplied by the decay every `decay_every` iterations. Replayed here."""
    torch.manual_seed(0)
    X, y = torch.randn(40, 6, dtype=torch.float64), torch.randint(0, 3, (40,))
    sample, calls, served = _fixed_batches(X, y)
    monkeypatch.setattr(lc, "sample_batch", sample)
    seen = []

    def loss_func(W, Xb, yb, reg):
        seen.append((W.clone(), reg))
        return lc.svm_loss_vectorized(W, Xb, yb, reg)

    W, history = lc.train_linear_classifier(loss_func, None, X, y, learning_rate=0.3, reg=0.02, num_iters=7,
                                            batch_size=5, learning_rate_decay=0.5, decay_every=3)
    assert calls == [(40, 5)] * 7 and len(history) == 7
    assert 0.5e-6 < seen[0][0].std().item() < 2e-6 and seen[0][0].shape == (6, 3)
    assert all(reg == 0.02 for _, reg in seen)
    ref = seen[0][0].clone()
    for it, idx in enumerate(served):
        lr = 0.3 * 0.5 ** (it // 3)
        loss, dW = lc.svm_loss_vectorized(ref, X[idx], y[idx], 0.02)
        assert history[it] == pytest.approx(loss.item(), abs=1e-12)
        ref = ref - lr * dW
    assert_close(W, ref, 1e-12, "W after 7 SGD steps")


def test_classifier_train_and_test_one_param_set_pass_their_settings(monkeypatch):
    """LinearClassifier.train hands lr, reg, iterations and batch size to the loop, and
    test_one_param_set trains with its arguments and reports the accuracies of that W."""
    torch.manual_seed(0)
    X, y = torch.randn(40, 6, dtype=torch.float64), torch.randint(0, 3, (40,))
    data = {"X_train": X, "y_train": y, "X_val": X[:15], "y_val": y[:15]}
    for cls in (lc.LinearSVM, lc.Softmax):
        sample, calls, _ = _fixed_batches(X, y)
        monkeypatch.setattr(lc, "sample_batch", sample)
        clf, train_acc, val_acc = lc.test_one_param_set(cls(), data, 0.3, 0.02, num_iters=6, batch_size=4)
        assert calls == [(40, 4)] * 6
        sample, _, _ = _fixed_batches(X, y)
        monkeypatch.setattr(lc, "sample_batch", sample)
        torch.manual_seed(0)  # what cls() does, for the initial W
        W_ref, _ = lc.train_linear_classifier(cls().loss, None, X, y, 0.3, 0.02, 6, 4)
        assert_close(clf.W, W_ref, 1e-12, f"{cls.__name__} W")
        assert train_acc == pytest.approx(100 * (X.mm(W_ref).argmax(1) == y).double().mean().item())
        assert val_acc == pytest.approx(100 * (X[:15].mm(W_ref).argmax(1) == y[:15]).double().mean().item())


def test_test_one_param_set_passes_the_learning_rate_decay(monkeypatch):
    """learning_rate_decay / decay_every reach the training loop: the W of the same training
    with the decay, not the W without it."""
    torch.manual_seed(0)
    X, y = torch.randn(40, 6, dtype=torch.float64), torch.randint(0, 3, (40,))
    data = {"X_train": X, "y_train": y, "X_val": X[:15], "y_val": y[:15]}

    def trained_w(decay):
        monkeypatch.setattr(lc, "sample_batch", _fixed_batches(X, y)[0])
        torch.manual_seed(0)  # what Softmax() does, for the initial W
        return lc.train_linear_classifier(lc.Softmax().loss, None, X, y, 0.3, 0.02, 6, 4,
                                          learning_rate_decay=decay, decay_every=2)[0]
    with_decay, without = trained_w(0.1), trained_w(1.0)
    assert not torch.allclose(with_decay, without)
    monkeypatch.setattr(lc, "sample_batch", _fixed_batches(X, y)[0])
    clf, _, _ = lc.test_one_param_set(lc.Softmax(), data, 0.3, 0.02, num_iters=6, batch_size=4,
                                      learning_rate_decay=0.1, decay_every=2)
    assert_close(clf.W, with_decay, 1e-12, "W trained with the decay")


def test_linear_classifier_load_honours_device(tmp_path):
    model = lc.Softmax()
    model.W = torch.randn(5, 3)
    model.save(str(tmp_path / "w.pt"))
    other = lc.Softmax()
    other.load(str(tmp_path / "w.pt"), device="meta")
    assert other.W.device.type == "meta"


def test_a_float64_checkpoint_predicts_float32_data(tmp_path):
    """The course's svm/softmax checkpoints hold float64 W; loaded by a classifier, they predict
    float32 data (and a float32 W predicts float64 data) as argmax of X @ W."""
    torch.manual_seed(0)
    for w_dtype, x_dtype in ((torch.float64, torch.float32), (torch.float32, torch.float64)):
        model = lc.LinearSVM()
        model.W = torch.randn(6, 4, dtype=w_dtype)
        model.save(str(tmp_path / "w.pt"))
        restored = lc.LinearSVM()
        restored.load(str(tmp_path / "w.pt"))
        X = torch.randn(9, 6, dtype=x_dtype)
        assert torch.equal(restored.predict(X), X.double().mm(model.W.double()).argmax(dim=1))
        assert restored.W.dtype == w_dtype  # the loaded weights themselves are not changed
    # integer pixels are not a reason to round W to integers
    restored.W = torch.tensor([[1e-3, -1e-3], [-2e-3, 2e-3]])
    X = torch.tensor([[200, 10], [10, 200]], dtype=torch.uint8)
    assert restored.predict(X).tolist() == [0, 1]


def test_plot_search_results_places_each_setting_on_the_grid_including_reg_zero(monkeypatch):
    """The search may use reg = 0 (svm_get_search_params allows reg >= 0): each (lr, reg) is a
    square at (index of lr, index of reg) in the sorted grid, coloured by its accuracy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from a2_helpers import plot_search_results
    monkeypatch.setattr(plt, "show", lambda: None)
    results = {(1e-2, 0.0): (40.0, 38.0), (1e-2, 1e-3): (41.0, 39.0), (1e-1, 0.0): (30.0, 29.0)}
    plot_search_results(results, "SVM")
    train_ax, val_ax = plt.gcf().axes[:2]
    for ax, idx in ((train_ax, 0), (val_ax, 1)):
        squares = ax.collections[0]
        positions = [tuple(p) for p in squares.get_offsets().tolist()]
        keys = sorted(results)
        assert positions == [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0)]  # lr 0.01 < 0.1; reg 0 < 1e-3
        assert squares.get_array().tolist() == [results[k][idx] for k in keys]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "0.001"]
    plt.close("all")
