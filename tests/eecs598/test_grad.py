"""eecs598.grad: numeric gradients against closed-form derivatives, and rel_error's properties."""
import pytest
import torch

from eecs598.grad import compute_numeric_gradient, grad_check_sparse, rel_error
from eecs598.testing import assert_close

TOL = 1e-6  # centred differences with h=1e-7 in float64 on O(1) values: error ~1e-8


def _x(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def test_numeric_gradient_scalar_function():
    x = _x(3, 4)
    x_before = x.clone()
    grad = compute_numeric_gradient(lambda t: (t ** 2).sum() + t.sin().sum(), x)
    assert grad.shape == x.shape and grad.dtype == x.dtype
    assert_close(grad, 2 * x_before + x_before.cos(), TOL, "d/dx sum(x^2 + sin x)")
    assert torch.equal(x, x_before), "x must be restored"


def test_numeric_gradient_non_scalar_with_upstream():
    W = _x(5, 3, seed=1)
    x = _x(3, 2, seed=2)
    dLdf = _x(5, 2, seed=3)
    # L = sum(dLdf * (W @ x))  =>  dL/dx = W^T dLdf
    grad = compute_numeric_gradient(lambda t: W @ t, x, dLdf)
    assert_close(grad, W.t() @ dLdf, TOL, "dL/dx of W @ x")
    # elementwise f with upstream: dL/dx = cos(x) * dLdf
    x2 = _x(4, 3, seed=4)
    up = _x(4, 3, seed=5)
    assert_close(compute_numeric_gradient(torch.sin, x2, up), x2.cos() * up, TOL, "sin with dLdf")


def test_numeric_gradient_default_upstream_is_ones():
    x = _x(6)
    ref = compute_numeric_gradient(lambda t: t ** 3, x, torch.ones(6, dtype=torch.float64))
    assert_close(compute_numeric_gradient(lambda t: t ** 3, x), ref, 1e-12, "default dLdf")
    assert_close(ref, 3 * x ** 2, TOL, "d/dx x^3")


def test_numeric_gradient_pairs_upstream_and_output_elements_in_order_not_by_broadcasting():
    """As the course's flattened dot product: a (3, 1) dLdf for a (3,) output weighs element i by
    dLdf[i] (a broadcast would weigh every element by every dLdf entry); another number of
    elements is an error."""
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    up = torch.tensor([[1.0], [0.0], [0.0]], dtype=torch.float64)
    assert_close(compute_numeric_gradient(lambda t: t ** 2, x, up), torch.tensor([2.0, 0, 0], dtype=torch.float64),
                 TOL, "(3,) output, (3, 1) upstream")
    assert_close(compute_numeric_gradient(lambda t: (t ** 2)[:, None], x, up.view(3)),
                 torch.tensor([2.0, 0, 0], dtype=torch.float64), TOL, "(3, 1) output, (3,) upstream")
    with pytest.raises(ValueError, match="must match"):
        compute_numeric_gradient(lambda t: t ** 2, x, torch.ones(3, 3, dtype=torch.float64))


def test_numeric_gradient_matches_autograd():
    x = _x(2, 3, seed=6)
    dLdf = _x(2, 3, seed=7)
    f = lambda t: torch.tanh(t) * t.exp()  # noqa: E731
    xr = x.clone().requires_grad_()
    (f(xr) * dLdf).sum().backward()
    assert_close(compute_numeric_gradient(f, x, dLdf), xr.grad, TOL, "vs autograd")


def test_grad_check_sparse_correct_and_wrong(capsys):
    x = _x(4, 5, seed=8)
    x_before = x.clone()
    f = lambda t: (t ** 3).sum()  # noqa: E731
    errors = grad_check_sparse(f, x, 3 * x ** 2, num_checks=6)
    assert len(errors) == 6
    assert max(errors) < 1e-6
    assert torch.equal(x, x_before)
    wrong = grad_check_sparse(f, x, 6 * x ** 2, num_checks=6)  # twice the true gradient
    assert min(wrong) > 0.3  # |a - 2a| / (|a| + |2a|) = 1/3
    out = capsys.readouterr().out
    assert "relative error" in out and out.count("\n") == 12


def test_grad_check_sparse_is_seeded():
    x = _x(10, 10, seed=9)
    f = lambda t: (t ** 2).sum()  # noqa: E731
    wrong = torch.zeros_like(x)
    wrong[0] = 2 * x[0]  # correct only on row 0: the errors tell which coordinates were drawn
    assert grad_check_sparse(f, x, wrong, num_checks=5) == grad_check_sparse(f, x, wrong, num_checks=5)


def test_rel_error_properties():
    a, b = _x(7, seed=10), _x(7, seed=11)
    assert rel_error(a, a) == 0.0
    assert rel_error(a, b) == pytest.approx(rel_error(b, a))
    assert rel_error(3 * a, 3 * b) == pytest.approx(rel_error(a, b))  # scale invariant
    assert 0.0 <= rel_error(a, b) <= 1.0
    assert rel_error(a, -a) == pytest.approx(1.0)
    assert rel_error(1.0, 3.0) == pytest.approx(0.5)  # |1-3| / (1+3), numbers accepted
    assert rel_error(torch.zeros(3), torch.zeros(3)) == 0.0  # eps clamps the denominator
    # max|x-y| / max(|x|+|y|), not an elementwise maximum of ratios
    assert rel_error(torch.tensor([1.0, 100.0]), torch.tensor([2.0, 100.0])) == pytest.approx(1 / 200)
    assert isinstance(rel_error(a, b), float)


def test_numeric_gradient_non_contiguous_input():
    x = _x(4, 6, seed=12)[:, ::2]  # a strided view: must be perturbed in place, not through a copy
    assert not x.is_contiguous()
    grad = compute_numeric_gradient(lambda t: (t ** 2).sum(), x)
    assert grad.shape == x.shape
    assert_close(grad, 2 * x, TOL, "strided x")
    xt = _x(3, 5, seed=13).t()
    assert_close(compute_numeric_gradient(lambda t: t.sin().sum(), xt), xt.cos(), TOL, "transposed x")


def test_numeric_gradient_of_a_function_returning_a_view_of_x():
    """f may return x itself or a view of it (a reshape; dropout in test mode)."""
    x = _x(3, 4, seed=6)
    up = _x(12, seed=7)
    assert_close(compute_numeric_gradient(lambda t: t.reshape(-1), x, up), up.reshape(3, 4), TOL, "reshape")
    assert_close(compute_numeric_gradient(lambda t: t, x), torch.ones(3, 4, dtype=torch.float64), TOL,
                 "identity")


def test_differences_are_centred(capsys):
    """On sum(x^2) a centred difference is exact, (f(x+h) - f(x-h)) / 2h = 2x, even for a large
    h; a one-sided one would be off by h. Both helpers, h = 1e-2, float64."""
    torch.manual_seed(3)
    x = torch.randn(4, 3, dtype=torch.float64)
    f = lambda t: (t ** 2).sum()  # noqa: E731
    grad = compute_numeric_gradient(f, x.clone(), h=1e-2)
    assert (grad - 2 * x).abs().max().item() < 1e-10
    errors = grad_check_sparse(f, x.clone(), 2 * x, num_checks=6, h=1e-2)
    assert max(errors) < 1e-10


# --- gaps found by mutation testing (each test fails on a one-line bug the others let through)

def test_grad_check_sparse_zero_gradient_is_not_a_crash():
    x = torch.zeros(3, dtype=torch.float64)
    errs = grad_check_sparse(lambda x: torch.tensor(1.0), x, torch.zeros(3), num_checks=2)
    assert errs == [0.0, 0.0]
