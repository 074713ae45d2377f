"""
Headline experiments of A3's convolutional networks: the notebook and `make reproduce`
(through A3/experiments.py, which calls `run`) use the same functions.

No solution code here: everything trains through convolutional_networks.py (hand-written
forward/backward passes of the conv, pool and batch-norm layers; FastConv / FastMaxPool are
the project's own vectorized implementations, no autograd) with the update rules of
fully_connected_networks.py and the course's `eecs598.Solver`.

Sizes and epochs come from `eecs598.pick(full=..., quick=...)`: full mode is the course's
protocol on CIFAR-10 (40k train / 10k val / 10k test, (N, 3, 32, 32), float32); quick mode
(EECS598_QUICK=1) shrinks everything to a smoke run.

    load_data                  CIFAR-10 as images, mean-subtracted, on the device
    one_minute_deepconvnet     create_convolutional_solver_instance + solver.train(time_limit=60)
    initialization_study       31-layer DeepConvNet, 1 epoch on 10k images: Kaiming vs fixed scales
    batchnorm_comparison       the same 6-layer net with and without batch norm, 500 images
    batchnorm_learning_rates   ... and across learning rates
    resnet                     beyond the course: the from-scratch ResNet-9 (resnet_from_scratch.py)
    run(device)                all of the above as result records; run(device, parts=PARTS + ("resnet_half",))
                               adds the ResNet-9 recipe at half width (about 65 minutes on a 2-core CPU);
                               parts=("resnet_half",) runs that alone
"""
import torch

import convolutional_networks as cn
import eecs598
import resnet_from_scratch
import fully_connected_networks as fc
from fc_experiments import subset
from eecs598.results import make_record
from eecs598.solver import Solver
from eecs598.utils import device_name, timer

ASSIGNMENT = "A3"
DTYPE = torch.float32

# Figures of the reference solutions (../shared/COURSE_API.md, section 4), CUDA, in %.
REFERENCE = {
    "one_minute_val": 72.81,
    "one_minute_test": 72.09,
    "init_study": {"kaiming": 15.93, 1e-1: 10.14, 1e-2: 10.03, 1e-3: 9.80},
    "bn": 36.31,
    "nobn": 29.88,
}

# The course's protocols.
INIT_STUDY = {"num_filters": [8] * 10 + [32] * 10 + [128] * 10, "max_pools": [9, 19], "num_train": 10000,
              "num_epochs": 1, "batch_size": 128, "learning_rate": 2e-3, "reg": 1e-5,
              "weight_scales": ["kaiming", 1e-1, 1e-2, 1e-3]}
BN_STUDY = {"num_filters": [16, 32, 32, 64, 64], "max_pools": [0, 1, 2, 3, 4], "num_train": 500,
            "num_epochs": 10, "batch_size": 100, "learning_rate": 1e-3, "reg": 1e-5}
BN_LR_STUDY = {"learning_rates": [5e-3, 1e-2, 2e-2], "num_epochs": 5}


def load_data(device=None, dtype=DTYPE):
    """CIFAR-10 images (N, 3, 32, 32), mean-subtracted, on `device`: 40k / 10k / 10k (quick: 400 / 100 / 100).

    Returns (data dict, source string of the copy used)."""
    data = eecs598.data.preprocess_cifar10(
        show_examples=False, flatten=False, dtype=dtype, device=eecs598.get_device(device),
        num_train=eecs598.pick(full=None, quick=500), num_test=eecs598.pick(full=None, quick=100))
    return data, eecs598.data.load_cifar10_uint8()["source"]


# ---------------------------------------------------------------------------------------------
def one_minute_deepconvnet(data, device, dtype=DTYPE, time_limit=None, verbose=False, seed=0):
    """The one-minute net: `create_convolutional_solver_instance` (DeepConvNet with filters
    [128, 64, 32], each conv followed by batch norm, ReLU and a pool, Kaiming init, reg 1e-5;
    Adam 2e-3 decayed by 0.8 per epoch, batch 128, 10 epochs) trained with
    `solver.train(time_limit=60)` (quick mode: 3 s). `time_limit=float("inf")` trains all 10
    epochs (what the CPU can check of the GPU target).

    The Solver keeps the parameters with the best validation accuracy (and the batch-norm
    running statistics of that check); the test accuracy is measured on those. Returns a dict:
    solver, val_acc, test_acc, seconds (training), iterations, epochs (completed), finished
    (all 10 epochs within the limit).
    """
    eecs598.reset_seed(seed)
    time_limit = eecs598.pick(full=60, quick=3) if time_limit is None else time_limit
    solver = cn.create_convolutional_solver_instance(data, dtype, device)
    solver.verbose = verbose
    with timer() as t:
        solver.train(time_limit=time_limit)
    test_acc = solver.check_accuracy(data["X_test"], data["y_test"])
    iterations_per_epoch = max(data["X_train"].shape[0] // solver.batch_size, 1)
    iterations = len(solver.loss_history)
    return {"solver": solver, "val_acc": solver.best_val_acc, "test_acc": test_acc, "seconds": t.seconds,
            "time_limit": time_limit, "iterations": iterations, "epochs": solver.epoch,
            "finished": iterations == solver.num_epochs * iterations_per_epoch,
            "num_train": data["X_train"].shape[0], **solver.history()}


# ---------------------------------------------------------------------------------------------
def init_study_settings():
    """INIT_STUDY in full mode; a shallower, smaller version in quick mode."""
    s = dict(INIT_STUDY)
    if eecs598.quick_mode():
        s.update(num_filters=[8] * 3 + [16] * 3 + [32] * 3, max_pools=[2, 5], num_train=200)
    return s


def initialization_study(data, device, dtype=DTYPE, seed=0, verbose=False):
    """The course's initialization study: a 31-layer DeepConvNet (30 convs: 8 x10, 32 x10,
    128 x10 filters; pools after conv 9 and 19) trained for one epoch on 10k images with
    SGD + momentum (lr 2e-3, batch 128), weight_scale 'kaiming' vs 1e-1, 1e-2, 1e-3.

    Returns {weight_scale: dict(solver, val_acc (best), final_val_acc, train_acc, final_loss, ...)}.
    """
    s = init_study_settings()
    small = subset(data, s["num_train"])
    results = {}
    for scale in s["weight_scales"]:
        eecs598.reset_seed(seed)
        model = cn.DeepConvNet(input_dims=tuple(small["X_train"].shape[1:]), num_classes=10,
                               num_filters=s["num_filters"], max_pools=s["max_pools"], weight_scale=scale,
                               reg=s["reg"], dtype=dtype, device=device)
        solver = Solver(model, small, num_epochs=s["num_epochs"], batch_size=s["batch_size"],
                        update_rule=fc.sgd_momentum, optim_config={"learning_rate": s["learning_rate"]},
                        print_every=20, verbose=verbose, device=device)
        with timer() as t:
            solver.train()
        results[scale] = {"solver": solver, "val_acc": solver.best_val_acc,
                          "final_val_acc": solver.val_acc_history[-1],
                          "train_acc": solver.train_acc_history[-1],
                          "final_loss": solver.loss_history[-1], "seconds": t.seconds,
                          "settings": {**s, "weight_scales": None, "weight_scale": scale}, **solver.history()}
    return results


# ---------------------------------------------------------------------------------------------
def bn_study_settings():
    s = dict(BN_STUDY)
    if eecs598.quick_mode():
        s.update(num_filters=[8, 16, 16], max_pools=[0, 1, 2], num_train=100, num_epochs=2, batch_size=50)
    return s


def _bn_pair(small, device, dtype, s, learning_rate, num_epochs, seed, verbose):
    out = {}
    for batchnorm in (True, False):
        eecs598.reset_seed(seed)
        model = cn.DeepConvNet(input_dims=tuple(small["X_train"].shape[1:]), num_classes=10,
                               num_filters=s["num_filters"], max_pools=s["max_pools"], weight_scale="kaiming",
                               batchnorm=batchnorm, reg=s["reg"], dtype=dtype, device=device)
        solver = Solver(model, small, num_epochs=num_epochs, batch_size=s["batch_size"], update_rule=fc.adam,
                        optim_config={"learning_rate": learning_rate}, print_every=20, verbose=verbose,
                        device=device)
        with timer() as t:
            solver.train()
        out["bn" if batchnorm else "nobn"] = {
            "solver": solver, "val_acc": solver.best_val_acc, "final_val_acc": solver.val_acc_history[-1],
            "train_acc": solver.train_acc_history[-1], "seconds": t.seconds,
            "settings": {**s, "learning_rate": learning_rate, "num_epochs": num_epochs, "batchnorm": batchnorm},
            **solver.history()}
    return out


def batchnorm_comparison(data, device, dtype=DTYPE, seed=0, verbose=False):
    """The course's batch-norm experiment: DeepConvNet [16, 32, 32, 64, 64], a pool after every
    conv, Kaiming init, on 500 training images, Adam 1e-3, batch 100, 10 epochs, with and
    without batch norm. Returns {"bn": dict(...), "nobn": dict(...)} as `initialization_study`."""
    s = bn_study_settings()
    small = subset(data, s["num_train"])
    return _bn_pair(small, device, dtype, s, s["learning_rate"], s["num_epochs"], seed, verbose)


def batchnorm_learning_rates(data, device, learning_rates=None, dtype=DTYPE, seed=0, verbose=False):
    """Batch norm vs learning rate: the nets of `batchnorm_comparison`, 5 epochs, with and
    without batch norm at each learning rate (course: 5e-3, 1e-2, 2e-2).

    Returns {learning_rate: {"bn": dict(...), "nobn": dict(...)}}."""
    s = bn_study_settings()
    learning_rates = BN_LR_STUDY["learning_rates"] if learning_rates is None else learning_rates
    num_epochs = eecs598.pick(full=BN_LR_STUDY["num_epochs"], quick=1)
    small = subset(data, s["num_train"])
    return {lr: _bn_pair(small, device, dtype, s, lr, num_epochs, seed, verbose) for lr in learning_rates}


# ---------------------------------------------------------------------------------------------
def resnet(device, verbose=False, seed=0):
    """Beyond the course: train the from-scratch ResNet-9 of resnet_from_scratch.py with its
    `settings()` (full: 50k images, 10 epochs, batch 512, for a GPU; quick: a CPU-sized net on
    640 images). Returns run_resnet's dict (test_acc with test-time flips, test_acc_no_tta,
    train_seconds, ...), or None on a CPU in full mode, where it would take hours."""
    device = eecs598.get_device(device)
    if device.type == "cpu" and not eecs598.quick_mode():
        return None
    return resnet_from_scratch.run_resnet(device, verbose=verbose, seed=seed)


def resnet_half_width(device, verbose=False, seed=0):
    """The same recipe at half width (`resnet_from_scratch.half_width_settings()`), on any device:
    the ResNet-9 recipe checked at full scale on a CPU. Returns run_resnet's dict."""
    return resnet_from_scratch.run_resnet(device, config=resnet_from_scratch.half_width_settings(),
                                          verbose=verbose, seed=seed)


# ---------------------------------------------------------------------------------------------
def plot_histories(runs, title=""):
    """Loss and train / val accuracy curves of several runs: {label: dict or Solver with histories}."""
    import matplotlib.pyplot as plt

    def get(run, key):
        return run[key] if isinstance(run, dict) else getattr(run, key)

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for label, run in runs.items():
        axes[0].plot(get(run, "loss_history"), ".", markersize=2, label=str(label))
        axes[1].plot(get(run, "train_acc_history"), "o-", label=str(label))
        axes[2].plot(get(run, "val_acc_history"), "o-", label=str(label))
    for ax, name in zip(axes, ("training loss", "train accuracy", "validation accuracy")):
        ax.set_title(f"{title} {name}".strip())
        ax.set_xlabel("iteration" if name == "training loss" else "accuracy check (epoch)")
    axes[2].legend()
    plt.tight_layout()
    plt.show()


def _number_name(x):
    """0.01 -> '0_01' (for snake_case metric names)."""
    return f"{x:g}".replace(".", "_").replace("-", "m").replace("+", "")


def _scale_name(scale):
    return "kaiming" if scale == "kaiming" else f"scale_{_number_name(scale)}"


def _lr_name(lr):
    return f"lr_{_number_name(lr)}"


# ---------------------------------------------------------------------------------------------
PARTS = ("one_minute", "init_study", "bn", "bn_lr", "resnet")
COURSE_SPLIT_PARTS = ("one_minute", "init_study", "bn", "bn_lr")  # these train on load_data()'s split
OPTIONAL_PARTS = ("resnet_half",)  # only when asked for: about 65 minutes on a 2-core CPU


def run(device=None, parts=PARTS):
    """The experiments above (those named in `parts`: by default PARTS, not OPTIONAL_PARTS), as
    result records (accuracies in %)."""
    unknown = set(parts) - set(PARTS) - set(OPTIONAL_PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {PARTS + OPTIONAL_PARTS}")
    device = eecs598.get_device(device)
    where = device_name(device)
    data, source, sizes = None, None, {}
    if set(parts) & set(COURSE_SPLIT_PARTS):  # the ResNet runs load their own data
        with timer() as t_load:
            data, source = load_data(device)
        sizes = {"num_train": data["X_train"].shape[0], "num_val": data["X_val"].shape[0],
                 "num_test": data["X_test"].shape[0], "dtype": "float32", "data_load_seconds": t_load.seconds}
    records = []

    def record(metric, value, unit, seconds, reference=None, **details):
        records.append(make_record(ASSIGNMENT, metric, value, unit, data=source, device=where,
                                   seconds=seconds, reference=reference, details={**sizes, **details}))

    if "one_minute" in parts:
        one = one_minute_deepconvnet(data, device)
        solver, model = one["solver"], one["solver"].model
        details = {"model": f"DeepConvNet({model.num_filters}, max_pools={model.max_pools}, kaiming, "
                            f"reg {model.reg:g}, {'batch norm' if model.batchnorm else 'no batch norm'})",
                   "update_rule": solver.update_rule.__name__, "learning_rate": solver.optim_config["learning_rate"],
                   "lr_decay": solver.lr_decay, "batch_size": solver.batch_size, "num_epochs": solver.num_epochs,
                   "time_limit_s": one["time_limit"], "iterations_done": one["iterations"],
                   "epochs_done": one["epochs"], "finished_all_epochs": one["finished"],
                   "val": "best accuracy check (the Solver keeps those params and batch-norm statistics); test on those"}
        record("one_minute_deepconvnet_val_accuracy", 100 * one["val_acc"], "%", one["seconds"],
               REFERENCE["one_minute_val"], **details)
        record("one_minute_deepconvnet_test_accuracy", 100 * one["test_acc"], "%", one["seconds"],
               REFERENCE["one_minute_test"], **details)

    if "init_study" in parts:
        for scale, res in initialization_study(data, device).items():
            s = res["settings"]
            record(f"init_study_{_scale_name(scale)}_val_accuracy", 100 * res["val_acc"], "%", res["seconds"],
                   REFERENCE["init_study"].get(scale), weight_scale=scale, depth=len(s["num_filters"]) + 1,
                   num_filters=s["num_filters"], max_pools=s["max_pools"], num_train_used=s["num_train"],
                   num_epochs=s["num_epochs"], batch_size=s["batch_size"], update_rule="sgd_momentum",
                   learning_rate=s["learning_rate"], final_loss=res["final_loss"])

    if "bn" in parts:
        for key, res in batchnorm_comparison(data, device).items():
            s = res["settings"]
            common = dict(num_filters=s["num_filters"], max_pools=s["max_pools"], num_train_used=s["num_train"],
                          num_epochs=s["num_epochs"], batch_size=s["batch_size"], update_rule="adam",
                          learning_rate=s["learning_rate"], final_val_accuracy=100 * res["final_val_acc"])
            record(f"bn_vs_nobn_val_accuracy_{key}", 100 * res["val_acc"], "%", res["seconds"], REFERENCE[key],
                   **common)
            record(f"bn_vs_nobn_train_accuracy_{key}", 100 * res["train_acc"], "%", res["seconds"], None, **common)

    if "bn_lr" in parts:
        for lr, pair in batchnorm_learning_rates(data, device).items():
            for key, res in pair.items():
                s = res["settings"]
                record(f"bn_vs_lr_{_lr_name(lr)}_val_accuracy_{key}", 100 * res["val_acc"], "%", res["seconds"],
                       None, learning_rate=lr, num_filters=s["num_filters"], num_train_used=s["num_train"],
                       num_epochs=s["num_epochs"], batch_size=s["batch_size"], update_rule="adam")

    def resnet_records(name, res, target):
        details = {"config": res["config"], "num_train_used": res["num_train"], "num_test_used": res["num_test"],
                   "steps": res["steps"], "eval_seconds": res["eval_seconds"],
                   "test_accuracy_without_flips": 100 * res["test_acc_no_tta"], "target": target,
                   "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
                   "seconds": "training loop only (data already on the device), evaluation excluded"}
        for metric, value, unit in (("test_accuracy", 100 * res["test_acc"], "%"),
                                    ("train_seconds", res["train_seconds"], "s")):
            records.append(make_record(ASSIGNMENT, f"{name}_{metric}", value, unit, data=res["source"], device=where,
                                       seconds=res["train_seconds"], details=details))

    # Beyond the course: the from-scratch ResNet-9 (skipped on a CPU in full mode).
    res = resnet(device) if "resnet" in parts else None
    if res is None:
        print("   (resnet9_from_scratch skipped: not requested, or full mode on a CPU, which would take hours)")
    else:
        resnet_records("resnet9_from_scratch", res, ">= 90% test within 60 s of training on one H100/H200 (full mode)")
    if "resnet_half" in parts:
        resnet_records("resnet9_half_width_from_scratch", resnet_half_width(device),
                       "none: a check of the full recipe at half width (widths 32-64-128-256) where no GPU is")
    return records
