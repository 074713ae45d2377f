"""Unit tests for A1/pytorch101.py.

Expected values are hand-written from the course's specification or computed by an
independent reference (brute-force Python loops, torch.bmm / torch.mm, torch.unique,
torch.mean / torch.std in float64). Functions that must not modify their input are
checked against a clone taken before the call.
"""
import pytest
import torch

import pytorch101
from eecs598.testing import assert_close


def _grid(M, N, dtype=torch.float32):
    """x[i, j] = 10 * i + j: every element is distinct and easy to read in a failure."""
    return (10 * torch.arange(M).view(M, 1) + torch.arange(N).view(1, N)).to(dtype)


def test_hello(capsys):
    pytorch101.hello()
    assert capsys.readouterr().out.strip() == "Hello from pytorch101.py!"


# --- tensor basics -------------------------------------------------------------------

def test_create_sample_tensor():
    x = pytorch101.create_sample_tensor()
    expected = torch.tensor([[0.0, 10.0], [100.0, 0.0], [0.0, 0.0]])
    assert isinstance(x, torch.Tensor)
    assert x.shape == (3, 2)
    assert x.dtype == torch.float32
    assert torch.equal(x, expected)


def test_mutate_tensor_in_place_and_last_value_wins():
    x = torch.zeros(3, 4)
    indices = [(0, 0), (1, 2), (2, 3), (1, 2)]
    values = [4.0, 5.0, 6.0, 7.0]
    out = pytorch101.mutate_tensor(x, indices, values)
    assert out is x
    expected = torch.zeros(3, 4)
    expected[0, 0], expected[1, 2], expected[2, 3] = 4.0, 7.0, 6.0
    assert torch.equal(x, expected)


def test_mutate_tensor_3d():
    x = torch.zeros(2, 3, 4, dtype=torch.int64)
    pytorch101.mutate_tensor(x, [(1, 2, 3), (0, 1, 0)], [9, -2])
    assert x[1, 2, 3].item() == 9 and x[0, 1, 0].item() == -2
    assert x.abs().sum().item() == 11


@pytest.mark.parametrize("shape", [(), (0,), (7,), (2, 3), (2, 0, 5), (3, 4, 5, 2)])
def test_count_tensor_elements(shape):
    x = torch.zeros(shape)
    expected = 1
    for s in shape:
        expected *= s
    n = pytorch101.count_tensor_elements(x)
    assert isinstance(n, int)
    assert n == expected


def test_count_tensor_elements_does_not_call_numel(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("count_tensor_elements must not use numel")
    monkeypatch.setattr(torch, "numel", forbidden)
    monkeypatch.setattr(torch.Tensor, "numel", forbidden)
    monkeypatch.setattr(torch.Tensor, "nelement", forbidden)
    assert pytorch101.count_tensor_elements(torch.zeros(3, 4, 5)) == 60


@pytest.mark.parametrize("M,N", [(4, 5), (1, 1), (0, 3)])
def test_create_tensor_of_pi(M, N):
    x = pytorch101.create_tensor_of_pi(M, N)
    assert x.shape == (M, N)
    assert x.dtype == torch.float32
    assert bool((x == torch.tensor(3.14, dtype=torch.float32)).all())


@pytest.mark.parametrize("start,stop", [(5, 25), (10, 30), (0, 0), (-25, 5), (-30, -10),
                                        (5, 9), (11, 19), (30, 10), (7, 10), (10, 10)])
def test_multiples_of_ten(start, stop):
    x = pytorch101.multiples_of_ten(start, stop)
    expected = [float(v) for v in range(start, stop + 1) if v % 10 == 0]
    assert x.dtype == torch.float64
    assert x.dim() == 1 and x.shape == (len(expected),)
    assert x.tolist() == expected


# --- indexing ----------------------------------------------------------------------------

@pytest.mark.parametrize("M,N", [(3, 5), (5, 7), (6, 6)])
def test_slice_indexing_practice(M, N):
    x = _grid(M, N)
    x0 = x.clone()
    last_row, third_col, first_two_rows_three_cols, even_rows_odd_cols = \
        pytorch101.slice_indexing_practice(x)
    assert torch.equal(x, x0), "input was modified"

    assert last_row.shape == (N,)
    assert last_row.tolist() == [10.0 * (M - 1) + j for j in range(N)]
    assert third_col.shape == (M, 1)
    assert third_col.tolist() == [[10.0 * i + 2] for i in range(M)]
    assert first_two_rows_three_cols.tolist() == [[0.0, 1.0, 2.0], [10.0, 11.0, 12.0]]
    expected_even_odd = [[10.0 * i + j for j in range(1, N, 2)] for i in range(0, M, 2)]
    assert even_rows_odd_cols.tolist() == expected_even_odd

    # Each result is independent of x: writing to it leaves x alone, and vice versa.
    for out in (last_row, third_col, first_two_rows_three_cols, even_rows_odd_cols):
        before = out.clone()
        out.fill_(-1)
        assert torch.equal(x, x0), "a returned tensor shares memory with the input"
        out.copy_(before)
    x.fill_(-5)
    assert last_row.tolist() == [10.0 * (M - 1) + j for j in range(N)]


@pytest.mark.parametrize("M,N", [(4, 6), (5, 8)])
def test_slice_assignment_practice(M, N):
    x = torch.full((M, N), -7, dtype=torch.int64)
    out = pytorch101.slice_assignment_practice(x)
    assert out is x
    expected = torch.full((M, N), -7, dtype=torch.int64)
    expected[:4, :6] = torch.tensor([[0, 1, 2, 2, 2, 2],
                                     [0, 1, 2, 2, 2, 2],
                                     [3, 4, 3, 4, 5, 5],
                                     [3, 4, 3, 4, 5, 5]])
    assert torch.equal(x, expected)


def test_shuffle_cols():
    x = _grid(3, 5)
    x0 = x.clone()
    y = pytorch101.shuffle_cols(x)
    assert torch.equal(x, x0)
    expected = [[10.0 * i + j for j in (0, 0, 2, 1)] for i in range(3)]
    assert y.shape == (3, 4)
    assert y.tolist() == expected


@pytest.mark.parametrize("M,N", [(1, 3), (4, 2), (5, 3)])
def test_reverse_rows(M, N):
    x = _grid(M, N)
    x0 = x.clone()
    y = pytorch101.reverse_rows(x)
    assert torch.equal(x, x0)
    assert y.shape == (M, N)
    assert y.tolist() == [x0[M - 1 - i].tolist() for i in range(M)]


def test_take_one_elem_per_col():
    x = _grid(5, 4)
    x0 = x.clone()
    y = pytorch101.take_one_elem_per_col(x)
    assert torch.equal(x, x0)
    assert y.shape == (3,)
    assert y.tolist() == [10.0, 1.0, 32.0]  # x[1, 0], x[0, 1], x[3, 2]


@pytest.mark.parametrize("labels", [[1, 4, 3, 2], [0], [2, 2, 0], [0, 1, 2, 3, 4]])
def test_make_one_hot(labels):
    y = pytorch101.make_one_hot(labels)
    C = max(labels) + 1
    expected = [[1.0 if c == label else 0.0 for c in range(C)] for label in labels]
    assert y.dtype == torch.float32
    assert y.shape == (len(labels), C)
    assert y.tolist() == expected


def test_sum_positive_entries():
    x = torch.tensor([[-1, 2, 0, 5], [7, -8, 3, -4]], dtype=torch.int64)
    x0 = x.clone()
    s = pytorch101.sum_positive_entries(x)
    assert torch.equal(x, x0)
    assert isinstance(s, int)
    assert s == 2 + 5 + 7 + 3


def test_sum_positive_entries_random_and_none_positive():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-100, 100, (3, 4, 5), generator=g)
    assert pytorch101.sum_positive_entries(x) == sum(v for v in x.flatten().tolist() if v > 0)
    assert pytorch101.sum_positive_entries(-torch.arange(6)) == 0


# --- reshaping and reductions --------------------------------------------------------------

def test_reshape_practice():
    x = torch.arange(24)
    x0 = x.clone()
    y = pytorch101.reshape_practice(x)
    assert torch.equal(x, x0)
    expected = [[0, 1, 2, 3, 12, 13, 14, 15],
                [4, 5, 6, 7, 16, 17, 18, 19],
                [8, 9, 10, 11, 20, 21, 22, 23]]
    assert y.shape == (3, 8)
    assert y.tolist() == expected


def test_reshape_practice_float_values():
    x = torch.linspace(-1, 1, 24, dtype=torch.float64)
    y = pytorch101.reshape_practice(x)
    idx = [[0, 1, 2, 3, 12, 13, 14, 15], [4, 5, 6, 7, 16, 17, 18, 19], [8, 9, 10, 11, 20, 21, 22, 23]]
    assert y.dtype == torch.float64
    assert y.tolist() == [[x[i].item() for i in row] for row in idx]


def test_zero_row_min_course_example():
    x = torch.tensor([[10, 20, 30], [2, 5, 1]])
    x0 = x.clone()
    y = pytorch101.zero_row_min(x)
    assert torch.equal(x, x0), "input was modified"
    assert y.dtype == x.dtype
    assert y.tolist() == [[0, 20, 30], [2, 5, 0]]


def test_zero_row_min_random_against_loop():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    x0 = x.clone()
    y = pytorch101.zero_row_min(x)
    assert torch.equal(x, x0)
    expected = x0.tolist()
    for row in expected:
        row[row.index(min(row))] = 0.0
    assert y.tolist() == expected


def test_zero_row_min_ties_zero_first_occurrence():
    x = torch.tensor([[3, 1, 1, 4], [2, 2, 2, 2]])
    assert pytorch101.zero_row_min(x).tolist() == [[3, 0, 1, 4], [0, 2, 2, 2]]


# --- vectorization and broadcasting ---------------------------------------------------------

@pytest.mark.parametrize("use_loop", [True, False])
@pytest.mark.parametrize("B,N,M,P", [(2, 3, 5, 4), (1, 1, 1, 1), (4, 6, 2, 3)])
def test_batched_matrix_multiply(use_loop, B, N, M, P):
    g = torch.Generator().manual_seed(B * 100 + N)
    x = torch.randn(B, N, M, generator=g, dtype=torch.float64)
    y = torch.randn(B, M, P, generator=g, dtype=torch.float64)
    x0, y0 = x.clone(), y.clone()
    z = pytorch101.batched_matrix_multiply(x, y, use_loop=use_loop)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert z.shape == (B, N, P)
    assert z.dtype == torch.float64
    # Independent reference: triple loop in Python floats.
    xl, yl = x.tolist(), y.tolist()
    ref = torch.tensor([[[sum(xl[b][n][k] * yl[b][k][p] for k in range(M)) for p in range(P)]
                         for n in range(N)] for b in range(B)], dtype=torch.float64)
    assert_close(z, ref, 1e-12, "batched matrix multiply")
    assert_close(z, torch.bmm(x, y), 1e-12, "batched matrix multiply vs torch.bmm")


def test_batched_matrix_multiply_loop_and_noloop_agree_float32():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, 12, generator=g)
    y = torch.randn(8, 12, 10, generator=g)
    ref = torch.bmm(x.double(), y.double())
    z_loop = pytorch101.batched_matrix_multiply_loop(x, y)
    z_noloop = pytorch101.batched_matrix_multiply_noloop(x, y)
    assert z_loop.dtype == torch.float32 and z_noloop.dtype == torch.float32
    assert_close(z_loop, ref, 1e-6, "loop")       # course tolerance: 1e-6
    assert_close(z_noloop, ref, 1e-6, "noloop")


def test_normalize_columns_small_by_hand():
    x = torch.tensor([[0.0, 30.0, 600.0], [1.0, 10.0, 200.0], [-1.0, 20.0, 400.0]])
    x0 = x.clone()
    y = pytorch101.normalize_columns(x)
    assert torch.equal(x, x0), "input was modified"
    # Every column is (m, m + s, m - s) up to order; unbiased std = s, so y = (0, 1, -1)-like.
    expected = torch.tensor([[0.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 0.0, 0.0]])
    assert_close(y, expected, 1e-6, "normalize_columns")


def test_normalize_columns_random_against_torch_std():
    g = torch.Generator().manual_seed(2)
    x = 3.0 * torch.randn(7, 4, generator=g, dtype=torch.float64) + 5.0
    x0 = x.clone()
    y = pytorch101.normalize_columns(x)
    assert torch.equal(x, x0)
    assert y.shape == x.shape and y.dtype == torch.float64
    ref = (x - x.mean(dim=0)) / x.std(dim=0, unbiased=True)
    assert_close(y, ref, 1e-12, "normalize_columns vs torch.std")


def test_mm_on_cpu():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = pytorch101.mm_on_cpu(x, w)
    assert y.device.type == "cpu" and y.shape == (5, 3)
    assert_close(y, x @ w, 1e-12, "mm_on_cpu")


def test_mm_on_gpu_returns_cpu_result():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 5, generator=g)
    w = torch.randn(5, 2, generator=g)
    x0, w0 = x.clone(), w.clone()
    y = pytorch101.mm_on_gpu(x, w)
    assert torch.equal(x, x0) and torch.equal(w, w0)
    assert x.device.type == "cpu" and w.device.type == "cpu"
    assert y.device.type == "cpu" and y.shape == (6, 2) and y.dtype == x.dtype
    # float64 reference; on CUDA TF32 may be on (10 mantissa bits: the course allowed 5e-2,
    # 1e-2 is ample), on the CPU the float32 product is exact to rounding.
    tol = 1e-2 if torch.cuda.is_available() else 1e-6
    assert_close(y, x.double() @ w.double(), tol, "mm_on_gpu")


def test_mm_on_gpu_multiplies_on_the_accelerator_when_there_is_one():
    """The product itself runs on CUDA when CUDA is available (on the CPU otherwise): every aten
    matrix-product op is recorded with the device of its inputs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class RecordProducts(TorchDispatchMode):
        devices = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in {"mm", "matmul", "addmm", "bmm", "dot", "mv"}:
                self.devices.update(a.device.type for a in args if isinstance(a, torch.Tensor))
            return func(*args, **(kwargs or {}))

    x, w = torch.randn(6, 5), torch.randn(5, 2)
    with RecordProducts() as rec:
        y = pytorch101.mm_on_gpu(x, w)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert rec.devices == {expected}, rec.devices
    assert y.device.type == "cpu"


def test_mm_on_gpu_without_cuda(monkeypatch):
    """With CUDA reported absent, mm_on_gpu must fall back to the CPU, not crash."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_cuda(*args, **kwargs):
        raise AssertionError("mm_on_gpu used CUDA although torch.cuda.is_available() is False")
    monkeypatch.setattr(torch.Tensor, "cuda", no_cuda)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, generator=g)  # not small integers: a low-precision product would show
    w = torch.randn(3, 4, generator=g)
    y = pytorch101.mm_on_gpu(x, w)
    assert y.device.type == "cpu" and y.dtype == torch.float32
    expected = torch.tensor([[sum(x[i, k].item() * w[k, j].item() for k in range(3)) for j in range(4)]
                             for i in range(2)], dtype=torch.float64)
    assert_close(y, expected, 1e-6, "mm_on_gpu on the CPU")


# --- challenge problems ---------------------------------------------------------------------

def test_challenge_mean_tensors_small():
    xs = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0]), torch.tensor([-4.0, 4.0, 2.0, 6.0])]
    y = pytorch101.challenge_mean_tensors(xs, [3, 1, 4])
    assert y.shape == (3,)
    assert y.dtype == torch.float32
    assert y.tolist() == [2.0, 10.0, 2.0]


@pytest.mark.parametrize("as_tensor", [False, True])
def test_challenge_mean_tensors_random(as_tensor):
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, 50, (30,), generator=g).tolist()
    xs = [torch.randn(n, generator=g) + 100.0 for n in lengths]
    xs0 = [x.clone() for x in xs]
    ls = torch.tensor(lengths) if as_tensor else lengths
    y = pytorch101.challenge_mean_tensors(xs, ls)
    assert all(torch.equal(a, b) for a, b in zip(xs, xs0)), "inputs were modified"
    assert y.shape == (len(xs),)
    ref = torch.tensor([sum(x.double().tolist()) / len(x) for x in xs], dtype=torch.float64)
    assert_close(y, ref, 1e-6, "challenge_mean_tensors")


def test_challenge_mean_tensors_float64_and_long_inputs():
    g = torch.Generator().manual_seed(6)
    lengths = [5000, 1, 20000, 3]
    xs = [torch.randn(n, generator=g, dtype=torch.float64) + 1e3 for n in lengths]
    y = pytorch101.challenge_mean_tensors(xs, lengths)
    assert y.dtype == torch.float64
    ref = torch.stack([x.mean() for x in xs])
    assert_close(y, ref, 1e-12, "challenge_mean_tensors float64")


def test_challenge_mean_tensors_of_an_empty_tensor_is_nan():
    """As torch.mean of an empty tensor (the docstring): nan, not 0."""
    xs = [torch.tensor([1.0, 3.0]), torch.tensor([]), torch.tensor([5.0])]
    y = pytorch101.challenge_mean_tensors(xs, [2, 0, 1])
    assert y[0] == 2.0 and torch.isnan(y[1]) and torch.isnan(torch.tensor([]).mean()) and y[2] == 5.0


def test_challenge_get_uniques_first_occurrence():
    x = torch.tensor([3, 1, 3, 2, 1, 5, 2, 3, 5, 5, 0, 1], dtype=torch.int64)
    x0 = x.clone()
    uniques, indices = pytorch101.challenge_get_uniques(x)
    assert torch.equal(x, x0), "challenge_get_uniques modified its input"
    assert uniques.tolist() == [0, 1, 2, 3, 5]
    assert indices.tolist() == [10, 1, 3, 0, 5]
    assert uniques.dtype == torch.int64 and indices.dtype == torch.int64


def test_challenge_get_uniques_random_against_torch_unique():
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 40, (2000,), generator=g)
    x0 = x.clone()
    uniques, indices = pytorch101.challenge_get_uniques(x)
    assert torch.equal(x, x0), "challenge_get_uniques modified its input"
    assert torch.equal(uniques, torch.unique(x, sorted=True))
    values = x0.tolist()
    first = {}
    for i, v in enumerate(values):
        first.setdefault(v, i)
    assert indices.tolist() == [first[v] for v in uniques.tolist()]
    assert torch.equal(x0[indices], uniques)


def test_challenge_get_uniques_edge_cases():
    u, i = pytorch101.challenge_get_uniques(torch.tensor([7]))
    assert u.tolist() == [7] and i.tolist() == [0]
    u, i = pytorch101.challenge_get_uniques(torch.full((9,), 4))
    assert u.tolist() == [4] and i.tolist() == [0]
    u, i = pytorch101.challenge_get_uniques(torch.tensor([-3, 9, -3, 0, 9]))
    assert u.tolist() == [-3, 0, 9] and i.tolist() == [0, 3, 1]
