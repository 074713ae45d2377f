"""
Headline experiments of A3's fully connected networks: the notebook and `make reproduce`
(through A3/experiments.py, which calls `run`) use the same functions.

No solution code here: everything trains through fully_connected_networks.py (hand-written
forward/backward passes and update rules) and the course's `eecs598.Solver`.

Sizes and epochs come from `eecs598.pick(full=..., quick=...)`: full mode is the real
experiment on CIFAR-10 (40k train / 10k val / 10k test, flattened, float32); quick mode
(EECS598_QUICK=1) shrinks everything to a smoke run.

    two_layer_solver      TwoLayerNet via create_solver_instance on the full training set
    overfit_three_layer   [100, 100] net, 50 samples, 20 epochs: epochs to 100% train accuracy
    overfit_five_layer    [100] * 4 net, same protocol
    optimizer_comparison  6-layer net ([100] * 5), 4000 samples, 5 epochs: SGD, momentum, RMSProp, Adam
    dropout_experiment    a two-layer net of width 512 with and without dropout on a 20k subset
    run(device)           all of the above as result records
"""
import torch

import eecs598
import fully_connected_networks as fc
from eecs598.results import make_record
from eecs598.solver import Solver
from eecs598.utils import device_name, timer

ASSIGNMENT = "A3"
DTYPE = torch.float32

# Figures of the reference solutions (../shared/COURSE_API.md, section 4), float64 on CUDA.
REFERENCE = {
    "two_layer_val": 51.75,
    "three_layer_overfit_epochs": 7,
    "five_layer_overfit_epochs": 11,
    "optimizer_val": {"sgd": 9.52, "sgd_momentum": 24.69, "rmsprop": 27.27, "adam": 35.58},
    # The reference's width/dropout study (20k subset, Adam 5e-3, batch 512, 100 epochs;
    # its "dropout" net never applied dropout), peak / final val in %:
    "dropout_study": {"w256": (48.06, 46.20), "w512": (48.22, 47.07), "w512_dropout_0.5": (49.04, 46.26)},
}

UPDATE_RULES = {"sgd": fc.sgd, "sgd_momentum": fc.sgd_momentum, "rmsprop": fc.rmsprop, "adam": fc.adam}
# The course's learning rates for the comparison.
OPTIMIZER_LEARNING_RATES = {"sgd": 5e-2, "sgd_momentum": 5e-2, "rmsprop": 1e-4, "adam": 1e-3}

# The dropout study (chosen to fit a CPU in full mode, 379 s and 538 s for the two nets in the
# recorded 2-core run, yet long enough for the net without dropout to overfit): a two-layer net of width 512 on the first
# 20k training images, Adam, batch 512; dropout p = 0.5 on the hidden layer vs none.
DROPOUT_SETTINGS = {
    "num_train": 20000, "hidden_dim": 512, "learning_rate": 2e-3, "batch_size": 512,
    "num_epochs": 30, "weight_scale": 1e-2, "dropout": 0.5,
}


def load_data(device=None, dtype=DTYPE):
    """CIFAR-10, flattened and mean-subtracted, on `device`: 40k / 10k / 10k (quick: 800 / 200 / 200)."""
    return eecs598.data.preprocess_cifar10(
        show_examples=False, flatten=True, dtype=dtype, device=eecs598.get_device(device),
        num_train=eecs598.pick(full=None, quick=1000), num_test=eecs598.pick(full=None, quick=200))


def subset(data, num_train, num_val=None):
    """The first `num_train` training samples and the first `num_val` validation samples (None: all)."""
    return {"X_train": data["X_train"][:num_train], "y_train": data["y_train"][:num_train],
            "X_val": data["X_val"][:num_val], "y_val": data["y_val"][:num_val]}


# ---------------------------------------------------------------------------------------------
def two_layer_solver(data, device, dtype=DTYPE, verbose=False, seed=0):
    """Train the Solver of `create_solver_instance` on `data`; report val and test accuracy.

    Returns a dict: solver, val_acc (the Solver's best, whose params it keeps), test_acc, seconds.
    """
    eecs598.reset_seed(seed)
    solver = fc.create_solver_instance(data, dtype, device)
    solver.verbose = verbose
    solver.num_epochs = eecs598.pick(full=solver.num_epochs, quick=min(solver.num_epochs, 3))
    with timer() as t:
        solver.train()
    test_acc = solver.check_accuracy(data["X_test"], data["y_test"])
    return {"solver": solver, "val_acc": solver.best_val_acc, "test_acc": test_acc, "seconds": t.seconds,
            "num_epochs": solver.num_epochs, "batch_size": solver.batch_size,
            "optim_config": dict(solver.optim_config), "lr_decay": solver.lr_decay}


def epochs_to_perfect(train_acc_history):
    """First epoch after which the train accuracy is 100% (entry 0 is the first iteration), or None."""
    return next((epoch for epoch, acc in enumerate(train_acc_history) if epoch > 0 and acc == 1.0), None)


def overfit(hidden_dims, weight_scale, learning_rate, data, device, num_train=50, num_epochs=20,
            batch_size=25, num_val=1000, dtype=DTYPE, seed=0, verbose=False):
    """The course's overfitting check: SGD on `num_train` samples; returns a dict with the solver,
    the model, the train/val histories and `epochs` (epochs to 100% train accuracy, or None).

    Only the train accuracy matters here; the Solver's validation checks use the first
    `num_val` validation images (the course used all 10k, which made this check slow on a CPU).
    The model keeps its final (overfitted) weights, not the best-validation ones the Solver
    would put back: it is the overfitted net that the notebook saves and checks."""
    eecs598.reset_seed(seed)
    small = subset(data, num_train, num_val)
    input_dim = small["X_train"].shape[1]
    model = fc.FullyConnectedNet(hidden_dims, input_dim=input_dim, weight_scale=weight_scale,
                                 dtype=dtype, device=device)
    solver = Solver(model, small, num_epochs=num_epochs, batch_size=batch_size, print_every=10,
                    optim_config={"learning_rate": learning_rate}, device=device, verbose=verbose)
    with timer() as t:
        solver.train(return_best_params=False)
    return {"solver": solver, "model": model, "epochs": epochs_to_perfect(solver.train_acc_history),
            "final_train_acc": solver.train_acc_history[-1], "seconds": t.seconds,
            "hidden_dims": list(hidden_dims), "weight_scale": weight_scale,
            "learning_rate": learning_rate, "num_train": num_train, "num_epochs": num_epochs,
            "batch_size": batch_size, "num_val": small["X_val"].shape[0], **solver.history()}


def overfit_three_layer(data, device, **kwargs):
    weight_scale, learning_rate = fc.get_three_layer_network_params()
    return overfit([100, 100], weight_scale, learning_rate, data, device, **kwargs)


def overfit_five_layer(data, device, **kwargs):
    weight_scale, learning_rate = fc.get_five_layer_network_params()
    return overfit([100, 100, 100, 100], weight_scale, learning_rate, data, device, **kwargs)


# ---------------------------------------------------------------------------------------------
def optimizer_comparison(data, device, rules=tuple(UPDATE_RULES), dtype=DTYPE, seed=0, verbose=False):
    """The course's comparison: a 6-layer net ([100] * 5, weight scale 5e-2) trained for 5
    epochs (batch 100) on 4000 samples with each update rule at the course's learning rate.

    Returns {rule name: dict(solver, val_acc (best), final_val_acc, train_acc, seconds, ...)}.
    """
    num_train = eecs598.pick(full=4000, quick=400)
    num_epochs = eecs598.pick(full=5, quick=2)
    small = subset(data, num_train)
    results = {}
    for name in rules:
        eecs598.reset_seed(seed)
        model = fc.FullyConnectedNet([100] * 5, input_dim=small["X_train"].shape[1], weight_scale=5e-2,
                                     dtype=dtype, device=device)
        solver = Solver(model, small, num_epochs=num_epochs, batch_size=100, update_rule=UPDATE_RULES[name],
                        optim_config={"learning_rate": OPTIMIZER_LEARNING_RATES[name]},
                        print_every=1000, verbose=verbose, device=device)
        with timer() as t:
            solver.train()
        results[name] = {"solver": solver, "val_acc": solver.best_val_acc,
                         "final_val_acc": solver.val_acc_history[-1],
                         "train_acc": solver.train_acc_history[-1], "seconds": t.seconds,
                         "learning_rate": OPTIMIZER_LEARNING_RATES[name], "num_train": num_train,
                         "num_epochs": num_epochs, "batch_size": 100, "hidden_dims": [100] * 5,
                         "weight_scale": 5e-2, **solver.history()}
    return results


# ---------------------------------------------------------------------------------------------
def dropout_settings():
    """DROPOUT_SETTINGS in full mode; a tiny version in quick mode."""
    s = dict(DROPOUT_SETTINGS)
    s.update(num_train=eecs598.pick(full=s["num_train"], quick=800),
             hidden_dim=eecs598.pick(full=s["hidden_dim"], quick=64),
             batch_size=eecs598.pick(full=s["batch_size"], quick=100),
             num_epochs=eecs598.pick(full=s["num_epochs"], quick=3))
    return s


def dropout_experiment(data, device, dropouts=None, dtype=DTYPE, seed=0, verbose=False):
    """Train the same two-layer net with and without dropout (settings: `dropout_settings()`).

    Returns {dropout p: dict(solver, peak_val_acc, final_val_acc, final_train_acc, seconds,
    histories, settings)}. The accuracy checks use the whole validation split; train accuracy
    is measured on 1000 random training samples (the Solver's default).
    """
    s = dropout_settings()
    if dropouts is None:
        dropouts = (0.0, s["dropout"])
    small = subset(data, s["num_train"])
    results = {}
    for p in dropouts:
        eecs598.reset_seed(seed)
        model = fc.FullyConnectedNet([s["hidden_dim"]], input_dim=small["X_train"].shape[1], dropout=p,
                                     weight_scale=s["weight_scale"], dtype=dtype, device=device)
        solver = Solver(model, small, num_epochs=s["num_epochs"], batch_size=s["batch_size"],
                        update_rule=fc.adam, optim_config={"learning_rate": s["learning_rate"]},
                        print_every=100000, verbose=verbose, device=device)
        with timer() as t:
            solver.train()
        results[p] = {"solver": solver, "peak_val_acc": max(solver.val_acc_history),
                      "final_val_acc": solver.val_acc_history[-1],
                      "final_train_acc": solver.train_acc_history[-1], "seconds": t.seconds,
                      "settings": {**s, "dropout": p}, **solver.history()}
    return results


# ---------------------------------------------------------------------------------------------
def run(device=None):
    """All the experiments above, as result records (accuracies in %)."""
    device = eecs598.get_device(device)
    source = eecs598.data.load_cifar10_uint8()["source"]
    where = device_name(device)
    with timer() as t_data:
        data = load_data(device)
    sizes = {k: int(v.shape[0]) for k, v in data.items() if k.startswith("X")}
    base = {"dtype": str(DTYPE).replace("torch.", ""), "data_split": sizes,
            "data_seconds": round(t_data.seconds, 2)}
    records = []

    def record(metric, value, unit, seconds, reference=None, **details):
        records.append(make_record(ASSIGNMENT, metric, value, unit, data=source, device=where,
                                   seconds=seconds, reference=reference, details={**base, **details}))

    # Two-layer net (create_solver_instance).
    two = two_layer_solver(data, device)
    two_details = {"model": "TwoLayerNet(hidden_dim=200)", "update_rule": "sgd",
                   "optim_config": two["optim_config"], "lr_decay": two["lr_decay"],
                   "num_epochs": two["num_epochs"], "batch_size": two["batch_size"],
                   "val": "best epoch (the Solver keeps its params); test on those params"}
    record("fc_two_layer_val_accuracy", 100 * two["val_acc"], "%", two["seconds"],
           REFERENCE["two_layer_val"], **two_details)
    record("fc_two_layer_test_accuracy", 100 * two["test_acc"], "%", two["seconds"], None, **two_details)

    # Overfitting 50 samples.
    for name, fn, depth in (("three", overfit_three_layer, 3), ("five", overfit_five_layer, 5)):
        res = fn(data, device)
        record(f"fc_{name}_layer_overfit_epochs", res["epochs"], "epochs", res["seconds"],
               REFERENCE[f"{name}_layer_overfit_epochs"],
               hidden_dims=res["hidden_dims"], weight_scale=res["weight_scale"],
               learning_rate=res["learning_rate"], update_rule="sgd", num_train=res["num_train"],
               num_epochs=res["num_epochs"], batch_size=res["batch_size"],
               final_train_accuracy=100 * res["final_train_acc"], num_val_checked=res["num_val"],
               value_meaning="first epoch with 100% train accuracy (None: never within num_epochs)")

    # Update rules.
    for name, res in optimizer_comparison(data, device).items():
        record(f"fc_optimizer_{name}_val_accuracy", 100 * res["val_acc"], "%", res["seconds"],
               REFERENCE["optimizer_val"][name], update_rule=name, learning_rate=res["learning_rate"],
               hidden_dims=res["hidden_dims"], weight_scale=res["weight_scale"], num_train=res["num_train"],
               num_epochs=res["num_epochs"], batch_size=res["batch_size"],
               final_val_accuracy=100 * res["final_val_acc"], final_train_accuracy=100 * res["train_acc"],
               val="best accuracy check (first iteration and each epoch end)")

    # Dropout.
    study = dropout_experiment(data, device)
    for p, res in study.items():
        prefix = "fc_dropout" if p > 0 else "fc_no_dropout"
        details = {**res["settings"], "model": f"FullyConnectedNet([{res['settings']['hidden_dim']}])",
                   "update_rule": "adam", "final_train_accuracy": 100 * res["final_train_acc"],
                   "reference_study": "the reference's study (100 epochs, Adam 5e-3) never applied dropout; "
                                      f"its peak/final val: {REFERENCE['dropout_study']}"}
        record(f"{prefix}_val_accuracy_peak", 100 * res["peak_val_acc"], "%", res["seconds"], None, **details)
        record(f"{prefix}_val_accuracy_final", 100 * res["final_val_acc"], "%", res["seconds"], None, **details)
        record(f"{prefix}_train_accuracy_final", 100 * res["final_train_acc"], "%", res["seconds"], None,
               **details)
    return records
