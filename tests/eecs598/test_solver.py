"""eecs598.solver.Solver: the course's training loop on tiny hand-written models."""
import time

import pytest
import torch

from eecs598.solver import Solver
from eecs598.testing import assert_close


class LinearSoftmax:
    """scores = X @ W + b, softmax cross-entropy; the gradient comes from torch autograd (not
    derived by hand: the student copy ships this file, and A2 asks students to derive it)."""

    def __init__(self, D, C, std=1e-2, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.params = {"W": std * torch.randn(D, C, generator=g, dtype=torch.float64),
                       "b": torch.zeros(C, dtype=torch.float64)}

    def loss(self, X, y=None):
        if y is None:
            return X @ self.params["W"] + self.params["b"]
        W, b = (self.params[k].detach().requires_grad_() for k in ("W", "b"))
        loss = torch.nn.functional.cross_entropy(X @ W + b, y)
        dW, db = torch.autograd.grad(loss, (W, b))
        return loss.detach(), {"W": dW, "b": db}


def blobs(n_per_class, C=3, D=2, seed=0, spread=0.3):
    """Well separated Gaussian blobs: centres at distance ~4, std `spread`."""
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.eye(C, D, dtype=torch.float64) if D >= C else 4 * torch.randn(C, D, generator=g).double()
    X = torch.cat([centres[c] + spread * torch.randn(n_per_class, D, generator=g, dtype=torch.float64)
                   for c in range(C)])
    y = torch.arange(C).repeat_interleave(n_per_class)
    return X, y


def toy_data(n_train=100, n_val=30, C=3, D=3):
    X_train, y_train = blobs(n_train, C, D, seed=0)
    X_val, y_val = blobs(n_val, C, D, seed=1)
    return {"X_train": X_train, "y_train": y_train, "X_val": X_val, "y_val": y_val}


def noop_rule(w, dw, config):
    return w, config


class ConstantModel:
    """One scalar param; loss returns zero gradients; scores predict class 0 for every sample."""

    def __init__(self, sleep=0.0):
        self.params = {"w": torch.zeros(1)}
        self.sleep = sleep
        self.seen = []

    def loss(self, X, y=None):
        if y is None:
            self.seen.append(X.clone())
            return torch.stack([torch.ones(X.shape[0]), torch.zeros(X.shape[0])], dim=1)
        if self.sleep:
            time.sleep(self.sleep)
        return torch.tensor(0.0), {"w": torch.zeros(1)}


def const_data(n_train, n_val=4):
    return {"X_train": torch.zeros(n_train, 1), "y_train": torch.zeros(n_train, dtype=torch.long),
            "X_val": torch.zeros(n_val, 1), "y_val": torch.zeros(n_val, dtype=torch.long)}


def test_test_model_gradient_matches_autograd():
    data = toy_data(5, 2)
    model = LinearSoftmax(3, 3, std=1.0)
    X, y = data["X_train"], data["y_train"]
    loss, grads = model.loss(X, y)
    W = model.params["W"].clone().requires_grad_()
    b = model.params["b"].clone().requires_grad_()
    ref = torch.nn.functional.cross_entropy(X @ W + b, y)
    ref.backward()
    assert_close(loss, ref.detach(), 1e-12, "loss")
    assert_close(grads["W"], W.grad, 1e-10, "dW")
    assert_close(grads["b"], b.grad, 1e-10, "db")


def test_solver_trains_linear_softmax():
    torch.manual_seed(0)
    model = LinearSoftmax(3, 3)
    solver = Solver(model, toy_data(), optim_config={"learning_rate": 0.5}, batch_size=30,
                    num_epochs=5, verbose=False)
    solver.train()
    assert len(solver.loss_history) == 5 * (300 // 30)
    first, last = solver.loss_history[0], sum(solver.loss_history[-5:]) / 5
    assert first == pytest.approx(torch.log(torch.tensor(3.0)).item(), abs=0.1)  # near-uniform start
    assert last < 0.25 * first
    assert solver.train_acc_history[-1] >= 0.95
    assert solver.best_val_acc >= 0.95
    assert all(isinstance(a, float) for a in solver.train_acc_history + solver.val_acc_history)


def test_defaults_and_sgd():
    model = LinearSoftmax(3, 3)
    solver = Solver(model, toy_data(4, 2))
    assert (solver.update_rule is Solver.sgd and solver.optim_config == {} and solver.lr_decay == 1.0
            and solver.batch_size == 100 and solver.num_epochs == 10 and solver.num_train_samples == 1000
            and solver.num_val_samples is None and solver.device == "cpu" and solver.checkpoint_name is None
            and solver.print_every == 10 and solver.print_acc_every == 1 and solver.verbose is True)
    assert solver.epoch == 0 and solver.best_val_acc == 0 and solver.best_params == {}
    assert solver.loss_history == [] and solver.train_acc_history == [] and solver.val_acc_history == []
    w, dw = torch.ones(3), torch.full((3,), 2.0)
    config = {}
    next_w, next_config = Solver.sgd(w, dw, config)
    assert next_config["learning_rate"] == 1e-2
    assert torch.allclose(next_w, torch.full((3,), 0.98))
    next_w, _ = Solver.sgd(torch.ones(3), dw, {"learning_rate": 0.5})
    assert torch.allclose(next_w, torch.zeros(3))


@pytest.mark.parametrize("n_train,batch_size,num_epochs", [(250, 100, 3), (30, 100, 4), (60, 20, 1)])
def test_iteration_count(n_train, batch_size, num_epochs):
    model = ConstantModel()
    solver = Solver(model, const_data(n_train), update_rule=noop_rule, batch_size=batch_size,
                    num_epochs=num_epochs, verbose=False)
    solver.train()
    per_epoch = max(n_train // batch_size, 1)
    assert len(solver.loss_history) == num_epochs * per_epoch
    assert solver.epoch == num_epochs
    # checks: first iteration + every epoch end (the last iteration is an epoch end)
    expected_checks = num_epochs + (0 if per_epoch == 1 else 1)
    assert len(solver.train_acc_history) == len(solver.val_acc_history) == expected_checks


def test_lr_decay_per_epoch():
    seen = []

    def recording_rule(w, dw, config):
        seen.append(config["learning_rate"])
        return w, config

    model = LinearSoftmax(3, 3)
    optim_config = {"learning_rate": 1.0}
    solver = Solver(model, toy_data(20, 2), update_rule=recording_rule, optim_config=optim_config,
                    lr_decay=0.5, batch_size=30, num_epochs=3, verbose=False)  # 60 samples: 2 it/epoch
    solver.train()
    per_param = seen[0::2]  # W and b alternate
    assert per_param == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert solver.optim_configs["W"]["learning_rate"] == 0.125
    assert solver.optim_configs["b"]["learning_rate"] == 0.125
    assert optim_config == {"learning_rate": 1.0}, "the caller's optim_config must not change"


class StepModel:
    """w counts the updates; val sample i is classified correctly iff i < 10 * ACC[w]."""

    ACC = {1: 0.2, 2: 0.6, 3: 0.4, 4: 0.6, 5: 0.1}

    def __init__(self):
        self.params = {"w": torch.zeros(1)}

    def loss(self, X, y=None):
        if y is None:
            k = round(10 * self.ACC[int(self.params["w"].item())])
            correct = X[:, 0] < k  # X[i, 0] = i, labels are all 1
            return torch.stack([(~correct).float(), correct.float()], dim=1)
        return torch.tensor(0.0), {"w": torch.zeros(1)}


def increment_in_place(w, dw, config):
    w += 1  # in place: best_params must be clones, not references
    return w, config


@pytest.mark.parametrize("return_best_params", [True, False])
def test_best_params_tracked(return_best_params):
    idx = torch.arange(10, dtype=torch.float32).view(10, 1)
    data = {"X_train": idx, "y_train": torch.ones(10, dtype=torch.long),
            "X_val": idx, "y_val": torch.ones(10, dtype=torch.long)}
    model = StepModel()
    solver = Solver(model, data, update_rule=increment_in_place, batch_size=10, num_epochs=5, verbose=False)
    solver.train(return_best_params=return_best_params)
    assert solver.val_acc_history == pytest.approx([0.2, 0.6, 0.4, 0.6, 0.1])
    assert solver.best_val_acc == pytest.approx(0.6)
    assert solver.best_params["w"].item() == 2.0  # the first of the tied 0.6 (strictly better wins)
    assert model.params["w"].item() == (2.0 if return_best_params else 5.0)


class StepModelWithBatchNorm(StepModel):
    """StepModel with a batch-norm layer whose running mean counts the training steps (in
    place, as a real layer updates it); scores do not depend on it, but which value comes back
    with the best params does."""

    def __init__(self, keyed=False):
        super().__init__()
        layer = {"mode": "train", "running_mean": torch.zeros(3)}
        self.bn_params = {"bn1": layer} if keyed else [layer]  # the Solver takes either form
        self.layer = layer

    def loss(self, X, y=None):
        if y is not None:
            self.layer["running_mean"] += 1
        return super().loss(X, y)


@pytest.mark.parametrize("keyed", [False, True], ids=["list", "dict"])
@pytest.mark.parametrize("return_best_params", [True, False])
def test_batchnorm_running_statistics_come_back_with_the_best_params(return_best_params, keyed, tmp_path):
    """The best check is after the 2nd step (val accuracy 0.6, see StepModel); the running mean
    then read 2. Put back with the best params, it must read 2 again, not the last step's 5."""
    idx = torch.arange(10, dtype=torch.float32).view(10, 1)
    data = {"X_train": idx, "y_train": torch.ones(10, dtype=torch.long),
            "X_val": idx, "y_val": torch.ones(10, dtype=torch.long)}
    model = StepModelWithBatchNorm(keyed)
    solver = Solver(model, data, update_rule=increment_in_place, batch_size=10, num_epochs=5, verbose=False,
                    checkpoint_name=str(tmp_path / "c"))
    solver.train(return_best_params=return_best_params)
    assert solver.best_params["w"].item() == 2.0
    assert torch.equal(solver.best_bn_state[0]["running_mean"], torch.full((3,), 2.0))
    expected = 2.0 if return_best_params else 5.0
    assert torch.equal(model.layer["running_mean"], torch.full((3,), expected))
    assert model.layer["mode"] == "train"  # non-tensor entries are left alone
    ckpt = torch.load(tmp_path / "c_epoch_3.pkl")
    assert torch.equal(ckpt["bn_state"][0]["running_mean"], torch.full((3,), 3.0))


def test_unknown_kwarg_raises():
    with pytest.raises(ValueError, match="learning_rate"):
        Solver(LinearSoftmax(3, 3), toy_data(4, 2), learning_rate=1e-3)


def test_missing_data_key_raises():
    data = toy_data(4, 2)
    del data["y_val"]
    with pytest.raises(KeyError):
        Solver(LinearSoftmax(3, 3), data)


def test_time_limit_stops_early():
    model = ConstantModel(sleep=0.05)
    solver = Solver(model, const_data(10), update_rule=noop_rule, batch_size=10, num_epochs=100, verbose=False)
    start = time.perf_counter()
    solver.train(time_limit=0.33)
    elapsed = time.perf_counter() - start
    # Each iteration takes >= 0.05 s; iteration t runs only if elapsed (>= 0.05 t) plus the
    # previous iteration's duration (>= 0.05) fits in 0.33 s: t <= 5, so at most 6 iterations
    # (without the duration estimate it would run 7).
    assert 2 <= len(solver.loss_history) <= 6
    assert elapsed < 5.0  # far below the 100 x 0.05 s of a full run


class SlowCheckModel(ConstantModel):
    """ConstantModel whose accuracy checks (loss without y) take >= `check_sleep` seconds."""

    def __init__(self, check_sleep):
        super().__init__(sleep=0.001)
        self.check_sleep = check_sleep

    def loss(self, X, y=None):
        if y is None:
            time.sleep(self.check_sleep)
        return super().loss(X, y)


def test_time_limit_counts_the_training_step_not_the_accuracy_check():
    """The first iteration's accuracy check (train + val, >= 0.5 s) must not count as the
    duration of an iteration: the course's estimate (the whole previous iteration) would stop
    after one iteration (0.5 + 0.5 > 0.9 s); 40 short steps fit in the limit."""
    model = SlowCheckModel(check_sleep=0.25)
    solver = Solver(model, const_data(40), update_rule=noop_rule, batch_size=1, num_epochs=1, verbose=False)
    solver.train(time_limit=0.9)
    assert len(solver.loss_history) == 40


class SlowLinearSoftmax(LinearSoftmax):
    """LinearSoftmax whose training steps take >= `sleep` seconds, starting from weights that
    get every class wrong (W = -4 I), so that accuracy rises only with training."""

    def __init__(self, sleep):
        super().__init__(3, 3)
        self.params["W"] = -4 * torch.eye(3, dtype=torch.float64)
        self.sleep = sleep

    def loss(self, X, y=None):
        if y is not None:
            time.sleep(self.sleep)
        return super().loss(X, y)


@pytest.mark.parametrize("return_best_params", [True, False])
def test_time_limit_checks_the_params_trained_since_the_last_check(return_best_params):
    """Stopped by the time limit in the middle of its first epoch, the solver checks accuracy
    once more; the params it returns are the best checked, not the first iteration's."""
    model = SlowLinearSoftmax(sleep=0.02)
    solver = Solver(model, toy_data(100, 30), update_rule=Solver.sgd, optim_config={"learning_rate": 0.5},
                    batch_size=3, num_epochs=1, verbose=False)  # 100 iterations in the epoch
    solver.train(time_limit=0.5, return_best_params=return_best_params)
    assert 2 <= len(solver.loss_history) < 100
    assert len(solver.val_acc_history) == 2  # the first iteration, and where the time ran out
    assert solver.val_acc_history[0] < solver.val_acc_history[1] == solver.best_val_acc
    data = toy_data(100, 30)
    assert solver.check_accuracy(data["X_val"], data["y_val"]) == solver.val_acc_history[1]


def test_checkpoints_written_and_loadable(tmp_path):
    name = str(tmp_path / "ckpt")
    model = LinearSoftmax(3, 3)
    solver = Solver(model, toy_data(4, 2), optim_config={"learning_rate": 0.1}, batch_size=6,
                    num_epochs=2, checkpoint_name=name, verbose=False)  # 12 samples: 2 it/epoch
    solver.train(return_best_params=False)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["ckpt_epoch_0.pkl", "ckpt_epoch_1.pkl", "ckpt_epoch_2.pkl"]
    ckpt = torch.load(tmp_path / "ckpt_epoch_2.pkl")
    assert ckpt["epoch"] == 2
    assert ckpt["loss_history"] == solver.loss_history and len(ckpt["loss_history"]) == 4
    assert ckpt["val_acc_history"] == solver.val_acc_history
    assert set(ckpt["model_params"]) == {"W", "b"}
    assert torch.equal(ckpt["model_params"]["W"], model.params["W"])
    assert ckpt["optim_config"] == {"learning_rate": 0.1}
    first = torch.load(tmp_path / "ckpt_epoch_0.pkl")
    assert first["epoch"] == 0 and len(first["loss_history"]) == 1
    assert first["best_val_acc"] == first["val_acc_history"][0]  # the check that wrote it counts


class FakeClock:
    """Stands in for the `time` module in eecs598.solver: every time() call advances 1 s."""

    def __init__(self):
        self.now = 0.0

    def time(self):
        self.now += 1.0
        return self.now


def test_time_limit_stop_does_not_overwrite_the_epoch_checkpoint(tmp_path, monkeypatch):
    """Stopped in the middle of epoch 1, the extra check writes its own file, and
    ckpt_epoch_1.pkl still holds the state at the end of epoch 1."""
    import eecs598.solver as solver_module

    monkeypatch.setattr(solver_module, "time", FakeClock())
    name = str(tmp_path / "ckpt")
    solver = Solver(LinearSoftmax(3, 3), toy_data(10, 4), batch_size=3, num_epochs=100,
                    checkpoint_name=name, verbose=False)  # 30 samples: 10 iterations per epoch
    # The clock reads 1 + 2t before iteration t and each step lasts 1 s: iteration t runs while
    # 1 + 2t + 1 <= 30, so 15 iterations.
    solver.train(time_limit=30)
    assert len(solver.loss_history) == 15
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["ckpt_epoch_0.pkl", "ckpt_epoch_1.pkl", "ckpt_epoch_1_iter_15.pkl"]
    assert len(torch.load(tmp_path / "ckpt_epoch_1.pkl")["loss_history"]) == 10
    assert len(torch.load(tmp_path / "ckpt_epoch_1_iter_15.pkl")["loss_history"]) == 15


def test_check_accuracy_subsamples():
    torch.manual_seed(0)
    model = ConstantModel()  # predicts class 0
    solver = Solver(model, const_data(4), verbose=False)
    X = torch.arange(25, dtype=torch.float32).view(25, 1)
    y = (torch.arange(25) % 2).long()  # even rows have label 0: 13 of 25 correct
    acc = solver.check_accuracy(X, y, batch_size=10)
    assert isinstance(acc, float) and acc == pytest.approx(13 / 25)
    assert [len(s) for s in model.seen] == [10, 10, 5]

    model.seen.clear()
    acc = solver.check_accuracy(X, y, num_samples=10, batch_size=4)
    assert [len(s) for s in model.seen] == [4, 4, 2]
    rows = torch.cat(model.seen)[:, 0].long()
    assert len(set(rows.tolist())) == 10, "subsample without replacement"
    assert acc == pytest.approx((rows % 2 == 0).float().mean().item())

    model.seen.clear()
    solver.check_accuracy(X, y, num_samples=100)  # more than N: all samples, in order
    assert torch.equal(torch.cat(model.seen), X)


def test_custom_update_rule_gets_config_per_param():
    calls = []

    def rule(w, dw, config):
        assert dw.shape == w.shape
        calls.append(config["calls"])
        next_config = dict(config, calls=config["calls"] + 1, shape=tuple(w.shape))
        return w - next_config["learning_rate"] * dw, next_config

    model = LinearSoftmax(3, 3)
    W0 = model.params["W"].clone()
    optim_config = {"learning_rate": 0.1, "calls": 0}
    solver = Solver(model, toy_data(10, 2), update_rule=rule, optim_config=optim_config,
                    batch_size=10, num_epochs=2, verbose=False)  # 30 samples: 3 it/epoch
    assert solver.optim_configs["W"] is not solver.optim_configs["b"]
    solver.train(return_best_params=False)
    assert solver.optim_configs["W"]["calls"] == 6 and solver.optim_configs["b"]["calls"] == 6
    assert solver.optim_configs["W"]["shape"] == (3, 3) and solver.optim_configs["b"]["shape"] == (3,)
    # W and b alternate; each call gets the config the rule returned on that param's previous call
    assert calls[0::2] == calls[1::2] == [0, 1, 2, 3, 4, 5]
    assert optim_config == {"learning_rate": 0.1, "calls": 0}
    assert not torch.equal(model.params["W"], W0), "the returned next_w is stored"


def test_history_is_plain_lists_of_the_training_curves():
    from eecs598.solver import Solver

    class Fake:
        params = {"w": __import__("torch").zeros(1)}

    data = {k: __import__("torch").zeros(2, 1) for k in ("X_train", "X_val")}
    data.update(y_train=__import__("torch").zeros(2, dtype=__import__("torch").long),
                y_val=__import__("torch").zeros(2, dtype=__import__("torch").long))
    solver = Solver(Fake(), data, verbose=False)
    solver.loss_history, solver.train_acc_history, solver.val_acc_history = [3.0, 2.0], [0.1], [0.2]
    history = solver.history()
    assert history == {"loss_history": [3.0, 2.0], "train_acc_history": [0.1], "val_acc_history": [0.2]}
    history["loss_history"].append(1.0)
    assert solver.loss_history == [3.0, 2.0], "history() must copy, not alias"


def test_accuracy_checks_use_num_train_samples_of_train_and_num_val_samples_of_val():
    """Each epoch's check scores a num_train_samples subsample of the training set and (up to
    num_val_samples) the validation set: 10 of 30 training rows, all 25 validation rows."""
    class Recorder:
        def __init__(self):
            self.params, self.seen = {"w": torch.zeros(1)}, []

        def loss(self, X, y=None):
            if y is None:
                self.seen.append(len(X))
                return torch.zeros(len(X), 2)
            return torch.tensor(0.0), {"w": torch.zeros(1)}

    data = {"X_train": torch.zeros(30, 1), "y_train": torch.zeros(30, dtype=torch.long),
            "X_val": torch.zeros(25, 1), "y_val": torch.zeros(25, dtype=torch.long)}
    model = Recorder()
    Solver(model, data, update_rule=lambda w, dw, config: (w, config), batch_size=30, num_epochs=1,
           num_train_samples=10, num_val_samples=100, verbose=False).train()
    assert model.seen == [10, 25]


# --- gaps found by mutation testing (each test fails on a one-line bug the others let through)

class _TinySoftmax(LinearSoftmax):
    """LinearSoftmax (4 features, 3 classes; zero: all-zero weights) that records the batch
    size of every call."""
    def __init__(self, D=4, C=3, zero=False):
        super().__init__(D, C, std=0.0 if zero else 1e-2)
        self.calls = []

    def loss(self, X, y=None):
        self.calls.append(X.shape[0])
        return super().loss(X, y)


def _tiny_data(N=50, D=4, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(C, (N,), generator=g)
    return {"X_train": X, "y_train": y, "X_val": X[:40].clone(), "y_val": y[:40].clone()}


def test_num_val_samples_is_used():
    m = _TinySoftmax()
    s = Solver(m, _tiny_data(), num_epochs=1, batch_size=50, num_val_samples=7, num_train_samples=5, verbose=False)
    m.calls.clear()
    s._check_accuracies_and_keep_best()
    assert m.calls == [5, 7]


def test_loss_history_holds_python_floats():
    s = Solver(_TinySoftmax(), _tiny_data(), num_epochs=1, batch_size=25, verbose=False)
    s.train()
    assert all(type(v) is float for v in s.loss_history)


def test_first_check_records_best_params_even_at_zero_accuracy():
    d = _tiny_data()
    d["y_val"] = torch.full_like(d["y_val"], 2)
    m = _TinySoftmax(zero=True)   # scores all 0 -> argmax 0 -> val acc 0
    s = Solver(m, d, num_epochs=1, batch_size=50, verbose=False, optim_config={"learning_rate": 0.0})
    s.train()
    assert s.best_params and s.best_val_acc == 0


def test_best_params_are_not_aliased_to_the_model_after_train():
    m = _TinySoftmax()
    s = Solver(m, _tiny_data(), num_epochs=1, batch_size=25, verbose=False)
    s.train()
    assert m.params["W"].data_ptr() != s.best_params["W"].data_ptr()


def test_time_limit_after_epoch_end_check_does_not_check_twice(monkeypatch):
    import eecs598.solver as S
    clock = iter(range(0, 10 ** 6))
    monkeypatch.setattr(S.time, "time", lambda: next(clock))
    s = Solver(_TinySoftmax(), _tiny_data(), num_epochs=5, batch_size=50, verbose=False)  # 1 iter per epoch
    s.train(time_limit=8.5)
    # every iteration is checked (epoch end), so the stop must not add a duplicate check
    assert s.epoch >= 2 and len(s.val_acc_history) == s.epoch


def test_print_every_and_print_acc_every(capsys):
    import re
    s = Solver(_TinySoftmax(), _tiny_data(), num_epochs=4, batch_size=25, print_every=3, print_acc_every=2)
    s.train()
    out = capsys.readouterr().out
    assert len(re.findall(r"Iteration \d+ / 8\) loss", out)) == 3   # t = 0, 3, 6
    assert [int(e) for e in re.findall(r"\(Epoch (\d+) /", out)] == [0, 2, 4]


def test_check_accuracy_on_empty_set_is_zero():
    s = Solver(_TinySoftmax(), _tiny_data(), verbose=False)
    assert s.check_accuracy(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) == 0.0


def test_checkpoint_holds_per_parameter_configs_and_best_val_acc(tmp_path):
    name = str(tmp_path / "ck")
    s = Solver(_TinySoftmax(), _tiny_data(), num_epochs=3, batch_size=25, lr_decay=0.5, verbose=False,
               optim_config={"learning_rate": 0.1}, checkpoint_name=name)
    s.train()
    ck = torch.load(name + "_epoch_3.pkl")
    assert ck["optim_configs"]["W"]["learning_rate"] == pytest.approx(0.1 * 0.5 ** 3)
    assert ck["best_val_acc"] == max(ck["val_acc_history"])


def test_best_val_acc_in_checkpoint_when_last_check_is_worse(tmp_path):
    name = str(tmp_path / "ck")
    s = Solver(_TinySoftmax(), _tiny_data(), num_epochs=6, batch_size=25, verbose=False,
               optim_config={"learning_rate": 5.0}, checkpoint_name=name)
    s.train()
    for e in range(7):
        ck = torch.load(f"{name}_epoch_{e}.pkl")
        assert ck["best_val_acc"] == max(ck["val_acc_history"])


def test_restored_bn_state_is_not_aliased():
    m = _TinySoftmax()
    m.bn_params = [{"mode": "train", "running_mean": torch.zeros(3)}]
    s = Solver(m, _tiny_data(), num_epochs=1, batch_size=50, verbose=False)
    s.train()
    m.bn_params[0]["running_mean"] += 1   # a later in-place update
    assert torch.equal(s.best_bn_state[0]["running_mean"], torch.zeros(3))
