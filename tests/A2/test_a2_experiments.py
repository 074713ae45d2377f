"""A2/experiments.py: the flip augmentation, the hyperparameter search's choice and the final
model's selection and test (the A2 rows of results/), on scripted or synthetic inputs."""
from pathlib import Path

import pytest
import torch

from eecs598.reproduce import load_experiments

A2 = Path(__file__).resolve().parents[2] / "A2"


def test_augment_with_flips_mirrors_left_right_and_repeats_labels():
    exp = load_experiments(A2)
    X = torch.arange(2 * 3072, dtype=torch.float32).view(2, 3072)
    y = torch.tensor([3, 7])
    data = {"X_train": X, "y_train": y, "X_val": X[:1], "y_val": y[:1]}
    out = exp.augment_with_flips(data)
    assert out["X_train"].shape == (4, 3072) and out["y_train"].tolist() == [3, 7, 3, 7]
    assert torch.equal(out["X_train"][:2], X) and out["X_val"] is data["X_val"]
    img = X.view(2, 3, 32, 32)
    for n in range(2):  # column j of the mirror image is column 31 - j of the original
        mirrored = out["X_train"][2 + n].view(3, 32, 32)
        for j in range(32):
            assert torch.equal(mirrored[:, :, j], img[n, :, :, 31 - j])


def test_linear_search_keeps_the_best_validation_setting(monkeypatch):
    exp = load_experiments(A2)
    table = {(1e-3, 1e-4): (90.0, 30.0), (1e-3, 1e-2): (50.0, 41.0),
             (1e-2, 1e-4): (95.0, 41.0), (1e-2, 1e-2): (60.0, 35.0)}

    def scripted(model, data, lr, reg, num_iters, batch_size):
        model.tag = (lr, reg)
        return (model, *table[(lr, reg)])

    monkeypatch.setattr(exp.lc, "test_one_param_set", scripted)
    res = exp.linear_search(exp.lc.Softmax, {}, lambda: ([1e-3, 1e-2], [1e-4, 1e-2]), num_iters=1,
                            verbose=False)
    # highest validation accuracy (not train), the first one on a tie
    assert (res["best_lr"], res["best_reg"], res["best_val"]) == (1e-3, 1e-2, 41.0)
    assert res["best_model"].tag == (1e-3, 1e-2) and res["results"] == table


def _blobs(n, g):
    y = torch.randint(3, (n,), generator=g)
    X = 0.3 * torch.randn(n, 4, generator=g)
    X[torch.arange(n), y] += 1.0
    return X, y


@pytest.mark.parametrize("search_is_better", [True, False])
def test_run_linear_keeps_the_better_model_and_tests_it_once(monkeypatch, search_is_better):
    exp = load_experiments(A2)
    g = torch.Generator().manual_seed(0)
    (Xtr, ytr), (Xv, yv), (Xte, yte) = _blobs(90, g), _blobs(60, g), _blobs(60, g)
    data = {"X_train": Xtr, "y_train": ytr, "X_val": Xv, "y_val": yv, "X_test": Xte, "y_test": yte}
    acc = lambda m, X, y: 100.0 * (m.predict(X) == y).double().mean().item()  # noqa: E731
    searched = exp.lc.Softmax()
    searched.W = torch.eye(4, 3) * (1.0 if search_is_better else -1.0)  # oracle, or anti-oracle
    lr = 1e-12 if search_is_better else 0.5  # a retrain that learns nothing, or one that learns
    monkeypatch.setattr(exp, "linear_search", lambda *a, **k: {
        "best_model": searched, "best_lr": lr, "best_reg": 0.0, "best_val": acc(searched, Xv, yv),
        "results": {}, "num_settings": 1, "seconds": 0.0})
    monkeypatch.setattr(exp, "linear_settings", lambda: {
        "search_iters": 1, "batch_size": 30, "max_settings": None, "final_iters": 40,
        "final_decay": 0.5, "final_decay_steps": 4})
    calls = []
    train = exp.lc.LinearClassifier.train
    monkeypatch.setattr(exp.lc.LinearClassifier, "train",
                        lambda self, *a, **k: calls.append(k) or train(self, *a, **k))
    out = exp.run_linear("softmax", data, verbose=False)
    assert calls[0]["learning_rate_decay"] == 0.5 and calls[0]["decay_every"] == 10
    assert out["retrained"] == (not search_is_better)
    assert (out["model"] is searched) == search_is_better
    assert out["val_accuracy"] == max(acc(searched, Xv, yv), out["retrained_val_accuracy"])
    assert out["test_accuracy"] == acc(out["model"], Xte, yte)


@pytest.mark.parametrize("search_is_better", [True, False])
def test_run_two_layer_keeps_the_better_model_on_validation_and_tests_it_once(monkeypatch, search_is_better):
    """The search's net (scripted: an oracle or an anti-oracle) against the retrained one (a
    learning rate that learns nothing, or one that learns): the better on VALIDATION is kept,
    and the test set is predicted exactly once, by the kept model (no peeking to choose)."""
    exp = load_experiments(A2)
    g = torch.Generator().manual_seed(0)
    (Xtr, ytr), (Xv, yv), (Xte, yte) = _blobs(90, g), _blobs(60, g), _blobs(60, g)
    data = {"X_train": Xtr, "y_train": ytr, "X_val": Xv, "y_val": yv, "X_test": Xte, "y_test": yte}
    acc = lambda m, X, y: 100.0 * (m.predict(X) == y).double().mean().item()  # noqa: E731
    searched = exp.tln.TwoLayerNet(4, 4, 3)
    searched.params.update(W1=torch.eye(4), b1=torch.zeros(4), b2=torch.zeros(3),
                           W2=torch.eye(4, 3) * (1.0 if search_is_better else -1.0))  # (anti-)oracle
    searched.hparams = {"learning_rate": 1e-12 if search_is_better else 0.5, "hidden_size": 8,
                        "reg": 0.0, "learning_rate_decay": 1.0}
    searched_val = acc(searched, Xv, yv)
    monkeypatch.setattr(exp.tln, "find_best_net", lambda *a, **k: (searched, {}, searched_val / 100))
    monkeypatch.setattr(exp, "two_layer_settings", lambda: {
        "search_iters": 1, "final_iters": 60, "batch_size": 30, "std": 1e-2, "augment_flips": False,
        "max_hidden": None, "max_values_per_list": None})
    predicted_test = []
    predict = exp.tln.TwoLayerNet.predict
    monkeypatch.setattr(exp.tln.TwoLayerNet, "predict",
                        lambda self, X: (predicted_test.append(self) if X is Xte else None) or predict(self, X))
    out = exp.run_two_layer(data, verbose=False)
    assert out["retrained"] == (not search_is_better)
    assert (out["model"] is searched) == search_is_better
    assert out["val_accuracy"] == max(searched_val, out["retrained_val_accuracy"])
    assert predicted_test == [out["model"]]
    assert out["test_accuracy"] == acc(out["model"], Xte, yte)


# --- gaps found by mutation testing (each test fails on a one-line bug the others let through)

def test_a2_full_settings_match_the_documented_protocol(monkeypatch):
    exp = load_experiments(A2)
    monkeypatch.setenv("EECS598_QUICK", "0")
    lin, two = exp.linear_settings(), exp.two_layer_settings()
    assert (lin["search_iters"], lin["batch_size"], lin["final_iters"], lin["final_decay"]) == (2000, 200, 8000, 0.5)
    assert lin["final_iters"] // lin["final_decay_steps"] == 2000 and lin["max_settings"] is None
    assert (two["search_iters"], two["final_iters"], two["batch_size"], two["std"]) == (1000, 6000, 200, 1e-2)
    assert two["augment_flips"] is True and two["max_hidden"] is None


def test_run_two_layer_retrains_on_the_flipped_set_with_the_settings_std(monkeypatch):
    exp = load_experiments(A2)
    g = torch.Generator().manual_seed(0)
    data = {"X_train": torch.randn(8, 3072, generator=g), "y_train": torch.randint(3, (8,), generator=g),
            "X_val": torch.randn(6, 3072, generator=g), "y_val": torch.randint(3, (6,), generator=g),
            "X_test": torch.randn(6, 3072, generator=g), "y_test": torch.randint(3, (6,), generator=g)}
    searched = exp.tln.TwoLayerNet(3072, 4, 3)
    searched.hparams = {"learning_rate": 1e-3, "hidden_size": 4, "reg": 0.0, "learning_rate_decay": 1.0}
    monkeypatch.setattr(exp.tln, "find_best_net", lambda *a, **k: (searched, {}, 0.0))
    monkeypatch.setattr(exp, "two_layer_settings", lambda: {
        "search_iters": 1, "final_iters": 2, "batch_size": 4, "std": 0.123, "augment_flips": True,
        "max_hidden": None, "max_values_per_list": None})
    inits, trains = [], []
    init, train = exp.tln.TwoLayerNet.__init__, exp.tln.TwoLayerNet.train
    monkeypatch.setattr(exp.tln.TwoLayerNet, "__init__", lambda self, *a, **k: inits.append(k) or init(self, *a, **k))
    monkeypatch.setattr(exp.tln.TwoLayerNet, "train",
                        lambda self, X, y, *a, **k: trains.append((X.shape[0], y.shape[0])) or train(self, X, y, *a, **k))
    out = exp.run_two_layer(data, verbose=False)
    assert inits[-1].get("std") == 0.123
    assert trains == [(16, 16)] and out["num_train_trained_on"] == 16
