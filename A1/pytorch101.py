"""A1 part 1: PyTorch 101. Tensor creation, indexing, reshaping, reductions, vectorization.

Every function below is small and is checked by `pytorch101.ipynb` and by
`tests/A1/test_pytorch101.py`. Unless a docstring says otherwise, a function must not
modify its input tensor(s) and should not use explicit Python loops over tensor elements.
"""
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor


def hello():
    """Smoke test: check that this file is importable from the notebook."""
    print("Hello from pytorch101.py!")


# --------------------------------------------------------------------------------------
# Tensor basics
# --------------------------------------------------------------------------------------

def create_sample_tensor() -> Tensor:
    """Return a tensor of shape (3, 2), dtype float32, filled with zeros, except for
    element (0, 1) which is 10 and element (1, 0) which is 100.

    Returns:
        x: Tensor of shape (3, 2):
            [[  0., 10.],
             [100.,  0.],
             [  0.,  0.]]
    """
    x = None
    ### BEGIN SOLUTION
    ### HINT: create a (3, 2) tensor of zeros, then set two elements by indexing.
    x = torch.zeros(3, 2)
    x[0, 1] = 10
    x[1, 0] = 100
    ### END SOLUTION
    return x


def mutate_tensor(x: Tensor, indices: List[Tuple[int, ...]], values: List[float]) -> Tensor:
    """Mutate `x` in place: for every k, set x[indices[k]] = values[k].

    If the same index appears several times in `indices`, the last value wins.

    Args:
        x: Tensor of any shape.
        indices: list of N index tuples [(i0, j0), (i1, j1), ...], each with one entry
            per dimension of x.
        values: list of N numbers [v0, v1, ...].

    Returns:
        The input tensor x (the same object, modified in place).
    """
    ### BEGIN SOLUTION
    ### HINT: loop over zip(indices, values) and assign with x[index] = value.
    for index, value in zip(indices, values):
        x[tuple(index)] = value
    ### END SOLUTION
    return x


def count_tensor_elements(x: Tensor) -> int:
    """Count the number of scalar elements of `x` from its shape.

    Do not use torch.numel or x.numel(): multiply the sizes in x.shape yourself.
    A 0-dimensional tensor has 1 element; any zero-sized dimension gives 0.

    Args:
        x: Tensor of any shape.

    Returns:
        num_elements: Python int, the number of scalars in x.
    """
    num_elements = None
    ### BEGIN SOLUTION
    ### HINT: x.shape is a tuple of ints; multiply its entries together.
    num_elements = 1
    for size in x.shape:
        num_elements *= size
    ### END SOLUTION
    return num_elements


def create_tensor_of_pi(M: int, N: int) -> Tensor:
    """Return a float32 tensor of shape (M, N) filled with the value 3.14.

    Args:
        M, N: non-negative ints, the shape of the result.

    Returns:
        x: Tensor of shape (M, N), dtype torch.float32, every element 3.14.
    """
    x = None
    ### BEGIN SOLUTION
    ### HINT: torch.full
    x = torch.full((M, N), 3.14, dtype=torch.float32)
    ### END SOLUTION
    return x


def multiples_of_ten(start: int, stop: int) -> Tensor:
    """Return every multiple of ten in [start, stop] (both ends inclusive), in increasing order.

    Args:
        start, stop: ints (may be negative).

    Returns:
        x: 1-D tensor of dtype torch.float64. If the range holds no multiple of ten
           (including start > stop), an empty tensor of shape (0,) and dtype float64.
    """
    x = None
    ### BEGIN SOLUTION
    ### HINT: find the first multiple of ten >= start, then use torch.arange with step 10.
    first = -(-start // 10) * 10  # ceil(start / 10) * 10, exact for negative ints too
    if first > stop:
        x = torch.zeros(0, dtype=torch.float64)
    else:
        x = torch.arange(first, stop + 1, 10, dtype=torch.float64)
    ### END SOLUTION
    return x


# --------------------------------------------------------------------------------------
# Indexing
# --------------------------------------------------------------------------------------

def slice_indexing_practice(x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Extract several sub-tensors of a 2-D tensor with slice indexing.

    Each result is built with a single slice-indexing operation and then cloned, so that
    it is independent of x (writing to a result does not change x, and vice versa).
    The input tensor must not be modified.

    Args:
        x: Tensor of shape (M, N) with M >= 3 and N >= 5.

    Returns:
        A tuple of:
        - last_row: Tensor of shape (N,), the last row of x (1-D).
        - third_col: Tensor of shape (M, 1), the third column of x (kept 2-D).
        - first_two_rows_three_cols: Tensor of shape (2, 3), the first two rows and
          first three columns of x.
        - even_rows_odd_cols: Tensor of shape (ceil(M/2), floor(N/2)), the elements of x
          in even-numbered rows (0, 2, ...) and odd-numbered columns (1, 3, ...).
    """
    assert x.shape[0] >= 3
    assert x.shape[1] >= 5
    last_row = None
    third_col = None
    first_two_rows_three_cols = None
    even_rows_odd_cols = None
    ### BEGIN SOLUTION
    ### HINT: an integer index drops a dimension, a slice (even of length 1) keeps it.
    last_row = x[-1, :].clone()
    third_col = x[:, 2:3].clone()
    first_two_rows_three_cols = x[:2, :3].clone()
    even_rows_odd_cols = x[::2, 1::2].clone()
    ### END SOLUTION
    out = (
        last_row,
        third_col,
        first_two_rows_three_cols,
        even_rows_odd_cols,
    )
    return out


def slice_assignment_practice(x: Tensor) -> Tensor:
    """Mutate the first 4 rows and first 6 columns of `x` in place so that they equal

        [[0, 1, 2, 2, 2, 2],
         [0, 1, 2, 2, 2, 2],
         [3, 4, 3, 4, 5, 5],
         [3, 4, 3, 4, 5, 5]]

    All other elements of x stay unchanged. Only slice assignments of an integer
    (x[slice, slice] = int) may be used, at most 6 of them.

    Args:
        x: Tensor of shape (M, N) with M >= 4 and N >= 6.

    Returns:
        The input tensor x (the same object, modified in place).
    """
    ### BEGIN SOLUTION
    ### HINT: slices with a step (start:stop:step) select every other column.
    x[:2, 0] = 0
    x[:2, 1] = 1
    x[:2, 2:6] = 2
    x[2:4, 0:4:2] = 3
    x[2:4, 1:4:2] = 4
    x[2:4, 4:6] = 5
    ### END SOLUTION
    return x


def shuffle_cols(x: Tensor) -> Tensor:
    """Re-order the columns of x with a single integer-array indexing operation.

    The input tensor must not be modified.

    Args:
        x: Tensor of shape (M, N) with N >= 3.

    Returns:
        y: Tensor of shape (M, 4) whose columns are x's columns [0, 0, 2, 1]:
           the first two columns of y copy the first column of x, the third column of y
           is the third column of x, the fourth column of y is the second column of x.
    """
    y = None
    ### BEGIN SOLUTION
    ### HINT: index the column dimension with a list of column indices.
    y = x[:, [0, 0, 2, 1]]
    ### END SOLUTION
    return y


def reverse_rows(x: Tensor) -> Tensor:
    """Reverse the order of the rows of x with a single indexing operation (no torch.flip).

    The input tensor must not be modified.

    Args:
        x: Tensor of shape (M, N).

    Returns:
        y: Tensor of shape (M, N), y[i] == x[M - 1 - i].
    """
    y = None
    ### BEGIN SOLUTION
    ### HINT: build the row indices M-1, M-2, ..., 0 with torch.arange.
    M = x.shape[0]
    y = x[torch.arange(M - 1, -1, -1, device=x.device)]
    ### END SOLUTION
    return y


def take_one_elem_per_col(x: Tensor) -> Tensor:
    """Pick one element from each of the first three columns of x, with a single
    integer-array indexing operation.

    The input tensor must not be modified.

    Args:
        x: Tensor of shape (M, N) with M >= 4 and N >= 3.

    Returns:
        y: Tensor of shape (3,) with
           y[0] = x[1, 0] (second element of the first column),
           y[1] = x[0, 1] (first element of the second column),
           y[2] = x[3, 2] (fourth element of the third column).
    """
    y = None
    ### BEGIN SOLUTION
    ### HINT: x[rows, cols] with two index lists of equal length.
    y = x[[1, 0, 3], [0, 1, 2]]
    ### END SOLUTION
    return y


def make_one_hot(x: List[int]) -> Tensor:
    """Build a tensor of one-hot vectors from a list of non-negative Python ints.

    Args:
        x: list of N ints, each >= 0 (N >= 1).

    Returns:
        y: Tensor of shape (N, C) with C = 1 + max(x), dtype torch.float32, where
           y[n, x[n]] = 1 and every other element is 0.
    """
    y = None
    ### BEGIN SOLUTION
    ### HINT: make zeros of shape (N, C), then set y[arange(N), x] = 1 in one assignment.
    N, C = len(x), 1 + max(x)
    y = torch.zeros(N, C, dtype=torch.float32)
    y[torch.arange(N), torch.tensor(x, dtype=torch.long)] = 1
    ### END SOLUTION
    return y


def sum_positive_entries(x: Tensor) -> int:
    """Return the sum of all strictly positive entries of x, using one boolean mask.

    Args:
        x: Tensor of any shape with dtype torch.int64.

    Returns:
        pos_sum: Python int, the sum of the positive values of x (0 if there are none).
    """
    pos_sum = None
    ### BEGIN SOLUTION
    ### HINT: x[x > 0] selects the positive entries; .item() turns a 0-D tensor into a number.
    pos_sum = x[x > 0].sum().item()
    ### END SOLUTION
    return pos_sum


# --------------------------------------------------------------------------------------
# Reshaping and reductions
# --------------------------------------------------------------------------------------

def reshape_practice(x: Tensor) -> Tensor:
    """Reshape a (24,) tensor into (3, 8) with reshaping operations only
    (view, reshape, transpose, permute, contiguous, ...), so that

        y = [[x[0], x[1], x[2],  x[3],  x[12], x[13], x[14], x[15]],
             [x[4], x[5], x[6],  x[7],  x[16], x[17], x[18], x[19]],
             [x[8], x[9], x[10], x[11], x[20], x[21], x[22], x[23]]]

    The input tensor must not be modified.

    Args:
        x: Tensor of shape (24,).

    Returns:
        y: Tensor of shape (3, 8) as above.
    """
    y = None
    ### BEGIN SOLUTION
    ### HINT: view x as (2, 3, 4), swap the first two dimensions, then flatten to (3, 8).
    y = x.view(2, 3, 4).transpose(0, 1).reshape(3, 8)
    ### END SOLUTION
    return y


def zero_row_min(x: Tensor) -> Tensor:
    """Return a copy of x in which the minimum of each row is set to 0.

    Example: x = [[10, 20, 30], [2, 5, 1]] gives y = [[0, 20, 30], [2, 5, 0]].
    If a row's minimum occurs several times, only its first occurrence is set to 0
    (torch.argmin returns the first minimal index). Use a reduction and one indexing
    assignment, no loops. The input tensor must not be modified.

    Args:
        x: Tensor of shape (M, N) with N >= 1.

    Returns:
        y: Tensor of shape (M, N), same dtype and device as x.
    """
    y = None
    ### BEGIN SOLUTION
    ### HINT: clone x, find each row's argmin, then assign y[rows, cols] = 0.
    y = x.clone()
    rows = torch.arange(x.shape[0], device=x.device)
    y[rows, x.argmin(dim=1)] = 0
    ### END SOLUTION
    return y


# --------------------------------------------------------------------------------------
# Vectorization and broadcasting
# --------------------------------------------------------------------------------------

def batched_matrix_multiply(x: Tensor, y: Tensor, use_loop: bool = True) -> Tensor:
    """Batched matrix multiply: z[i] = x[i] @ y[i].

    Args:
        x: Tensor of shape (B, N, M).
        y: Tensor of shape (B, M, P).
        use_loop: whether to use the loop version (batched_matrix_multiply_loop) or the
            vectorized version (batched_matrix_multiply_noloop).

    Returns:
        z: Tensor of shape (B, N, P).
    """
    if use_loop:
        return batched_matrix_multiply_loop(x, y)
    else:
        return batched_matrix_multiply_noloop(x, y)


def batched_matrix_multiply_loop(x: Tensor, y: Tensor) -> Tensor:
    """Batched matrix multiply with an explicit Python loop over the batch dimension:
    one torch.mm per batch element, results stacked.

    Args:
        x: Tensor of shape (B, N, M).
        y: Tensor of shape (B, M, P).

    Returns:
        z: Tensor of shape (B, N, P), z[i] = x[i] @ y[i].
    """
    z = None
    ### BEGIN SOLUTION
    ### HINT: torch.stack([torch.mm(...) for ...]).
    z = torch.stack([torch.mm(x[i], y[i]) for i in range(x.shape[0])])
    ### END SOLUTION
    return z


def batched_matrix_multiply_noloop(x: Tensor, y: Tensor) -> Tensor:
    """Batched matrix multiply without explicit loops (one call to torch.bmm).

    Args:
        x: Tensor of shape (B, N, M).
        y: Tensor of shape (B, M, P).

    Returns:
        z: Tensor of shape (B, N, P), z[i] = x[i] @ y[i].
    """
    z = None
    ### BEGIN SOLUTION
    ### HINT: torch.bmm
    z = torch.bmm(x, y)
    ### END SOLUTION
    return z


def normalize_columns(x: Tensor) -> Tensor:
    """Normalize each column of x to zero mean and unit (unbiased) standard deviation.

    y[i, j] = (x[i, j] - mu_j) / sigma_j with
        mu_j    = (1 / M) * sum_i x[i, j]
        sigma_j = sqrt((1 / (M - 1)) * sum_i (x[i, j] - mu_j) ** 2)

    Use only basic arithmetic (+, -, *, /, **, sqrt), sum reductions and broadcasting:
    no loops, no torch.mean / torch.std. Return a new tensor; x must not be modified.

    Args:
        x: Tensor of shape (M, N) with M >= 2, floating point.

    Returns:
        y: Tensor of shape (M, N), same dtype and device as x.
    """
    y = None
    ### BEGIN SOLUTION
    ### HINT: x.sum(dim=0, keepdim=True) keeps a (1, N) shape that broadcasts against x.
    M = x.shape[0]
    mu = x.sum(dim=0, keepdim=True) / M
    centred = x - mu
    sigma = ((centred ** 2).sum(dim=0, keepdim=True) / (M - 1)).sqrt()
    y = centred / sigma
    ### END SOLUTION
    return y


# --------------------------------------------------------------------------------------
# Running on a GPU
# --------------------------------------------------------------------------------------

def mm_on_cpu(x: Tensor, w: Tensor) -> Tensor:
    """Matrix multiply on the CPU (given, nothing to implement).

    Args:
        x: Tensor of shape (N, M) on the CPU.
        w: Tensor of shape (M, P) on the CPU.

    Returns:
        y: Tensor of shape (N, P) on the CPU.
    """
    y = x.mm(w)
    return y


def mm_on_gpu(x: Tensor, w: Tensor) -> Tensor:
    """Matrix multiply on the GPU: (i) move both inputs to the accelerator, (ii) multiply
    there, (iii) return the result on the CPU, so that it can replace mm_on_cpu.

    The accelerator is CUDA when available; otherwise the work falls back to the CPU
    (never hard-code "cuda": the function must also run on a machine without a GPU).

    Args:
        x: Tensor of shape (N, M) on the CPU.
        w: Tensor of shape (M, P) on the CPU.

    Returns:
        y: Tensor of shape (N, P) on the CPU.
    """
    y = None
    ### BEGIN SOLUTION
    ### HINT: device = torch.device("cuda" if torch.cuda.is_available() else "cpu"); use .to(device) and .cpu().
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    y = x.to(device).mm(w.to(device)).cpu()
    ### END SOLUTION
    return y


# --------------------------------------------------------------------------------------
# Challenge problems
# --------------------------------------------------------------------------------------

def challenge_mean_tensors(xs: List[Tensor], ls: Union[Sequence[int], Tensor]) -> Tensor:
    """Mean of each tensor in a list, without a Python loop over the tensors.

    Concatenate the tensors, take one cumulative sum, and read each tensor's sum off
    the cumulative sum at the tensors' boundaries (the "cumsum trick"). The cumulative
    sum is accumulated in float64, so long inputs keep their precision.

    Args:
        xs: list of N 1-D floating-point tensors (N >= 1); xs[i] has shape (ls[i],).
        ls: the N lengths, a list of ints or an integer tensor of shape (N,).

    Returns:
        y: Tensor of shape (N,), dtype of xs[0], y[i] = mean(xs[i]). An empty xs[i]
           (ls[i] == 0) gives nan, like torch.mean of an empty tensor.
    """
    y = None
    ### BEGIN SOLUTION
    ### HINT: torch.cat, then torch.cumsum; the sum of xs[i] is a difference of two cumsum values.
    flat = torch.cat(xs)
    lengths = torch.as_tensor(ls, dtype=torch.long, device=flat.device)
    csum = torch.cat([torch.zeros(1, dtype=torch.float64, device=flat.device),
                      flat.to(torch.float64).cumsum(dim=0)])
    ends = lengths.cumsum(dim=0)
    sums = csum[ends] - csum[ends - lengths]
    y = (sums / lengths.to(torch.float64)).to(flat.dtype)
    ### END SOLUTION
    return y


def challenge_get_uniques(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Sorted unique values of a 1-D tensor, with the index of each value's first occurrence.

    No loops and no torch.unique. The input tensor must not be modified.

    Args:
        x: 1-D tensor of shape (N,), N >= 1 (integer dtype in the course, any dtype works).

    Returns:
        A tuple of:
        - uniques: Tensor of shape (K,), the K distinct values of x in ascending order,
          same dtype as x.
        - indices: int64 Tensor of shape (K,), indices[k] is the smallest i with
          x[i] == uniques[k].
    """
    uniques, indices = None, None
    ### BEGIN SOLUTION
    ### HINT: a stable sort keeps equal values in their original order; keep the first of each run.
    values, order = torch.sort(x, stable=True)  # returns new tensors; x is left as it is
    is_first = torch.ones_like(values, dtype=torch.bool)
    is_first[1:] = values[1:] != values[:-1]
    uniques = values[is_first]
    indices = order[is_first]
    ### END SOLUTION
    return uniques, indices
