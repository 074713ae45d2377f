"""A3's experiment modules (fc_experiments, conv_experiments): the helpers and protocols behind the
A3 rows of results/, on synthetic inputs in quick mode."""
import pytest
import torch

import conv_experiments as ce
import fc_experiments as fe


def test_epochs_to_perfect_counts_epochs_not_checks():
    # entry 0 is the check at the first iteration, entry e the check after epoch e
    assert fe.epochs_to_perfect([0.1, 0.4, 1.0, 1.0]) == 2
    assert fe.epochs_to_perfect([0.1, 1.0]) == 1
    assert fe.epochs_to_perfect([0.1, 0.99, 0.98]) is None


def test_subset_takes_the_leading_training_and_validation_samples():
    data = {"X_train": torch.arange(10.0).view(10, 1), "y_train": torch.arange(10),
            "X_val": 100 + torch.arange(6.0).view(6, 1), "y_val": 100 + torch.arange(6)}
    s = fe.subset(data, 4, 3)
    assert s["X_train"].flatten().tolist() == [0, 1, 2, 3] and s["y_train"].tolist() == [0, 1, 2, 3]
    assert s["X_val"].flatten().tolist() == [100, 101, 102] and s["y_val"].tolist() == [100, 101, 102]


def _tiny(shape, n_train=200, n_val=50):
    g = torch.Generator().manual_seed(0)
    return {"X_train": torch.randn(n_train, *shape, generator=g), "y_train": torch.randint(10, (n_train,), generator=g),
            "X_val": torch.randn(n_val, *shape, generator=g), "y_val": torch.randint(10, (n_val,), generator=g)}


def test_dropout_experiment_trains_each_requested_p(monkeypatch):
    monkeypatch.setenv("EECS598_QUICK", "1")
    res = fe.dropout_experiment(_tiny((12,)), "cpu", dropouts=(0.0, 0.5))
    assert res[0.0]["solver"].model.use_dropout is False
    model = res[0.5]["solver"].model
    assert model.use_dropout and model.dropout_param["p"] == 0.5
    assert res[0.5]["settings"]["dropout"] == 0.5


def test_batchnorm_comparison_labels_its_runs(monkeypatch):
    monkeypatch.setenv("EECS598_QUICK", "1")
    out = ce.batchnorm_comparison(_tiny((3, 8, 8), n_train=100, n_val=20), "cpu")
    assert out["bn"]["solver"].model.batchnorm is True and out["bn"]["settings"]["batchnorm"] is True
    assert out["nobn"]["solver"].model.batchnorm is False



def test_optimizer_comparison_starts_every_rule_from_the_same_weights(monkeypatch):
    """A fair comparison: each update rule trains a net with the same initial weights (the seed is
    reset per rule), with its own learning rate (a stand-in Solver records what it was given)."""
    monkeypatch.setenv("EECS598_QUICK", "1")
    given = []

    class Recorder:
        def __init__(self, model, data, update_rule=None, optim_config=None, **kwargs):
            given.append(({k: v.clone() for k, v in model.params.items()}, update_rule, optim_config))
            self.best_val_acc, self.val_acc_history, self.train_acc_history = 0.0, [0.0], [0.0]

        def train(self):
            torch.rand(1000)  # training draws from the global generator

        def history(self):
            return {}

    monkeypatch.setattr(fe, "Solver", Recorder)
    fe.optimizer_comparison(_tiny((12,), n_train=400, n_val=20), "cpu")
    assert len(given) == len(fe.UPDATE_RULES) >= 4
    first = given[0][0]
    for params, rule, config in given:
        assert all(torch.equal(params[k], first[k]) for k in first)
    assert [r for _, r, _ in given] == list(fe.UPDATE_RULES.values())
    assert [c["learning_rate"] for _, _, c in given] == [fe.OPTIMIZER_LEARNING_RATES[n] for n in fe.UPDATE_RULES]


# --- gaps found by mutation testing (each test fails on a one-line bug the others let through)

def test_epochs_to_perfect_ignores_the_first_iteration_check():
    assert fe.epochs_to_perfect([1.0, 0.5, 1.0]) == 2


def test_overfit_keeps_the_final_weights_not_the_best_validation_ones(monkeypatch):
    """overfit()'s docstring: the model keeps its final (overfitted) weights."""
    monkeypatch.setenv("EECS598_QUICK", "1")
    g = torch.Generator().manual_seed(0)
    data = {"X_train": torch.randn(50, 12, generator=g), "y_train": torch.randint(10, (50,), generator=g),
            "X_val": torch.randn(40, 12, generator=g), "y_val": torch.randint(10, (40,), generator=g)}
    calls = []
    train = fe.Solver.train
    monkeypatch.setattr(fe.Solver, "train", lambda self, *a, **k: calls.append(k) or train(self, *a, **k))
    fe.overfit([20], 1e-1, 1e-2, data, "cpu", num_epochs=2)
    assert calls == [{"return_best_params": False}]


def test_initialization_study_uses_each_weight_scale_optimizer_and_subset(monkeypatch):
    """The init study: one DeepConvNet per weight scale (the scale really passed), SGD+momentum,
    on the first num_train images; the bn study: Adam at its own learning rate, same seed per net."""
    monkeypatch.setenv("EECS598_QUICK", "1")
    built, given = [], []
    real = ce.cn.DeepConvNet

    def spy(*a, **k):
        built.append(k)
        m = real(*a, **k)
        m.first_W = m.params["W1"].clone()
        return m

    class Recorder:
        def __init__(self, model, data, update_rule=None, optim_config=None, **kwargs):
            given.append((model, update_rule, dict(optim_config), data["X_train"].shape[0]))
            self.best_val_acc, self.val_acc_history, self.train_acc_history, self.loss_history = 0.0, [0.0], [0.0], [0.0]

        def train(self):
            torch.rand(1000)

        def history(self):
            return {}

    monkeypatch.setattr(ce.cn, "DeepConvNet", spy)
    monkeypatch.setattr(ce, "Solver", Recorder)
    g = torch.Generator().manual_seed(0)
    data = {"X_train": torch.randn(300, 3, 8, 8, generator=g), "y_train": torch.randint(10, (300,), generator=g),
            "X_val": torch.randn(20, 3, 8, 8, generator=g), "y_val": torch.randint(10, (20,), generator=g)}
    s = ce.init_study_settings()
    ce.initialization_study(data, "cpu")
    assert [k["weight_scale"] for k in built] == s["weight_scales"]
    assert all(r is ce.fc.sgd_momentum and c["learning_rate"] == s["learning_rate"] and n == s["num_train"]
               for _, r, c, n in given)
    built.clear(), given.clear()
    b = ce.bn_study_settings()
    ce.batchnorm_comparison(data, "cpu")
    assert all(r is ce.fc.adam and c["learning_rate"] == b["learning_rate"] and n == b["num_train"]
               for _, r, c, n in given)
    assert torch.equal(given[0][0].first_W, given[1][0].first_W)  # bn and no-bn nets start alike


def test_conv_run_resnet_half_alone_and_records(monkeypatch):
    """parts=("resnet_half",) is accepted (module docstring); the ResNet records carry the
    plain (no-flip) accuracy and the training time, not the evaluation time."""
    res = {"config": {}, "num_train": 1, "num_test": 1, "steps": 1, "eval_seconds": 7.0, "train_seconds": 3.0,
           "test_acc": 0.9, "test_acc_no_tta": 0.8, "source": "fake"}
    monkeypatch.setattr(ce, "resnet_half_width", lambda device: res)
    recs = ce.run("cpu", parts=("resnet_half",))
    by = {r["metric"]: r for r in recs}
    acc = by["resnet9_half_width_from_scratch_test_accuracy"]
    assert acc["value"] == pytest.approx(90.0)
    assert acc["details"]["test_accuracy_without_flips"] == pytest.approx(80.0)
    assert by["resnet9_half_width_from_scratch_train_seconds"]["value"] == pytest.approx(3.0)


def test_conv_resnet_runs_on_cpu_in_quick_mode(monkeypatch):
    monkeypatch.setenv("EECS598_QUICK", "1")
    monkeypatch.setattr(ce.resnet_from_scratch, "run_resnet", lambda device, **k: "ran")
    assert ce.resnet("cpu") == "ran"
