"""
A2 headline experiments: linear SVM, softmax and the two-layer net on CIFAR-10.

`make reproduce` calls `run(device)`; the notebooks call `run_linear` and `run_two_layer`
(and the loaders) so that the numbers in the notebooks and in results/ come from the same
code. Sizes, grids and iteration counts go through `eecs598.pick(full=..., quick=...)`.

Protocol (full mode): CIFAR-10 with the course split, 40,000 train / 10,000 validation
(the tail of the official training set) and the 10,000 test images.

* Linear classifiers (float32, bias trick): every (learning rate, reg) pair from
  `svm_get_search_params` / `softmax_get_search_params` (<= 25 settings) is trained with
  `test_one_param_set` for 2,000 SGD iterations at batch 200 (the course's protocol). The
  setting with the best validation accuracy is then retrained for 8,000 iterations with the
  learning rate halved every 2,000 iterations. Of the two models (search winner, retrained)
  the one with the higher validation accuracy is kept and evaluated once on the test set.
* Two-layer net (float32): the training set is augmented with horizontal flips (80,000
  samples). `find_best_net` tries every setting of `nn_get_search_params` for 1,000
  iterations at batch 200 (init std 1e-2); the best setting is retrained for 6,000
  iterations (15 epochs of the augmented set, the learning rate decayed after each) and the
  better of the two on validation is evaluated on the test set.
"""
import itertools

import torch

from eecs598.data import load_cifar10_uint8, preprocess_cifar10
from eecs598.results import make_record
from eecs598.utils import device_name, get_device, pick, quick_mode, timer

import linear_classifier as lc
import two_layer_net as tln

ASSIGNMENT = "A2"

# The reference solutions' figures (../shared/COURSE_API.md, section 4); the "val" ones are the best
# validation accuracies of their searches, the "test" ones the test accuracy of that model.
REFERENCES = {
    "svm_val_accuracy": 38.38, "svm_test_accuracy": 38.99,
    "softmax_val_accuracy": 39.31, "softmax_test_accuracy": 39.69,
    "two_layer_val_accuracy": 51.97, "two_layer_test_accuracy": 52.34,
}


# ---------------------------------------------------------------------------------------------
# Settings (evaluated at call time, so that quick mode set after import is honoured)
# ---------------------------------------------------------------------------------------------
def data_sizes():
    """num_train (before the 80/20 train/val split) and num_test for preprocess_cifar10."""
    return {"num_train": pick(full=None, quick=1250), "num_test": pick(full=None, quick=250)}


def linear_settings():
    return {
        "search_iters": pick(full=2000, quick=25),
        "batch_size": 200,
        "max_settings": pick(full=None, quick=4),
        "final_iters": pick(full=8000, quick=60),
        "final_decay": 0.5,
        # the learning rate is multiplied by final_decay every final_iters // 4 iterations
        # (full: at 2,000, 4,000 and 6,000; the 4th would fall after the last iteration)
        "final_decay_steps": 4,
    }


def two_layer_settings():
    return {
        "search_iters": pick(full=1000, quick=20),
        "final_iters": pick(full=6000, quick=50),
        "batch_size": 200,
        "std": 1e-2,
        "augment_flips": True,
        "max_hidden": pick(full=None, quick=64),
        "max_values_per_list": pick(full=None, quick=1),
    }


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def load_linear_data(device=None, dtype=torch.float32, show_examples=False):
    """CIFAR-10 for the linear classifiers: flattened, mean-subtracted, bias trick (D=3073)."""
    return preprocess_cifar10(device=get_device(device), dtype=dtype, bias_trick=True,
                              show_examples=show_examples, **data_sizes())


def load_two_layer_data(device=None, dtype=torch.float32, show_examples=False):
    """CIFAR-10 for the two-layer net: flattened and mean-subtracted (D=3072), no bias column."""
    return preprocess_cifar10(device=get_device(device), dtype=dtype, bias_trick=False,
                              show_examples=show_examples, **data_sizes())


def augment_with_flips(data_dict):
    """A copy of data_dict whose training set also holds every image flipped left-right."""
    X = data_dict["X_train"]
    flipped = X.reshape(-1, 3, 32, 32).flip(3).reshape(X.shape[0], -1)
    out = dict(data_dict)
    out["X_train"] = torch.cat([X, flipped])
    out["y_train"] = torch.cat([data_dict["y_train"], data_dict["y_train"]])
    return out


def accuracy(pred, y):
    """Accuracy in percent of predicted labels `pred` against `y`."""
    return 100.0 * (pred == y).double().mean().item()


def _spread(items, k):
    """k items evenly spread over the list (all of them when k is None or >= len)."""
    if k is None or k >= len(items):
        return list(items)
    idx = torch.linspace(0, len(items) - 1, k).round().long().tolist()
    return [items[i] for i in idx]


# ---------------------------------------------------------------------------------------------
# Linear classifiers
# ---------------------------------------------------------------------------------------------
LINEAR_MODELS = {
    "svm": (lc.LinearSVM, lc.svm_get_search_params),
    "softmax": (lc.Softmax, lc.softmax_get_search_params),
}


def linear_search(cls, data, get_params_fn, num_iters, batch_size=200, max_settings=None,
                  verbose=True):
    """
    Train `cls` for every (lr, reg) in get_params_fn() with `test_one_param_set`.

    Returns a dict: results {(lr, reg): (train_acc, val_acc)}, best_model, best_lr,
    best_reg, best_val (percent), num_settings and seconds (wall time of the search).
    """
    lrs, regs = get_params_fn()
    grid = list(itertools.product(lrs, regs))
    if not 1 <= len(grid) <= 25:
        raise ValueError(f"the search must try between 1 and 25 settings, got {len(grid)}")
    grid = _spread(grid, max_settings)
    results, best = {}, None
    with timer() as t:
        for lr, reg in grid:
            model, train_acc, val_acc = lc.test_one_param_set(cls(), data, lr, reg, num_iters,
                                                              batch_size)
            results[(lr, reg)] = (train_acc, val_acc)
            if verbose:
                print(f"  lr {lr:.1e} reg {reg:.1e}: train {train_acc:.2f}% val {val_acc:.2f}%",
                      flush=True)
            if best is None or val_acc > best[3]:
                best = (model, lr, reg, val_acc)
    return {"results": results, "best_model": best[0], "best_lr": best[1], "best_reg": best[2],
            "best_val": best[3], "num_settings": len(grid), "seconds": t.seconds}


def run_linear(kind, data=None, device=None, verbose=True):
    """
    The full protocol for one linear model ("svm" or "softmax"): search, retrain the best
    setting longer with a step-decayed learning rate, keep the better model on validation,
    evaluate it once on the test set.

    Returns a dict with the model, the search (see `linear_search`), the retrained model's
    loss history, val_accuracy / test_accuracy (percent), the chosen hyperparameters,
    timings and the settings used.
    """
    cls, params_fn = LINEAR_MODELS[kind]
    settings = linear_settings()
    if data is None:
        data = load_linear_data(device)
    if verbose:
        print(f"{kind}: searching with {settings['search_iters']} iterations per setting", flush=True)
    with timer() as total:
        search = linear_search(cls, data, params_fn, settings["search_iters"],
                               settings["batch_size"], settings["max_settings"], verbose)
        lr, reg = search["best_lr"], search["best_reg"]
        final = cls()
        decay_every = max(settings["final_iters"] // settings["final_decay_steps"], 1)
        with timer() as t_final:
            loss_history = final.train(data["X_train"], data["y_train"], lr, reg,
                                       settings["final_iters"], settings["batch_size"],
                                       learning_rate_decay=settings["final_decay"],
                                       decay_every=decay_every)
        final_val = accuracy(final.predict(data["X_val"]), data["y_val"])
        retrained = final_val >= search["best_val"]
        model = final if retrained else search["best_model"]
        val_acc = final_val if retrained else search["best_val"]
        test_acc = accuracy(model.predict(data["X_test"]), data["y_test"])
    if verbose:
        print(f"{kind}: best setting lr {lr:.1e} reg {reg:.1e}: search val {search['best_val']:.2f}%, "
              f"retrained val {final_val:.2f}% -> kept the {'retrained' if retrained else 'search'} "
              f"model: val {val_acc:.2f}%, test {test_acc:.2f}% ({total.seconds:.1f} s)", flush=True)
    return {
        "kind": kind, "model": model, "search": search, "loss_history": loss_history,
        "val_accuracy": val_acc, "test_accuracy": test_acc, "retrained": retrained,
        "retrained_val_accuracy": final_val,
        "hyperparameters": {"learning_rate": lr, "reg": reg},
        "search_seconds": search["seconds"], "final_seconds": t_final.seconds,
        "seconds": total.seconds, "settings": settings,
    }


# ---------------------------------------------------------------------------------------------
# Two-layer net
# ---------------------------------------------------------------------------------------------
def two_layer_param_fn(settings=None):
    """nn_get_search_params, thinned in quick mode (fewer values, smaller hidden layers)."""
    settings = settings or two_layer_settings()

    def param_fn():
        lists = tln.nn_get_search_params()
        k = settings["max_values_per_list"]
        lrs, hidden, regs, decays = (_spread(list(v), k) for v in lists)
        if k is not None:  # quick mode: still compare two learning rates
            lrs = _spread(list(lists[0]), 2)
        if settings["max_hidden"] is not None:
            hidden = sorted({min(h, settings["max_hidden"]) for h in hidden})
        return lrs, hidden, regs, decays

    return param_fn


def run_two_layer(data=None, device=None, verbose=True):
    """
    The full protocol for the two-layer net: find_best_net over nn_get_search_params on the
    flip-augmented training set, retrain the best setting longer, keep the better model on
    validation, evaluate it once on the test set.

    Returns a dict with the model, search results {(lr, hidden, reg, decay): stats},
    search_best_val, the retrained run's stats, val_accuracy / test_accuracy (percent),
    hyperparameters, timings, settings and num_train_trained_on (flips included).
    """
    settings = two_layer_settings()
    if data is None:
        data = load_two_layer_data(device)
    train_data = augment_with_flips(data) if settings["augment_flips"] else data
    X_train = train_data["X_train"]
    num_classes = int(data["y_train"].max().item()) + 1
    results = {}
    with timer() as total:
        with timer() as t_search:
            best_net, best_stat, best_val = tln.find_best_net(
                train_data, two_layer_param_fn(settings), num_iters=settings["search_iters"],
                batch_size=settings["batch_size"], std=settings["std"], verbose=verbose,
                results=results)
        search_val = accuracy(best_net.predict(data["X_val"]), data["y_val"])
        hp = getattr(best_net, "hparams", None)
        if hp is None:  # a find_best_net that does not report its choice: keep its net
            hp = {"hidden_size": best_net.params["W1"].shape[1]}
            final_net, final_stats, final_val, t_final_seconds = None, None, float("nan"), 0.0
        else:
            final_net = tln.TwoLayerNet(X_train.shape[1], hp["hidden_size"], num_classes,
                                        dtype=X_train.dtype, device=X_train.device,
                                        std=settings["std"])
            with timer() as t_final:
                final_stats = final_net.train(
                    X_train, train_data["y_train"], data["X_val"], data["y_val"],
                    learning_rate=hp["learning_rate"],
                    learning_rate_decay=hp["learning_rate_decay"], reg=hp["reg"],
                    num_iters=settings["final_iters"], batch_size=settings["batch_size"],
                    verbose=verbose and settings["final_iters"] >= 1000)
            t_final_seconds = t_final.seconds
            final_val = accuracy(final_net.predict(data["X_val"]), data["y_val"])
        retrained = final_net is not None and final_val >= search_val
        model = final_net if retrained else best_net
        val_acc = final_val if retrained else search_val
        test_acc = accuracy(model.predict(data["X_test"]), data["y_test"])
    if verbose:
        print(f"two-layer: best setting {hp}: search val {search_val:.2f}%, retrained val "
              f"{final_val:.2f}% -> kept the {'retrained' if retrained else 'search'} model: "
              f"val {val_acc:.2f}%, test {test_acc:.2f}% ({total.seconds:.1f} s)", flush=True)
    return {
        "model": model, "search": results, "search_best_stat": best_stat,
        "search_best_val": 100.0 * best_val, "search_val_accuracy": search_val,
        "final_stats": final_stats, "retrained": retrained, "retrained_val_accuracy": final_val,
        "val_accuracy": val_acc, "test_accuracy": test_acc, "hyperparameters": hp,
        "search_seconds": t_search.seconds, "final_seconds": t_final_seconds,
        "seconds": total.seconds, "settings": settings,
        "num_train_trained_on": X_train.shape[0],  # with flips: twice num_train
    }


# ---------------------------------------------------------------------------------------------
# make reproduce
# ---------------------------------------------------------------------------------------------
def _sizes_of(data):
    return {"num_train": data["X_train"].shape[0], "num_val": data["X_val"].shape[0],
            "num_test": data["X_test"].shape[0]}


def run(device=None):
    """All A2 headline figures as result records (val and test accuracy of each model)."""
    device = get_device(device)
    source = load_cifar10_uint8()["source"]
    dev_name = device_name(device)
    records = []

    def add(prefix, out, sizes, extra):
        details = {"hyperparameters": out["hyperparameters"],
                   "search_seconds": round(out["search_seconds"], 2),
                   "final_seconds": round(out["final_seconds"], 2),
                   "retrained_model_kept": out["retrained"], **sizes, **extra,
                   "settings": out["settings"], "dtype": "float32"}
        for split in ("val", "test"):
            metric = f"{prefix}_{split}_accuracy"
            records.append(make_record(ASSIGNMENT, metric, round(out[f"{split}_accuracy"], 2), "%",
                                       source, dev_name, out["seconds"],
                                       # quick rows: tiny subsets, not comparable with the reference
                                       reference=None if quick_mode() else REFERENCES[metric],
                                       details=details))

    data = load_linear_data(device)
    for kind in ("svm", "softmax"):
        out = run_linear(kind, data, device)
        add(kind, out, _sizes_of(data), {
            "search_settings": out["search"]["num_settings"],
            "search_best_val": round(out["search"]["best_val"], 2),
            "retrained_val": round(out["retrained_val_accuracy"], 2),
            "search_results": {f"lr={lr:g},reg={reg:g}": [round(a, 2) for a in accs]
                               for (lr, reg), accs in out["search"]["results"].items()},
        })
    del data

    data = load_two_layer_data(device)
    out = run_two_layer(data, device)
    add("two_layer", out, {**_sizes_of(data), "num_train_trained_on": out["num_train_trained_on"]}, {
        "search_settings": len(out["search"]),
        "search_best_val": round(out["search_best_val"], 2),
        "retrained_val": round(out["retrained_val_accuracy"], 2),
        "search_results": {f"lr={lr:g},hidden={hs},reg={reg:g},decay={d:g}":
                           round(100 * max(s["val_acc_history"]), 2)
                           for (lr, hs, reg, d), s in out["search"].items()},
        "augmentation": "horizontal flips (training set doubled)",
    })
    return records
