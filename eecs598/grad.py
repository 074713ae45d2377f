"""Numeric gradients and the relative error used by every check in the course."""
import itertools
import random

import torch


def grad_check_sparse(f, x, analytic_grad, num_checks=10, h=1e-7):
    """Compare `analytic_grad` with centred differences of `f` at `num_checks` random coordinates.

    f: function x -> scalar tensor (x is perturbed in place at each coordinate and restored).
    x: tensor. analytic_grad: tensor shaped like x.
    Prints numeric, analytic and relative error |a-b|/(|a|+|b|+1e-12) per coordinate and
    returns the list of relative errors. Seeds Python's `random` with 0 (course behaviour).
    """
    random.seed(0)
    errors = []
    for _ in range(num_checks):
        ix = tuple(random.randrange(m) for m in x.shape)
        old = x[ix].item()
        x[ix] = old + h
        fxph = f(x).item()
        x[ix] = old - h
        fxmh = f(x).item()
        x[ix] = old
        grad_numerical = (fxph - fxmh) / (2 * h)
        grad_analytic = analytic_grad[ix].item()
        rel = abs(grad_numerical - grad_analytic) / (abs(grad_numerical) + abs(grad_analytic) + 1e-12)
        errors.append(rel)
        print(f"numerical: {grad_numerical:f} analytic: {grad_analytic:f}, relative error: {rel:e}")
    return errors


def compute_numeric_gradient(f, x, dLdf=None, h=1e-7):
    """Full centred-difference gradient of L = sum(dLdf * f(x)) with respect to x.

    f: function x -> tensor of any shape (x is modified in place and restored).
    dLdf: upstream gradient with as many elements as f(x), matched element by element in
    row-major order (the course's flattened dot product); all ones by default. ValueError for
    another number of elements (no broadcasting).
    Returns a tensor shaped like x. Use float64 for meaningful results.
    """
    grad = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
    y = f(x)
    if dLdf is None:
        dLdf = torch.ones_like(y)
    if dLdf.numel() != y.numel():
        raise ValueError(f"dLdf has {dLdf.numel()} elements {tuple(dLdf.shape)}, f(x) {y.numel()} "
                         f"{tuple(y.shape)}: they must match")
    dLdf = dLdf.reshape(y.shape)
    for ix in itertools.product(*(range(n) for n in x.shape)):  # works for any strides
        old = x[ix].item()
        x[ix] = old + h
        yph = f(x).clone()  # f may return a view of x (a reshape, dropout in test mode)
        x[ix] = old - h
        ymh = f(x).clone()
        x[ix] = old
        grad[ix] = ((yph - ymh) * dLdf).sum() / (2 * h)
    return grad


def rel_error(x, y, eps=1e-10):
    """max|x - y| / max(|x| + |y|), the denominator clamped at eps. Accepts tensors or numbers."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    top = (x - y).abs().max().item()
    bottom = (x.abs() + y.abs()).clamp(min=eps).max().item()
    return top / bottom
