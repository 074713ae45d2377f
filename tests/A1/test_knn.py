"""Unit tests for A1/knn.py. References: float64 broadcasting and torch.cdist, brute-force Python."""
import random

import pytest
import torch

import knn
from eecs598.testing import assert_close, requires_cifar
from pathlib import Path
from eecs598.reproduce import load_experiments

DISTANCE_FUNCTIONS = [knn.compute_distances_two_loops, knn.compute_distances_one_loop,
                      knn.compute_distances_no_loops]
# (num_train, num_test, trailing shape): images, plain vectors, odd shapes, single points.
SHAPES = [(7, 5, (3, 4, 4)), (11, 3, (13,)), (1, 4, (2, 3, 5)), (6, 1, ()), (9, 9, (1,))]


def reference_sq_l2(x_train, x_test):
    """Squared Euclidean distances by float64 broadcasting: (num_train, num_test)."""
    a = x_train.reshape(x_train.shape[0], -1).double()
    b = x_test.reshape(x_test.shape[0], -1).double()
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(dim=2)


def reference_l1(x_train, x_test):
    a = x_train.reshape(x_train.shape[0], -1).double()
    b = x_test.reshape(x_test.shape[0], -1).double()
    return (a[:, None, :] - b[None, :, :]).abs().sum(dim=2)


def brute_force_vote(dists, y_train, k):
    """Sort each column in Python, count the labels of the k nearest, ties -> smallest label."""
    y_pred = []
    for j in range(dists.shape[1]):
        column = dists[:, j].tolist()
        nearest = sorted(range(len(column)), key=lambda i: column[i])[:k]
        counts = {}
        for i in nearest:
            counts[int(y_train[i])] = counts.get(int(y_train[i]), 0) + 1
        best = max(counts.values())
        y_pred.append(min(label for label, c in counts.items() if c == best))
    return torch.tensor(y_pred)


@pytest.mark.parametrize("fn", DISTANCE_FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("num_train,num_test,trailing", SHAPES)
def test_distances_match_references(fn, num_train, num_test, trailing):
    torch.manual_seed(0)
    x_train = torch.randn(num_train, *trailing, dtype=torch.float64)
    x_test = torch.randn(num_test, *trailing, dtype=torch.float64)
    dists = fn(x_train, x_test)
    assert dists.shape == (num_train, num_test)
    assert dists.dtype == torch.float64
    assert_close(dists, reference_sq_l2(x_train, x_test), 1e-10, f"{fn.__name__} vs broadcasting")
    flat_train, flat_test = x_train.reshape(num_train, -1), x_test.reshape(num_test, -1)
    assert_close(dists, torch.cdist(flat_train, flat_test) ** 2, 1e-10, f"{fn.__name__} vs cdist**2")


@pytest.mark.parametrize("fn", DISTANCE_FUNCTIONS, ids=lambda f: f.__name__)
def test_distances_float32_cifar_like(fn):
    """Images in [0, 1] as the notebook uses them; float32 in, float32 out."""
    torch.manual_seed(1)
    x_train, x_test = torch.rand(6, 3, 32, 32), torch.rand(4, 3, 32, 32)
    dists = fn(x_train, x_test)
    assert dists.dtype == torch.float32
    assert_close(dists, reference_sq_l2(x_train, x_test), 1e-5, fn.__name__)


@pytest.mark.parametrize("fn", DISTANCE_FUNCTIONS, ids=lambda f: f.__name__)
def test_uint8_inputs_do_not_wrap_around(fn):
    x_train = torch.tensor([[0, 255], [10, 20]], dtype=torch.uint8)
    x_test = torch.tensor([[255, 0]], dtype=torch.uint8)
    dists = fn(x_train, x_test)
    assert dists.dtype.is_floating_point
    assert_close(dists, reference_sq_l2(x_train, x_test), 1e-6, fn.__name__)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_loops_identical_points_nonnegative_no_nan(dtype):
    """The expansion ||a||^2 - 2ab + ||b||^2 cancels for identical points: must stay >= 0."""
    torch.manual_seed(2)
    x = torch.rand(50, 3072, dtype=dtype) * 100 + 1000  # large norms: worst cancellation
    dists = knn.compute_distances_no_loops(x, x.clone())
    assert not torch.isnan(dists).any()
    assert (dists >= 0).all(), f"min distance {dists.min().item()}"
    assert not torch.isnan(dists.sqrt()).any()
    # The expansion's rounding error scales with the norms, not with the distance: check
    # |ours - reference| <= c * eps * (||a||^2 + ||b||^2), c = 100 (the observed error is ~4).
    reference = reference_sq_l2(x, x)
    norms = (x.double() ** 2).sum(dim=1)
    bound = 100 * torch.finfo(dtype).eps * (norms[:, None] + norms[None, :])
    err = (dists.double() - reference).abs()
    assert (err <= bound).all(), f"max error {err.max().item():.3e}, bound {bound.min().item():.3e}"


def test_distances_do_not_modify_inputs():
    torch.manual_seed(3)
    x_train, x_test = torch.randn(5, 2, 3), torch.randn(4, 2, 3)
    a, b = x_train.clone(), x_test.clone()
    for fn in DISTANCE_FUNCTIONS + [knn.compute_distances_l1]:
        fn(x_train, x_test)
    assert torch.equal(a, x_train) and torch.equal(b, x_test)


@pytest.mark.parametrize("num_train,num_test,trailing", SHAPES)
@pytest.mark.parametrize("max_elements", [None, 1, 37])
def test_l1_matches_reference(num_train, num_test, trailing, max_elements):
    """Small max_elements forces many blocks, including ragged last blocks."""
    torch.manual_seed(4)
    x_train = torch.randn(num_train, *trailing, dtype=torch.float64)
    x_test = torch.randn(num_test, *trailing, dtype=torch.float64)
    dists = knn.compute_distances_l1(x_train, x_test, max_elements=max_elements)
    assert dists.shape == (num_train, num_test)
    assert_close(dists, reference_l1(x_train, x_test), 1e-12, "L1 vs broadcasting")
    flat_train, flat_test = x_train.reshape(num_train, -1), x_test.reshape(num_test, -1)
    assert_close(dists, torch.cdist(flat_train, flat_test, p=1), 1e-10, "L1 vs cdist(p=1)")


def test_l1_identical_points_zero():
    x = torch.rand(8, 3, 4, 4)
    assert torch.equal(knn.compute_distances_l1(x, x).diagonal(), torch.zeros(8))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, 20])
def test_predict_labels_matches_brute_force(k):
    torch.manual_seed(5)
    num_train, num_test = 20, 30
    dists = torch.rand(num_train, num_test, dtype=torch.float64)  # distinct distances: no ties
    y_train = torch.randint(0, 4, (num_train,))
    y_pred = knn.predict_labels(dists, y_train, k=k)
    assert y_pred.shape == (num_test,) and y_pred.dtype == torch.int64
    assert torch.equal(y_pred, brute_force_vote(dists, y_train, k))


def test_predict_labels_ties_go_to_smallest_label():
    # Column 0: nearest two have labels 3 and 1 -> tie -> 1.
    # Column 1: nearest four have labels 2, 2, 0, 0 -> tie -> 0.
    # Column 2: nearest four have labels 0, 2, 2, 3 -> 2 wins outright.
    y_train = torch.tensor([3, 1, 2, 2, 0, 0])
    dists = torch.tensor([[0.1, 5.0, 9.0],
                          [0.2, 6.0, 2.0],
                          [9.0, 0.1, 3.0],
                          [9.1, 0.2, 4.0],
                          [9.2, 0.3, 1.0],
                          [9.3, 0.4, 8.0]])
    assert knn.predict_labels(dists, y_train, k=2)[0].item() == 1
    assert knn.predict_labels(dists, y_train, k=4)[1].item() == 0
    assert knn.predict_labels(dists, y_train, k=4)[2].item() == 2
    # Brute force agrees on the whole matrix for every k (no equal distances within a column).
    for k in range(1, 7):
        assert torch.equal(knn.predict_labels(dists, y_train, k=k), brute_force_vote(dists, y_train, k))


def test_predict_labels_random_ties():
    """Many small label sets with few classes: lots of vote ties, checked against brute force."""
    gen = torch.Generator().manual_seed(6)
    for _ in range(20):
        num_train = int(torch.randint(2, 12, (1,), generator=gen))
        dists = torch.randperm(num_train * 5, generator=gen)[: num_train * 5].reshape(num_train, 5).double()
        y_train = torch.randint(0, 3, (num_train,), generator=gen)
        for k in range(1, num_train + 1):
            assert torch.equal(knn.predict_labels(dists, y_train, k=k),
                               brute_force_vote(dists, y_train, k)), (dists, y_train, k)


def test_predict_labels_rejects_bad_k():
    with pytest.raises(ValueError):
        knn.predict_labels(torch.rand(3, 2), torch.tensor([0, 1, 0]), k=4)
    with pytest.raises(ValueError):
        knn.predict_labels(torch.rand(3, 2), torch.tensor([0, 1, 0]), k=0)


def _clusters():
    """Two well-separated clusters in 2-D, plus one odd point of class 1 inside cluster 0."""
    x_train = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5],  # class 0
                            [10.0, 10.0], [10.0, 11.0], [11.0, 10.0],        # class 1
                            [0.2, 0.1]])                                     # class 1 outlier
    y_train = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    x_test = torch.tensor([[0.21, 0.11], [10.5, 10.4], [0.9, 0.1], [-1.0, -1.0]])
    return x_train, y_train, x_test


@pytest.mark.parametrize("fn", DISTANCE_FUNCTIONS + [knn.compute_distances_l1], ids=lambda f: f.__name__)
def test_distances_with_no_test_or_no_training_points(fn):
    """An empty side gives an empty matrix of the right shape, not a reshape error."""
    x = torch.randn(3, 2, 4)
    assert fn(x, x[:0]).shape == (3, 0) and fn(x[:0], x).shape == (0, 3)


def test_classifier_predicts_nothing_for_no_test_points():
    x_train, y_train, x_test = _clusters()
    for metric in ("l2", "l1"):
        y_pred = knn.KnnClassifier(x_train, y_train, metric=metric).predict(x_test[:0], k=1)
        assert y_pred.shape == (0,) and y_pred.dtype == torch.int64


def test_classifier_predict_known_answers():
    x_train, y_train, x_test = _clusters()
    clf = knn.KnnClassifier(x_train, y_train)
    # k=1: the first test point sits on the outlier.
    assert clf.predict(x_test, k=1).tolist() == [1, 1, 0, 0]
    # k=3: the outlier is outvoted.
    assert clf.predict(x_test, k=3).tolist() == [0, 1, 0, 0]
    # Tiny blocks give the same answers (chunking over test points).
    assert clf.predict(x_test, k=3, max_elements=1).tolist() == [0, 1, 0, 0]
    assert knn.KnnClassifier(x_train, y_train, metric="l1").predict(x_test, k=3).tolist() == [0, 1, 0, 0]


def test_classifier_image_shaped_and_chunked_matches_direct():
    torch.manual_seed(7)
    x_train, x_test = torch.rand(40, 3, 4, 4), torch.rand(25, 3, 4, 4)
    y_train = torch.randint(0, 5, (40,))
    for metric, reference in (("l2", reference_sq_l2), ("l1", reference_l1)):
        clf = knn.KnnClassifier(x_train, y_train, metric=metric)
        expected = brute_force_vote(reference(x_train, x_test), y_train, 5)
        for max_elements in (40, 7 * 40, knn.MAX_DIST_ELEMENTS):
            assert torch.equal(clf.predict(x_test, k=5, max_elements=max_elements), expected), metric


def test_classifier_rejects_unknown_metric():
    with pytest.raises(ValueError):
        knn.KnnClassifier(torch.rand(2, 3), torch.tensor([0, 1]), metric="cosine")


def test_check_accuracy_percentage_and_message(capsys):
    x_train, y_train, x_test = _clusters()
    y_test = torch.tensor([0, 1, 0, 1])  # k=3 predicts [0, 1, 0, 0]: 3 of 4 correct
    clf = knn.KnnClassifier(x_train, y_train)
    acc = clf.check_accuracy(x_test, y_test, k=3)
    assert acc == pytest.approx(75.0)
    assert capsys.readouterr().out.strip() == "Got 3 / 4 correct; accuracy is 75.00%"
    assert clf.check_accuracy(x_test, y_test, k=3, quiet=True) == pytest.approx(75.0)
    assert capsys.readouterr().out == ""


def brute_force_cross_validate(x_train, y_train, num_folds, k_choices):
    """Folds as consecutive slices of torch.chunk's sizes; brute-force distances and votes."""
    n = x_train.shape[0]
    size = -(-n // num_folds)
    bounds = [(s, min(s + size, n)) for s in range(0, n, size)]
    result = {k: [] for k in k_choices}
    for lo, hi in bounds:
        keep = [i for i in range(n) if not lo <= i < hi]
        dists = reference_sq_l2(x_train[keep], x_train[lo:hi])
        for k in k_choices:
            pred = brute_force_vote(dists, y_train[keep], k)
            result[k].append(100.0 * (pred == y_train[lo:hi]).sum().item() / (hi - lo))
    return result


@pytest.mark.parametrize("num_train,num_folds", [(30, 5), (23, 4), (12, 3)])
def test_cross_validate_matches_brute_force(num_train, num_folds):
    torch.manual_seed(8)
    x_train = torch.randn(num_train, 2, 3, dtype=torch.float64)
    y_train = torch.randint(0, 3, (num_train,))
    k_choices = [1, 2, 3, 5]
    result = knn.knn_cross_validate(x_train, y_train, num_folds=num_folds, k_choices=k_choices)
    assert list(result) == k_choices
    assert all(len(v) == len(torch.chunk(x_train, num_folds)) for v in result.values())
    expected = brute_force_cross_validate(x_train, y_train, num_folds, k_choices)
    for k in k_choices:
        assert result[k] == pytest.approx(expected[k]), k


def test_cross_validate_default_k_choices():
    torch.manual_seed(9)
    x_train, y_train = torch.rand(250, 4), torch.randint(0, 10, (250,))
    result = knn.knn_cross_validate(x_train, y_train)
    assert list(result) == [1, 3, 5, 8, 10, 12, 15, 20, 50, 100]
    assert all(len(v) == 5 and all(0 <= a <= 100 for a in v) for v in result.values())


def test_get_best_k():
    assert knn.knn_get_best_k({1: [10.0, 20.0], 3: [30.0, 30.0], 5: [29.0, 29.0]}) == 3
    # Equal means: the smallest k wins, whatever the dict order.
    assert knn.knn_get_best_k({8: [28.0, 28.0], 5: [27.0, 29.0], 10: [20.0, 20.0]}) == 5
    assert knn.knn_get_best_k({100: [50.0], 1: [50.0], 20: [50.0]}) == 1


def test_get_best_k_ties_up_to_float_rounding():
    """Equal numbers of correct predictions per k can give means that differ in the last bit
    (found by a random search over 5 folds of 1,000): the tie must still go to the smaller k."""
    a = [100.0 * c / 1000 for c in (258, 298, 256, 289, 266)]
    b = [100.0 * c / 1000 for c in (258, 295, 256, 289, 269)]  # the same total, 1,367 correct
    assert sum(a) / 5 != sum(b) / 5 and sum(a) / 5 < sum(b) / 5  # the rounding this guards against
    assert knn.knn_get_best_k({3: a, 5: b}) == 3
    assert knn.knn_get_best_k({5: b, 3: a, 8: [27.0] * 5}) == 3
    # ...but one more correct prediction in one fold (a mean 0.02 points higher) is not a tie.
    c = [100.0 * c / 1000 for c in (258, 298, 256, 289, 267)]
    assert knn.knn_get_best_k({3: a, 5: c}) == 5 and knn.knn_get_best_k({5: c, 3: a}) == 5


def test_cross_validate_rejects_a_fold_count_torch_chunk_cannot_make():
    x, y = torch.rand(10, 2), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match="5 folds, not 6"):
        knn.knn_cross_validate(x, y, num_folds=6, k_choices=[1])


def test_get_best_k_against_brute_force():
    rng = random.Random(10)
    for _ in range(50):
        ks = rng.sample([1, 3, 5, 8, 10, 12, 15, 20, 50, 100], 5)
        table = {k: [float(rng.choice([25, 27, 28, 30])) for _ in range(3)] for k in ks}
        means = {k: sum(v) / len(v) for k, v in table.items()}
        best = max(means.values())
        assert knn.knn_get_best_k(table) == min(k for k in ks if means[k] == best)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(11)
    x_train, x_test = torch.rand(50, 3, 8, 8), torch.rand(20, 3, 8, 8)
    y_train = torch.randint(0, 10, (50,))
    for fn in DISTANCE_FUNCTIONS + [knn.compute_distances_l1]:
        d = fn(x_train.cuda(), x_test.cuda())
        assert d.is_cuda
        assert_close(d.cpu(), fn(x_train, x_test), 1e-5, fn.__name__)
    pred = knn.KnnClassifier(x_train.cuda(), y_train.cuda()).predict(x_test.cuda(), k=3)
    assert pred.is_cuda


@requires_cifar
def test_classifier_on_cifar_subset():
    from eecs598.data import cifar10
    x_train, y_train, x_test, y_test = cifar10(500, 100)
    acc = knn.KnnClassifier(x_train, y_train).check_accuracy(x_test, y_test, k=1, quiet=True)
    assert 10.0 < acc <= 100.0, acc


def test_course_protocol_tests_at_the_cross_validated_k(monkeypatch):
    monkeypatch.setenv("EECS598_QUICK", "1")
    exp = load_experiments(Path(__file__).resolve().parents[2] / "A1")
    g = torch.Generator().manual_seed(0)
    xtr, ytr = torch.rand(500, 3, 4, 4, generator=g), torch.randint(3, (500,), generator=g)
    xte, yte = torch.rand(100, 3, 4, 4, generator=g), torch.randint(3, (100,), generator=g)
    monkeypatch.setattr(exp, "load_data", lambda n_tr, n_te, device=None:
                        (xtr[:n_tr], ytr[:n_tr], xte[:n_te], yte[:n_te], "synthetic"))
    monkeypatch.setattr(exp.knn, "knn_get_best_k", lambda table: 7)
    recs = {r["metric"]: r for r in exp.course_protocol("cpu", k_choices=[1, 3, 7])}
    assert recs["knn_cv_best_k"]["value"] == 7
    expected = knn.KnnClassifier(xtr, ytr).check_accuracy(xte, yte, k=7, quiet=True)
    assert recs["knn_test_accuracy_subset"]["value"] == pytest.approx(expected)
    assert recs["knn_test_accuracy_subset"]["details"]["k"] == 7



@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8])
def test_predict_labels_takes_any_integer_label_dtype(dtype):
    """As the course's bincount vote: int32 or uint8 labels vote like int64 ones."""
    dists = torch.rand(7, 5, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 1, 2, 0, 2, 1])
    expected = knn.predict_labels(dists, labels, k=3)
    assert torch.equal(knn.predict_labels(dists, labels.to(dtype), k=3), expected)


def test_check_accuracy_without_test_samples_is_a_clear_error():
    classifier = knn.KnnClassifier(torch.rand(4, 3), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="at least one test sample"):
        classifier.check_accuracy(torch.rand(0, 3), torch.zeros(0, dtype=torch.long), quiet=True)


# --- memory bounds and labels beyond 9 (gaps found by mutation testing) -----------------

def test_predict_builds_no_distance_block_larger_than_max_elements(monkeypatch):
    """KnnClassifier.predict's contract: at most `max_elements` distances at once (50,000 x
    10,000 CIFAR images would otherwise be a 2 GB matrix); every test point still predicted once."""
    blocks = []
    real = knn.METRICS["l2"]

    def recording(x_train, x_test):
        dists = real(x_train, x_test)
        blocks.append(tuple(dists.shape))
        return dists
    monkeypatch.setitem(knn.METRICS, "l2", recording)
    g = torch.Generator().manual_seed(0)
    x_train, x_test = torch.randn(200, 3, 8, 8, generator=g), torch.randn(50, 3, 8, 8, generator=g)
    y_train = torch.randint(10, (200,), generator=g)
    y_pred = knn.KnnClassifier(x_train, y_train).predict(x_test, k=3, max_elements=1000)
    assert len(blocks) > 1 and all(n * m <= 1000 for n, m in blocks)
    assert sum(m for _, m in blocks) == 50 and y_pred.shape == (50,)


def test_l1_distances_build_no_difference_tensor_larger_than_max_elements():
    """compute_distances_l1's contract: the (train block, test block, D) differences it builds
    stay within `max_elements` (the notebook's 5,000 x 500 CIFAR L1 cell would otherwise need
    30 GB); the result is still exact."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestDifference(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket.__name__ == "sub" and isinstance(out, torch.Tensor):
                self.largest = max(self.largest, out.numel())
            return out
    g = torch.Generator().manual_seed(1)
    x_train, x_test = torch.randn(200, 3, 8, 8, generator=g), torch.randn(50, 3, 8, 8, generator=g)
    with LargestDifference() as rec:
        dists = knn.compute_distances_l1(x_train, x_test, max_elements=16384)
    assert 0 < rec.largest <= 16384
    ref = (x_train.reshape(200, 1, -1) - x_test.reshape(1, 50, -1)).abs().sum(dim=2)
    assert_close(dists, ref, 1e-5, "blocked L1")


def test_predict_labels_takes_labels_beyond_nine():
    """Labels are any integers in [0, num_classes): 12 wins the vote, no fixed 10 classes."""
    dists = torch.tensor([[0.1], [0.2], [0.3]])
    assert knn.predict_labels(dists, torch.tensor([12, 3, 12]), k=3).tolist() == [12]
