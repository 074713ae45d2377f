"""A3's experiment modules (fc_experiments, conv_experiments): the helpers and protocols behind the
A3 rows of results/, on synthetic inputs in quick mode."""
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
