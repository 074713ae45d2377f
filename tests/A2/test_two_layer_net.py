"""Unit tests for A2/two_layer_net.py (and the toy data of A2/a2_helpers.py).

References: torch.autograd / torch.nn.functional in float64, numeric gradients from
eecs598.grad, brute-force re-runs. Small shapes, fixed seeds, stated tolerances.
"""
import pytest
import torch
import torch.nn.functional as F

import two_layer_net as tln
from a2_helpers import get_toy_data
from eecs598.grad import compute_numeric_gradient
from eecs598.testing import assert_close

NAMES = ("W1", "b1", "W2", "b2")


def make_params(seed=0, d=7, h=9, c=4, scale=0.5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return {"W1": scale * torch.randn(d, h, generator=g, dtype=dtype),
            "b1": scale * torch.randn(h, generator=g, dtype=dtype),
            "W2": scale * torch.randn(h, c, generator=g, dtype=dtype),
            "b2": scale * torch.randn(c, generator=g, dtype=dtype)}


def make_data(seed=0, n=11, d=7, c=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed + 100)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(c, (n,), generator=g)


def reference(params, X, y, reg):
    """Scores, loss and gradients of FC-ReLU-FC + softmax cross-entropy via autograd."""
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    scores = torch.relu(X @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
    loss = F.cross_entropy(scores, y) + reg * ((p["W1"] ** 2).sum() + (p["W2"] ** 2).sum())
    grads = torch.autograd.grad(loss, [p[k] for k in NAMES])
    return scores.detach(), loss.detach(), dict(zip(NAMES, grads))


def test_forward_pass_matches_reference():
    params = make_params()
    X, _ = make_data()
    scores, hidden = tln.nn_forward_pass(params, X)
    ref_hidden = torch.clamp(X @ params["W1"] + params["b1"], min=0)
    assert_close(hidden, ref_hidden, 1e-12, "hidden")
    assert_close(scores, ref_hidden @ params["W2"] + params["b2"], 1e-12, "scores")
    assert torch.equal(tln.nn_forward_backward(params, X), scores), "y=None must return the scores"


@pytest.mark.parametrize("reg", [0.0, 0.05])
def test_forward_backward_matches_autograd(reg):
    params = make_params(seed=1)
    X, y = make_data(seed=1)
    loss, grads = tln.nn_forward_backward(params, X, y, reg)
    _, ref_loss, ref_grads = reference(params, X, y, reg)
    assert torch.is_tensor(loss) and loss.dim() == 0
    assert_close(loss, ref_loss, 1e-10, f"loss (reg={reg})")
    assert set(grads) == set(NAMES)
    for k in NAMES:
        assert grads[k].shape == params[k].shape
        assert_close(grads[k], ref_grads[k], 1e-9, f"grad {k} (reg={reg})")


@pytest.mark.parametrize("reg", [0.0, 0.1])
def test_forward_backward_matches_numeric_gradient(reg):
    params = make_params(seed=2, d=4, h=5, c=3)
    X, y = make_data(seed=2, n=6, d=4, c=3)
    _, grads = tln.nn_forward_backward(params, X, y, reg)
    for k in NAMES:
        def f(value, k=k):
            return tln.nn_forward_backward({**params, k: value}, X, y, reg)[0]
        numeric = compute_numeric_gradient(f, params[k].clone(), h=1e-6)
        assert_close(grads[k], numeric, 1e-6, f"grad {k} vs numeric (reg={reg})")


def test_forward_backward_is_numerically_stable():
    params = make_params(seed=3)
    X, y = make_data(seed=3)
    scale = 1e4 / tln.nn_forward_pass(params, X)[0].abs().max()
    params["W2"] = params["W2"] * scale
    params["b2"] = params["b2"] * scale
    assert tln.nn_forward_pass(params, X)[0].abs().max() > 9e3
    for dtype in (torch.float64, torch.float32):
        p = {k: v.to(dtype) for k, v in params.items()}
        loss, grads = tln.nn_forward_backward(p, X.to(dtype), y, 0.01)
        assert torch.isfinite(loss), f"loss not finite in {dtype} with logits ~1e4"
        assert all(torch.isfinite(g).all() for g in grads.values()), f"grads not finite in {dtype}"
    loss, grads = tln.nn_forward_backward(params, X, y, 0.01)
    _, ref_loss, ref_grads = reference(params, X, y, 0.01)
    assert_close(loss, ref_loss, 1e-9, "loss at large logits")
    for k in NAMES:
        assert_close(grads[k], ref_grads[k], 1e-8, f"grad {k} at large logits")


def test_toy_data_and_toy_loss():
    X, y, params = get_toy_data()
    assert X.device.type == "cpu" and X.shape == (5, 4) and y.tolist() == [0, 1, 2, 2, 1]
    assert params["W1"].shape == (4, 10) and params["W2"].shape == (10, 3)
    loss, grads = tln.nn_forward_backward(params, X, y, 0.05)
    _, ref_loss, ref_grads = reference({k: v.double() for k, v in params.items()}, X.double(), y, 0.05)
    assert_close(loss, ref_loss, 1e-5, "toy loss (float32)")
    for k in NAMES:
        assert_close(grads[k], ref_grads[k], 1e-4, f"toy grad {k} (float32)")


def test_nn_predict():
    params = make_params(seed=4)
    X, _ = make_data(seed=4)
    pred = tln.nn_predict(params, tln.nn_forward_backward, X)
    ref_scores, _, _ = reference(params, X, torch.zeros(X.shape[0], dtype=torch.int64), 0.0)
    assert pred.shape == (X.shape[0],) and pred.dtype == torch.int64
    assert torch.equal(pred, ref_scores.argmax(dim=1))


# --- training ----------------------------------------------------------------------------------
def _constant_grad_loss(params, X, y=None, reg=0.0):
    if y is None:
        return torch.zeros(X.shape[0], 2, dtype=X.dtype)
    return torch.tensor(1.5), {k: torch.ones_like(v) for k, v in params.items()}


@pytest.mark.parametrize("batch_size", [5, 4])
def test_nn_train_sgd_update_and_decay_per_epoch(batch_size):
    """N = 10: an epoch is max(N // batch_size, 1) = 2 iterations for batch 5 and for batch 4
    (a ceiling would give 3 for batch 4)."""
    X = torch.randn(10, 3, dtype=torch.float64)
    y = torch.arange(10) % 2
    params = {k: torch.zeros(s, dtype=torch.float64) for k, s in
              (("W1", (3, 4)), ("b1", (4,)), ("W2", (4, 2)), ("b2", (2,)))}
    stats = tln.nn_train(params, _constant_grad_loss, tln.nn_predict, X, y, X, y,
                         learning_rate=0.1, learning_rate_decay=0.5, reg=0.0, num_iters=6,
                         batch_size=batch_size)
    # 2 iterations per epoch: learning rates 0.1, 0.1, 0.05, 0.05, 0.025, 0.025
    for k, v in params.items():
        assert_close(v, torch.full_like(v, -0.35), 1e-12, f"{k} after 6 SGD steps")
    assert set(stats) == {"loss_history", "train_acc_history", "val_acc_history"}
    assert stats["loss_history"] == [1.5] * 6
    assert len(stats["train_acc_history"]) == 3 and len(stats["val_acc_history"]) == 3


@pytest.mark.parametrize("num_train,expected_rows", [(50, 50), (1500, 1000)])
def test_nn_train_train_accuracy_uses_a_fixed_training_sample(num_train, expected_rows):
    torch.manual_seed(0)
    X = torch.arange(num_train, dtype=torch.float64).view(-1, 1)
    y = torch.arange(num_train) % 2
    X_val, y_val = X[:7], y[:7]
    seen = []

    def pred_zero(params, loss_func, Xq):
        seen.append(Xq[:, 0].long().clone())
        return torch.zeros(Xq.shape[0], dtype=torch.int64)

    params = {k: torch.zeros(s, dtype=torch.float64) for k, s in
              (("W1", (1, 2)), ("b1", (2,)), ("W2", (2, 2)), ("b2", (2,)))}
    stats = tln.nn_train(params, _constant_grad_loss, pred_zero, X, y, X_val, y_val,
                         learning_rate=0.0, num_iters=4, batch_size=num_train // 2)
    train_calls = [s for s in seen if s.shape[0] != 7]
    assert len(train_calls) == 2 and all(s.shape[0] == expected_rows for s in train_calls)
    assert torch.equal(train_calls[0], train_calls[1]), "the train-accuracy sample must be fixed"
    seen.clear()
    torch.manual_seed(1)  # another global seed: the same sample (it has its own generator)
    tln.nn_train(params, _constant_grad_loss, pred_zero, X, y, X_val, y_val, learning_rate=0.0, num_iters=1,
                 batch_size=num_train // 2)
    assert torch.equal(seen[0], train_calls[0]), "the sample must not depend on the global RNG"
    assert len(set(train_calls[0].tolist())) == expected_rows, "the sample must not repeat rows"
    ref = [(y[s] == 0).double().mean().item() for s in train_calls]
    assert stats["train_acc_history"] == pytest.approx(ref, abs=1e-12)
    assert stats["val_acc_history"] == pytest.approx([(y_val == 0).double().mean().item()] * 2)


def test_nn_train_reduces_loss_on_toy_data():
    X, y, params = get_toy_data()
    stats = tln.nn_train(params, tln.nn_forward_backward, tln.nn_predict, X, y, X, y,
                         learning_rate=1e-1, learning_rate_decay=1.0, reg=5e-6, num_iters=200)
    assert len(stats["loss_history"]) == 200
    assert stats["loss_history"][-1] < 0.5 * stats["loss_history"][0]
    assert all(0.0 <= a <= 1.0 for a in stats["train_acc_history"] + stats["val_acc_history"])


# --- the class ---------------------------------------------------------------------------------
def test_two_layer_net_train_is_sgd_with_per_epoch_decay(monkeypatch):
    """TwoLayerNet.train (through nn_train) against a loop written here with the autograd
    reference: each iteration a batch from sample_batch(X, y, N, batch_size), a step of
    lr * grad with the given reg, lr multiplied by the decay after every epoch (N // batch_size
    iterations). Batches come from a recording stand-in for sample_batch."""
    X, y = make_data(seed=5, n=12)
    X_val, y_val = make_data(seed=6)
    gen = torch.Generator().manual_seed(7)
    calls, served = [], []

    def sample(X_, y_, num_train, batch_size):
        calls.append((num_train, batch_size))
        served.append(torch.randint(num_train, (batch_size,), generator=gen))
        return X_[served[-1]], y_[served[-1]]

    monkeypatch.setattr(tln, "sample_batch", sample)
    net = tln.TwoLayerNet(7, 9, 4, dtype=torch.float64, std=0.5)
    params = {k: v.clone() for k, v in net.params.items()}
    stats = net.train(X, y, X_val, y_val, learning_rate=0.2, learning_rate_decay=0.5, reg=0.03,
                      num_iters=7, batch_size=4)
    assert calls == [(12, 4)] * 7
    for it, idx in enumerate(served):
        lr = 0.2 * 0.5 ** (it // 3)  # 3 iterations per epoch
        _, loss, grads = reference(params, X[idx], y[idx], 0.03)
        assert stats["loss_history"][it] == pytest.approx(loss.item(), abs=1e-12)
        params = {k: params[k] - lr * grads[k] for k in NAMES}
    for k in NAMES:
        assert_close(net.params[k], params[k], 1e-12, f"{k} after 7 steps")
    assert len(stats["val_acc_history"]) == 3  # two epoch ends and the last iteration


def test_two_layer_net_class(tmp_path):
    net = tln.TwoLayerNet(7, 9, 4, dtype=torch.float64, device="cpu", std=0.5)
    shapes = {k: tuple(v.shape) for k, v in net.params.items()}
    assert shapes == {"W1": (7, 9), "b1": (9,), "W2": (9, 4), "b2": (4,)}
    assert all(v.dtype == torch.float64 and v.device.type == "cpu" for v in net.params.values())
    assert (net.params["b1"] == 0).all() and (net.params["b2"] == 0).all()
    X, y = make_data(seed=5)
    loss, grads = net.loss(X, y, reg=0.02)
    _, ref_loss, ref_grads = reference(net.params, X, y, 0.02)
    assert_close(loss, ref_loss, 1e-10, "TwoLayerNet.loss")
    X_val, y_val = make_data(seed=6)
    stats = net.train(X, y, X_val, y_val, learning_rate=0.05, num_iters=5, batch_size=4)
    assert len(stats["loss_history"]) == 5
    ref_scores, _, _ = reference(net.params, X, y, 0.0)
    assert torch.equal(net.predict(X), ref_scores.argmax(dim=1))

    path = tmp_path / "net.pt"
    net.save(str(path))
    other = tln.TwoLayerNet(7, 9, 4, dtype=torch.float64, device="cpu")
    other.load(str(path))
    for k in NAMES:
        assert torch.equal(other.params[k], net.params[k])
    torch.save({"W1": net.params["W1"]}, tmp_path / "bad.pt")
    with pytest.raises(Exception):
        other.load(str(tmp_path / "bad.pt"))


def test_two_layer_net_default_device_is_cpu():
    net = tln.TwoLayerNet(3, 2, 2)
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in net.params.values())


@pytest.mark.parametrize("lrs", [[1e-3, 0.3], [3.0]], ids=["calm", "peaks_then_falls"])
def test_find_best_net_returns_the_best_of_a_tiny_grid(lrs):
    """With lr 3.0 the validation accuracy peaks during training and falls by the end: a search
    that ranked settings by their best accuracy during training (the course's reference) would
    report an accuracy its returned net does not have."""
    torch.manual_seed(0)
    y = torch.arange(120) % 3
    X = 0.5 * torch.randn(120, 6, dtype=torch.float64)
    X[torch.arange(120), y] += 1.0
    data = {"X_train": X[:90], "y_train": y[:90], "X_val": X[90:], "y_val": y[90:]}
    grid = (lrs, [4, 8], [1e-3, 0.3], [1.0, 0.5])

    results = {}
    best_net, best_stat, best_val = tln.find_best_net(data, lambda: grid, num_iters=40,
                                                      batch_size=30, std=0.1, results=results)
    # Brute force: train every configuration the same way (TwoLayerNet seeds itself), in the
    # order of the product of the four lists. The training is checked by its own tests; what
    # this checks is the search: every configuration tried with its own settings, the best one
    # kept (the first on a tie).
    runs = []
    for lr in grid[0]:
        for hs in grid[1]:
            for reg in grid[2]:
                for decay in grid[3]:
                    net = tln.TwoLayerNet(6, hs, 3, dtype=torch.float64, std=0.1)
                    stats = net.train(data["X_train"], data["y_train"], data["X_val"], data["y_val"],
                                      learning_rate=lr, learning_rate_decay=decay, reg=reg,
                                      num_iters=40, batch_size=30)
                    val = (net.predict(data["X_val"]) == data["y_val"]).double().mean().item()
                    runs.append((val, net, stats, {"learning_rate": lr, "hidden_size": hs, "reg": reg,
                                                   "learning_rate_decay": decay}))
                    assert results[(lr, hs, reg, decay)]["loss_history"] == stats["loss_history"]
    assert len(results) == 8 * len(lrs)
    if lrs == [3.0]:  # the case is what it says: the best peak is not reached by the best final net
        assert max(max(stats["val_acc_history"]) for _, _, stats, _ in runs) > max(r[0] for r in runs)
    ref_val = max(r[0] for r in runs)
    ref_net, ref_stats, ref_hparams = next((net, stats, hp) for val, net, stats, hp in runs if val == ref_val)
    assert best_val == pytest.approx(ref_val, abs=1e-12)
    # The returned net, as it is, reproduces the returned accuracy.
    assert (best_net.predict(data["X_val"]) == data["y_val"]).double().mean().item() == best_val
    assert best_stat["val_acc_history"] == ref_stats["val_acc_history"]
    assert best_net.params["W1"].shape == ref_net.params["W1"].shape
    for k in NAMES:
        assert_close(best_net.params[k], ref_net.params[k], 1e-12, f"best net {k}")
    # its record of its own settings (run_two_layer retrains and reports with it)
    assert best_net.hparams == ref_hparams


def test_find_best_net_records_the_settings_of_the_net_it_returns():
    """The best of the grid comes last in every list (one hidden unit cannot separate three
    classes; sixteen can): its hparams are its own, not the first or the last values tried."""
    torch.manual_seed(0)
    y = torch.arange(90) % 3
    X = 0.3 * torch.randn(90, 6, dtype=torch.float64)
    X[torch.arange(90), y] += 1.0
    data = {"X_train": X[:60], "y_train": y[:60], "X_val": X[60:], "y_val": y[60:]}
    best_net, _, best_val = tln.find_best_net(data, lambda: ([1e-4, 0.5], [1, 16], [1e-3, 1e-4], [0.9, 1.0]),
                                              num_iters=60, batch_size=30, std=0.1)
    assert best_val > 0.9 and best_net.params["W1"].shape[1] == 16
    assert best_net.hparams["hidden_size"] == 16 and best_net.hparams["learning_rate"] == 0.5


def test_find_best_net_returns_a_net_when_no_setting_scores_on_validation():
    """Every configuration at 0% validation accuracy (the labels are a class the nets never
    predict): the first net is still returned, not None."""
    torch.manual_seed(0)
    X = torch.randn(40, 5, dtype=torch.float64)
    data = {"X_train": X[:30], "y_train": torch.arange(30) % 3, "X_val": X[30:],
            "y_val": torch.full((10,), 7)}
    best_net, best_stat, best_val = tln.find_best_net(data, lambda: ([0.1, 0.2], [4], [1e-3], [1.0]),
                                                      num_iters=5, batch_size=10, std=0.1)
    assert isinstance(best_net, tln.TwoLayerNet) and best_val == 0.0
    assert best_net.hparams["learning_rate"] == 0.1


@pytest.mark.parametrize("fn", [tln.nn_get_search_params])
def test_nn_search_params(fn):
    lists = fn()
    assert len(lists) == 4 and all(len(v) >= 1 for v in lists)
    assert all(isinstance(h, int) and h > 0 for h in lists[1])


def test_two_layer_net_load_converts_to_this_nets_dtype_and_device(tmp_path):
    """load() docstring: params 'keep the dtype/device of this net's parameters'."""
    src = tln.TwoLayerNet(7, 9, 4, dtype=torch.float64, std=0.5)
    path = str(tmp_path / "net64.pt")
    src.save(path)
    dst = tln.TwoLayerNet(7, 9, 4, dtype=torch.float32)
    dst.load(path)
    assert all(v.dtype == torch.float32 for v in dst.params.values())
    X = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    scores = dst.loss(X)  # float32 X against float32 params: no dtype-mismatch error
    ref = torch.relu(X.double() @ src.params["W1"] + src.params["b1"]) @ src.params["W2"] + src.params["b2"]
    assert torch.allclose(scores.double(), ref, atol=1e-5)
    on_meta = tln.TwoLayerNet(7, 9, 4, device="meta")
    on_meta.load(path)
    assert all(v.device.type == "meta" for v in on_meta.params.values())
