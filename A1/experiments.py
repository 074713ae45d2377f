"""A1 kNN headline experiments for `make reproduce` (knn.ipynb runs the same course protocol in
its own cells and shows how to call `full_data`).

* `course_protocol(device)`: the course's protocol on the first 5,000 training and first 500
  test images: accuracy at k=1 and k=5, 5-fold cross-validation over K_CHOICES, the best k,
  and the test accuracy at the best k.
* `full_data(k, device, metric)`: all 50,000 training vs all 10,000 test images at one k,
  with squared L2 (the course's) and L1 distances.
* `run(device)`: both, the full-data run at the cross-validated k; returns the records.

Quick mode (EECS598_QUICK=1) shrinks every size (see `eecs598.pick`) so that all of it runs
in seconds; quick records carry no reference value, since the reference figures belong to
the full sizes. Cost of the full run on CPU: the L2 pass is one 50,000 x 3,072 x 10,000
matrix product (about a minute on 2 cores); L1 has no matrix-product shortcut and needs
1.5e12 elementwise operations for all 10,000 test images (on a CPU `run` uses the first
1,000: 1,787 s in the recorded 2-core run, other jobs running; seconds on a GPU).
"""
import knn
from eecs598.data import load_cifar10_uint8
from eecs598.results import make_record
from eecs598.utils import device_name, get_device, pick, quick_mode, timer

ASSIGNMENT = "A1"
K_CHOICES = [1, 3, 5, 8, 10, 12, 15, 20, 50, 100]

# Figures of the reference solutions (official CIFAR-10 python archive, CPU);
# ../shared/COURSE_API.md, section 4.
REFERENCE = {
    "knn_test_accuracy_subset_k1": 27.40,
    "knn_test_accuracy_subset_k5": 27.80,
    "knn_cv_best_k": 10,
    "knn_cv_mean_accuracy_best_k": 28.02,
    "knn_test_accuracy_subset": 28.20,
    "knn_test_accuracy_full_l2": 33.86,  # at k=10
    "knn_test_accuracy_full_l1": None,   # the reference has no L1 run
}


def load_data(num_train, num_test, device=None):
    """The first `num_train` / `num_test` CIFAR-10 images (the same subset as
    `eecs598.data.cifar10(num_train, num_test)`), as float32 in [0, 1] on `device`.

    Returns (x_train (N,3,32,32), y_train (N,), x_test (M,3,32,32), y_test (M,), source).
    """
    device = get_device(device)
    data = load_cifar10_uint8()
    x_train = data["x_train"][:num_train].to(device).float().div_(255)
    x_test = data["x_test"][:num_test].to(device).float().div_(255)
    y_train = data["y_train"][:num_train].to(device)
    y_test = data["y_test"][:num_test].to(device)
    return x_train, y_train, x_test, y_test, data["source"]


def _record(metric, value, unit, source, device, seconds, details):
    reference = None if quick_mode() else REFERENCE.get(metric)
    return make_record(ASSIGNMENT, metric, value, unit, data=source, device=device_name(device),
                       seconds=seconds, reference=reference, details=details)


def course_protocol(device=None, k_choices=None):
    """The course's kNN protocol on a subset; returns a list of records.

    Sizes: 5,000 train / 500 test / 5 folds (quick: 500 / 100 / 3).
    Records: knn_test_accuracy_subset_k1, knn_test_accuracy_subset_k5, knn_cv_best_k,
    knn_cv_mean_accuracy_best_k, knn_test_accuracy_subset (at the best k). The details of
    the cross-validation records hold every fold's accuracy per k.
    """
    device = get_device(device)
    k_choices = list(K_CHOICES if k_choices is None else k_choices)
    num_train, num_test = pick(full=5000, quick=500), pick(full=500, quick=100)
    num_folds = pick(full=5, quick=3)
    x_train, y_train, x_test, y_test, source = load_data(num_train, num_test, device)
    sizes = {"num_train": num_train, "num_test": num_test, "metric": "squared_l2",
             "subset": "first num_train training and first num_test test images"}

    records = []
    classifier = knn.KnnClassifier(x_train, y_train)
    for k in (1, 5):
        with timer() as t:
            accuracy = classifier.check_accuracy(x_test, y_test, k=k)
        records.append(_record(f"knn_test_accuracy_subset_k{k}", accuracy, "%", source, device,
                               t.seconds, {**sizes, "k": k}))

    with timer() as t:
        k_to_accuracies = knn.knn_cross_validate(x_train, y_train, num_folds=num_folds,
                                                 k_choices=k_choices)
        best_k = knn.knn_get_best_k(k_to_accuracies)
    means = {str(k): sum(a) / len(a) for k, a in k_to_accuracies.items()}
    cv_details = {**sizes, "num_folds": num_folds, "k_choices": k_choices,
                  "cv_mean_accuracy": means,
                  "cv_fold_accuracies": {str(k): a for k, a in k_to_accuracies.items()}}
    print(f"cross-validation ({num_folds} folds): best k = {best_k}, "
          f"mean accuracy {means[str(best_k)]:.2f}%")
    records.append(_record("knn_cv_best_k", best_k, "k", source, device, t.seconds, cv_details))
    records.append(_record("knn_cv_mean_accuracy_best_k", means[str(best_k)], "%", source, device,
                           t.seconds, {**cv_details, "k": best_k}))

    with timer() as t:
        accuracy = classifier.check_accuracy(x_test, y_test, k=best_k)
    records.append(_record("knn_test_accuracy_subset", accuracy, "%", source, device, t.seconds,
                           {**sizes, "k": best_k, "k_from": "cross-validation"}))
    return records


def full_data(k=10, device=None, metric=("l2", "l1"), num_test=None):
    """Test accuracy of kNN trained on all 50,000 training images, on all 10,000 test images.

    k: the number of neighbours (the reference used k=10). metric: "l2" (squared Euclidean),
    "l1", or a sequence of them; one record per metric, named knn_test_accuracy_full_<metric>
    (knn_test_accuracy_full_train_<metric>_test<num_test> when `num_test` limits the test set).
    Quick mode: 1,000 train / 200 test. Predictions are computed in blocks of test points
    (see KnnClassifier.predict), so memory stays bounded on any device.
    """
    device = get_device(device)
    metrics = [metric] if isinstance(metric, str) else list(metric)
    num_train = pick(full=50000, quick=1000)
    limited = num_test is not None and not quick_mode()
    num_test = pick(full=num_test or 10000, quick=200)
    x_train, y_train, x_test, y_test, source = load_data(num_train, num_test, device)
    records = []
    for name in metrics:
        classifier = knn.KnnClassifier(x_train, y_train, metric=name)
        with timer() as t:
            accuracy = classifier.check_accuracy(x_test, y_test, k=k)
        metric_name = (f"knn_test_accuracy_full_train_{name}_test{num_test}" if limited
                       else f"knn_test_accuracy_full_{name}")
        records.append(_record(metric_name, accuracy, "%", source, device,
                               t.seconds, {"num_train": num_train, "num_test": num_test, "k": k,
                                           "metric": {"l2": "squared_l2"}.get(name, name),
                                           "reference_k": 10}))
    return records


def run(device=None):
    """All A1 headline experiments: the course protocol, then the full data at its best k.

    L1 has no matrix-product shortcut: on a CPU it is evaluated on the first 1,000 test
    images only (all 50,000 training images), on CUDA on all 10,000.
    """
    device = get_device(device)
    records = course_protocol(device)
    best_k = int(next(r["value"] for r in records if r["metric"] == "knn_cv_best_k"))
    records += full_data(k=best_k, device=device, metric="l2")
    records += full_data(k=best_k, device=device, metric="l1",
                         num_test=None if device.type == "cuda" else 1000)
    return records
