"""k-Nearest Neighbor classifier, written with plain tensor operations.

Shapes used throughout:
  x_train: (num_train, D1, ..., Dk) samples; every sample is flattened to D = D1*...*Dk values.
  x_test:  (num_test, D1, ..., Dk), the same trailing shape as x_train.
  dists:   (num_train, num_test); dists[i, j] is the distance between x_train[i] and x_test[j].
  y_train: (num_train,) int64 labels in [0, num_classes).

All functions are device- and dtype-agnostic: results live on the inputs' device, in the
inputs' floating dtype (integer inputs are computed in float32). torch.norm, torch.dist,
torch.cdist and torch.nn are not used.
"""
import math

import torch


def hello():
    """Smoke test: check that this file is the one the notebook imports."""
    print("Hello from knn.py!")


# Largest distance matrix (in elements) that predict() materializes at once:
# 2**25 float32 values = 128 MiB, so 50,000 train x 10,000 test is done in chunks of 671 test points.
MAX_DIST_ELEMENTS = 2 ** 25


def _float_dtype(*tensors):
    """The floating dtype distances are computed in: the promoted dtype of the inputs if it is
    floating, else float32 (so uint8 images do not wrap around when subtracted)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype if dtype.is_floating_point else torch.float32


def _as_rows(x, dtype):
    """(N, D1, ..., Dk) samples as an (N, D1 * ... * Dk) matrix of `dtype` (N may be 0)."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:])).to(dtype)


def compute_distances_two_loops(x_train, x_test):
    """Squared Euclidean distances with a naive double loop over training and test points.

    Inputs:
      x_train: (num_train, D1, ..., Dk) tensor of training samples.
      x_test:  (num_test, D1, ..., Dk) tensor of test samples (same trailing shape).
    Returns:
      dists: (num_train, num_test) tensor; dists[i, j] = sum((x_train[i] - x_test[j]) ** 2),
      the SQUARED Euclidean distance (no square root).

    Use only basic arithmetic, no torch.norm / torch.dist / torch.cdist / torch.nn.
    """
    num_train, num_test = x_train.shape[0], x_test.shape[0]
    dtype = _float_dtype(x_train, x_test)
    dists = torch.zeros(num_train, num_test, dtype=dtype, device=x_train.device)
    ### BEGIN SOLUTION
    ### HINT: flatten each sample (_as_rows), then for every (i, j) sum the squared differences.
    a = _as_rows(x_train, dtype)
    b = _as_rows(x_test, dtype)
    for i in range(num_train):
        for j in range(num_test):
            diff = a[i] - b[j]
            dists[i, j] = (diff * diff).sum()
    ### END SOLUTION
    return dists


def compute_distances_one_loop(x_train, x_test):
    """Squared Euclidean distances with a single loop over the training points.

    Inputs / returns as compute_distances_two_loops: dists is (num_train, num_test),
    squared distances. Broadcast one training sample against all test samples per iteration.
    """
    num_train, num_test = x_train.shape[0], x_test.shape[0]
    dtype = _float_dtype(x_train, x_test)
    dists = torch.zeros(num_train, num_test, dtype=dtype, device=x_train.device)
    ### BEGIN SOLUTION
    ### HINT: for row i, broadcast a[i] of shape (D,) against b of shape (num_test, D).
    a = _as_rows(x_train, dtype)
    b = _as_rows(x_test, dtype)
    for i in range(num_train):
        diff = b - a[i]
        dists[i] = (diff * diff).sum(dim=1)
    ### END SOLUTION
    return dists


def compute_distances_no_loops(x_train, x_test):
    """Squared Euclidean distances with no Python loop.

    Inputs / returns as compute_distances_two_loops: dists is (num_train, num_test),
    squared distances. Expand ||a - b||^2 = ||a||^2 - 2 a.b + ||b||^2, so that the work is
    one matrix multiply plus two broadcast additions. Rounding can make the expansion
    slightly negative for (nearly) identical points; clamp it at 0 so that no distance is
    negative (and a later square root could never produce NaN). The rounding error is of
    order eps * (||a||^2 + ||b||^2), so use float64 when distances are tiny relative to norms.
    Memory: O(num_train * num_test) for the result, nothing of size num_train * num_test * D.
    """
    num_train, num_test = x_train.shape[0], x_test.shape[0]
    dtype = _float_dtype(x_train, x_test)
    ### BEGIN SOLUTION
    ### HINT: the squared norms of the rows of a (num_train,) and b (num_test,), and a @ b.T (num_train, num_test).
    a = _as_rows(x_train, dtype)
    b = _as_rows(x_test, dtype)
    # einsum sums the products row by row without a (num_train, D) temporary like (a * a)
    a_sq = torch.einsum("ij,ij->i", a, a)
    b_sq = torch.einsum("ij,ij->i", b, b)
    dists = torch.addmm(a_sq[:, None], a, b.T, beta=1, alpha=-2)  # ||a||^2 - 2 a.b
    dists += b_sq[None, :]
    dists.clamp_(min=0)
    ### END SOLUTION
    return dists


def compute_distances_l1(x_train, x_test, max_elements=None):
    """L1 (Manhattan) distances, computed in memory-bounded blocks (beyond the course).

    Inputs:
      x_train: (num_train, D1, ..., Dk); x_test: (num_test, D1, ..., Dk).
      max_elements: the largest (train block, test block, D) difference tensor built at once;
        None: 2**20 on CPU (4 MiB in float32) and 2**27 on other devices.
    Returns:
      dists: (num_train, num_test); dists[i, j] = sum(|x_train[i] - x_test[j]|).
    There is no matrix-multiply shortcut for L1, so this costs num_train * num_test * D
    elementwise operations (50,000 x 10,000 CIFAR images: 1.5e12) but never more memory than
    the result plus one block.
    """
    num_train, num_test = x_train.shape[0], x_test.shape[0]
    dtype = _float_dtype(x_train, x_test)
    dists = torch.empty(num_train, num_test, dtype=dtype, device=x_train.device)
    if max_elements is None:
        max_elements = 2 ** 20 if x_train.device.type == "cpu" else 2 ** 27
    ### BEGIN SOLUTION
    ### HINT: loop over blocks of test and training rows; per block, broadcast, abs, sum over D.
    a = _as_rows(x_train, dtype)
    b = _as_rows(x_test, dtype)
    dim = max(1, a.shape[1])
    pairs = max(1, max_elements // dim)  # (train, test) pairs per block
    test_block = max(1, min(num_test, int(pairs ** 0.5)))
    train_block = max(1, pairs // test_block)
    for j in range(0, num_test, test_block):
        b_j = b[j:j + test_block]
        for i in range(0, num_train, train_block):
            diff = a[i:i + train_block, None, :] - b_j[None, :, :]
            diff.abs_()
            dists[i:i + train_block, j:j + test_block] = diff.sum(dim=2)
    ### END SOLUTION
    return dists


METRICS = {"l2": compute_distances_no_loops, "l1": compute_distances_l1}


def predict_labels(dists, y_train, k=1):
    """Predict a label for every test point by a majority vote among its k nearest neighbours.

    Inputs:
      dists: (num_train, num_test) distances (any monotone distance: squared L2, L1, ...).
      y_train: (num_train,) integer labels (int64, or any integer dtype) in [0, num_classes).
      k: number of neighbours that vote, 1 <= k <= num_train.
    Returns:
      y_pred: (num_test,) int64 tensor on dists.device. A tie in the vote goes to the
      smallest label. (Which of several equally distant training points count among the
      k nearest is unspecified.)
    Vectorized: no Python loop over test points.
    """
    num_train, num_test = dists.shape
    if not 1 <= k <= num_train:
        raise ValueError(f"k must be in [1, num_train={num_train}], got {k}")
    ### BEGIN SOLUTION
    ### HINT: topk(largest=False) along dim 0, gather the labels, count votes per class, argmax.
    y_train = y_train.to(dists.device, torch.int64)  # scatter_add_ indexes with int64
    nearest = dists.topk(k, dim=0, largest=False).indices  # (k, num_test)
    votes = y_train[nearest]  # (k, num_test)
    num_classes = int(y_train.max().item()) + 1
    counts = torch.zeros(num_classes, num_test, dtype=torch.int64, device=dists.device)
    counts.scatter_add_(0, votes, torch.ones_like(votes))
    y_pred = counts.argmax(dim=0)  # argmax returns the first maximum: ties -> smallest label
    ### END SOLUTION
    return y_pred


class KnnClassifier:
    """k-nearest-neighbour classifier: memorizes the training images and labels, and predicts
    each test image's label by a vote of its k nearest training images (squared L2 or L1)."""

    def __init__(self, x_train, y_train, metric="l2"):
        """Memorize the training data.

        Inputs:
          x_train: (num_train, D1, ..., Dk) training samples.
          y_train: (num_train,) int64 labels.
          metric: "l2" (squared Euclidean, the course's) or "l1" (Manhattan, beyond the course).
        """
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
        self.metric = metric
        ### BEGIN SOLUTION
        ### HINT: store x_train and y_train on self.
        self.x_train = x_train
        self.y_train = y_train
        ### END SOLUTION

    def predict(self, x_test, k=1, max_elements=MAX_DIST_ELEMENTS):
        """Predict labels of x_test (num_test, D1, ..., Dk) -> (num_test,) int64.

        The distance matrix is built for a block of test points at a time, at most
        `max_elements` entries (so 50,000 train x 10,000 test never holds a 2 GB matrix).
        Predictions are on the training data's device.
        """
        ### BEGIN SOLUTION
        ### HINT: for blocks of test points: distances to all training points, then predict_labels.
        distance = METRICS[self.metric]
        num_train, num_test = self.x_train.shape[0], x_test.shape[0]
        block = max(1, max_elements // max(1, num_train))
        y_pred = torch.empty(num_test, dtype=torch.int64, device=self.x_train.device)
        for start in range(0, num_test, block):
            chunk = x_test[start:start + block].to(self.x_train.device)
            dists = distance(self.x_train, chunk)
            y_pred[start:start + block] = predict_labels(dists, self.y_train, k=k)
        ### END SOLUTION
        return y_pred

    def check_accuracy(self, x_test, y_test, k=1, quiet=False):
        """Accuracy of predict(x_test, k) against y_test, as a percentage in [0, 100].

        Prints "Got a / b correct; accuracy is p%" unless quiet.
        """
        num_samples = x_test.shape[0]
        if num_samples == 0:
            raise ValueError("check_accuracy needs at least one test sample")
        y_test_pred = self.predict(x_test, k=k)
        num_correct = int((y_test.to(y_test_pred.device) == y_test_pred).sum().item())
        accuracy = 100.0 * num_correct / num_samples
        msg = f"Got {num_correct} / {num_samples} correct; accuracy is {accuracy:.2f}%"
        if not quiet:
            print(msg)
        return accuracy


def knn_cross_validate(x_train, y_train, num_folds=5, k_choices=None):
    """Cross-validate k: split the training data into `num_folds` folds with torch.chunk;
    for each fold, train on the others and measure the accuracy on it, for every k.

    Inputs:
      x_train: (num_train, D1, ..., Dk); y_train: (num_train,) int64.
      num_folds: number of folds (torch.chunk: the last fold may be smaller).
      k_choices: the k to try; None -> [1, 3, 5, 8, 10, 12, 15, 20, 50, 100].
    Returns:
      k_to_accuracies: {k: [accuracy (%) on fold 0, fold 1, ...]} for each k in k_choices.
    Each fold's distance matrix is computed once and every k is evaluated from it.
    """
    if k_choices is None:
        k_choices = [1, 3, 5, 8, 10, 12, 15, 20, 50, 100]
    num_chunks = len(torch.chunk(torch.empty(x_train.shape[0]), num_folds))
    if num_chunks != num_folds:  # e.g. 10 samples: torch.chunk makes 5 chunks of 2, not 6 folds
        raise ValueError(f"torch.chunk splits {x_train.shape[0]} samples into {num_chunks} folds, "
                         f"not {num_folds}: choose another num_folds")
    ### BEGIN SOLUTION
    ### HINT: torch.chunk into folds; per fold one distance matrix, then predict_labels for every k.
    x_folds = torch.chunk(x_train, num_folds)
    y_folds = torch.chunk(y_train, num_folds)
    k_to_accuracies = {k: [] for k in k_choices}
    for i in range(len(x_folds)):
        x_fold_train = torch.cat(x_folds[:i] + x_folds[i + 1:])
        y_fold_train = torch.cat(y_folds[:i] + y_folds[i + 1:])
        x_val, y_val = x_folds[i], y_folds[i].to(x_train.device)
        dists = compute_distances_no_loops(x_fold_train, x_val)
        for k in k_choices:
            y_pred = predict_labels(dists, y_fold_train, k=k)
            num_correct = int((y_pred == y_val).sum().item())
            k_to_accuracies[k].append(100.0 * num_correct / x_val.shape[0])
    ### END SOLUTION
    return k_to_accuracies


def knn_get_best_k(k_to_accuracies):
    """The k with the highest mean accuracy over the folds; a tie goes to the smallest k.
    Means equal up to float rounding tie (accuracies such as 100 * 263 / 1000 sum to values
    that differ in the last bit for the same number of correct predictions).

    Input: {k: [accuracy per fold]} as returned by knn_cross_validate. Returns an int.
    """
    ### BEGIN SOLUTION
    ### HINT: mean accuracy per k; the highest mean wins, the smallest k on a tie (compare the
    ### means with a small tolerance: float sums of equal counts can differ in the last bit).
    means = {k: sum(accs) / len(accs) for k, accs in k_to_accuracies.items()}
    best = max(means.values())
    best_k = min(k for k, m in means.items() if math.isclose(m, best, rel_tol=1e-12, abs_tol=1e-9))
    ### END SOLUTION
    return best_k
