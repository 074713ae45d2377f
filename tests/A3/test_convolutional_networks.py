"""Unit tests for A3/convolutional_networks.py.

References: torch autograd through torch.nn.functional (conv2d, max_pool2d, batch_norm) in
float64 on random inputs, numeric gradients from eecs598.grad for the models, and
hand-written formulas (running averages, Kaiming std). Tolerances are stated per check;
failures print ours vs reference (eecs598.testing.assert_close).
"""
import math

import pytest
import torch
import torch.nn.functional as F

import convolutional_networks as cn
from eecs598 import Solver
from eecs598.grad import compute_numeric_gradient, rel_error
from eecs598.testing import assert_close, autograd_or_nn_uses

DT = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: run single-threaded. (On a busy shared CPU, every multi-threaded
    op on a tiny tensor can stall for a scheduler time slice, making the numeric gradient
    checks 50x slower.) The previous setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randn(*shape, dtype=DT, device="cpu", seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, device=device)


def test_hello(capsys):
    cn.hello_convolutional_networks()
    assert capsys.readouterr().out.strip() == "Hello from convolutional_networks.py!"


# ---------------------------------------------------------------------------------------
# Convolution: naive and fast vs torch.nn.functional.conv2d + autograd (float64)
# ---------------------------------------------------------------------------------------
# (N, C, H, W, F, HH, WW, stride, pad): strides 1, 2, 3; pads 0, 1, 2; odd and non-square
# inputs and kernels; 1x1 kernels; a kernel as large as the padded input; the last two have
# many channels on tiny maps, so FastConv's weight gradient takes its one-product path.
CONV_CASES = [
    (2, 3, 7, 9, 4, 3, 3, 1, 1),
    (2, 3, 8, 5, 2, 3, 2, 2, 0),
    (3, 2, 9, 7, 3, 5, 3, 2, 2),
    (2, 3, 6, 6, 2, 1, 1, 1, 0),
    (1, 2, 5, 5, 2, 3, 3, 3, 1),
    (2, 2, 4, 4, 3, 4, 4, 1, 2),
    (2, 4, 5, 6, 3, 2, 3, 1, 0),
    (2, 3, 7, 7, 2, 7, 7, 1, 0),
    (3, 2, 6, 9, 2, 3, 5, 2, 1),
    (3, 16, 2, 3, 16, 3, 3, 1, 1),
    (3, 16, 4, 4, 16, 3, 3, 2, 1),
]
CONV_IDS = ["N{}C{}_{}x{}_F{}_k{}x{}_s{}_p{}".format(*c) for c in CONV_CASES]


def _conv_reference(x, w, b, stride, pad, dout):
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
    out = F.conv2d(xr, wr, br, stride=stride, padding=pad)
    out.backward(dout)
    return out.detach(), xr.grad, wr.grad, br.grad


def _conv_inputs(case, seed=0, dtype=DT, device="cpu"):
    N, C, H, W, Fn, HH, WW, stride, pad = case
    torch.manual_seed(seed)
    x = torch.randn(N, C, H, W, dtype=dtype, device=device)
    w = torch.randn(Fn, C, HH, WW, dtype=dtype, device=device)
    b = torch.randn(Fn, dtype=dtype, device=device)
    Ho = 1 + (H + 2 * pad - HH) // stride
    Wo = 1 + (W + 2 * pad - WW) // stride
    dout = torch.randn(N, Fn, Ho, Wo, dtype=dtype, device=device)
    return x, w, b, {"stride": stride, "pad": pad}, dout


@pytest.mark.parametrize("layer", ["Conv", "FastConv"])
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv_forward_backward_vs_autograd(layer, case):
    x, w, b, conv_param, dout = _conv_inputs(case)
    x0, w0 = x.clone(), w.clone()
    ref_out, ref_dx, ref_dw, ref_db = _conv_reference(x, w, b, conv_param["stride"], conv_param["pad"], dout)
    Layer = getattr(cn, layer)
    out, cache = Layer.forward(x, w, b, conv_param)
    assert out.shape == ref_out.shape
    assert_close(out, ref_out, 1e-10, f"{layer} forward")
    dx, dw, db = Layer.backward(dout, cache)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    assert_close(dx, ref_dx, 1e-10, f"{layer} dx")
    assert_close(dw, ref_dw, 1e-10, f"{layer} dw")
    assert_close(db, ref_db, 1e-10, f"{layer} db")
    assert torch.equal(x, x0) and torch.equal(w, w0), "the inputs were modified"


@pytest.mark.parametrize("case", CONV_CASES[:4], ids=CONV_IDS[:4])
def test_fast_conv_matches_naive(case):
    x, w, b, conv_param, dout = _conv_inputs(case, seed=1)
    out_naive, cache_naive = cn.Conv.forward(x, w, b, conv_param)
    out_fast, cache_fast = cn.FastConv.forward(x, w, b, conv_param)
    assert_close(out_fast, out_naive, 1e-10, "fast vs naive forward")
    for g_fast, g_naive, name in zip(cn.FastConv.backward(dout, cache_fast),
                                     cn.Conv.backward(dout, cache_naive), ("dx", "dw", "db")):
        assert_close(g_fast, g_naive, 1e-10, f"fast vs naive {name}")


@pytest.mark.parametrize("case", [(5, 3, 8, 7, 4, 3, 3, 1, 1), (5, 3, 9, 8, 4, 3, 2, 2, 2)],
                         ids=["stride1", "stride2_pad2"])
def test_fast_conv_chunked_equals_naive(monkeypatch, case):
    """The batch is processed in chunks (im2col buffer budget): with one sample per chunk, with
    chunks of 2 (a short last chunk of 1) and with the whole batch at once, forward and backward
    equal the naive loops. Both code paths: stride 1 (wide columns) and stride > 1."""
    x, w, b, conv_param, dout = _conv_inputs(case, seed=2)
    out_ref, cache_ref = cn.Conv.forward(x, w, b, conv_param)
    ref = (out_ref, *cn.Conv.backward(dout, cache_ref))
    N, C, H, W, F_, HH, WW, stride, pad = case
    Ho, Wo = (H + 2 * pad - HH) // stride + 1, (W + 2 * pad - WW) // stride + 1
    # the strided path's im2col buffer holds C*HH*WW*Ho*Wo float64 numbers per sample
    two_samples = 2 * C * HH * WW * Ho * Wo * 8 if stride > 1 else None
    budgets = [1, 1 << 30] + ([two_samples] if two_samples else [])
    for budget in budgets:
        monkeypatch.setitem(cn.FastConv.chunk_bytes, "cpu", budget)
        out, cache = cn.FastConv.forward(x, w, b, conv_param)
        for name, a, c in zip(("out", "dx", "dw", "db"), (out, *cn.FastConv.backward(dout, cache)), ref):
            assert_close(a, c, 1e-10, f"budget {budget}: {name}")
    if two_samples:
        assert cn.FastConv._chunk(N, C * HH * WW * Ho * Wo * 8, x.device) == 2


def test_conv_rejects_channel_mismatch():
    with pytest.raises(ValueError):
        cn.FastConv.forward(torch.zeros(1, 3, 5, 5), torch.zeros(2, 4, 3, 3), torch.zeros(2),
                            {"stride": 1, "pad": 1})


# ---------------------------------------------------------------------------------------
# Max pooling
# ---------------------------------------------------------------------------------------
# (N, C, H, W, pool_height, pool_width, stride): stride == window, stride != window
# (overlapping and with gaps), non-square windows, inputs not divisible by the window.
POOL_CASES = [
    (2, 3, 8, 8, 2, 2, 2),
    (2, 3, 7, 9, 3, 2, 2),
    (2, 2, 9, 8, 3, 3, 1),
    (2, 2, 9, 10, 2, 3, 3),
    (3, 2, 7, 7, 2, 2, 2),
    (2, 3, 6, 8, 3, 3, 2),
    (2, 3, 8, 8, 4, 4, 4),  # non-overlapping windows wider than 2 (ResNet's global pool: 4 x 4)
    (2, 2, 11, 10, 5, 5, 5),  # ... and sizes the window does not divide
]
POOL_IDS = ["{}x{}_win{}x{}_s{}".format(*c[2:]) for c in POOL_CASES]


def _pool_reference(x, ph, pw, stride, dout):
    xr = x.clone().requires_grad_()
    out = F.max_pool2d(xr, (ph, pw), stride=stride)
    out.backward(dout)
    return out.detach(), xr.grad


@pytest.mark.parametrize("k", [255, 256, 257, 300])
def test_fast_maxpool_windows_wider_than_a_byte_route_to_the_right_pixel(k):
    """Non-overlapping k x k windows: the position of each window's maximum is kept per row and
    column; past 256 it must not wrap around. Maxima planted in the last column / last row."""
    torch.manual_seed(4)
    x = torch.randn(1, 2, k, k, dtype=DT)
    x[0, 0, 5, k - 1] = 10.0
    x[0, 1, k - 1, 3] = 10.0
    dout = torch.randn(1, 2, 1, 1, dtype=DT)
    ref_out, ref_dx = _pool_reference(x, k, k, k, dout)
    out, cache = cn.FastMaxPool.forward(x, {"pool_height": k, "pool_width": k, "stride": k})
    assert torch.equal(out, ref_out)
    assert torch.equal(cn.FastMaxPool.backward(dout, cache), ref_dx)


@pytest.mark.parametrize("layer", ["MaxPool", "FastMaxPool"])
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_maxpool_forward_backward_vs_autograd(layer, case):
    N, C, H, W, ph, pw, stride = case
    torch.manual_seed(3)
    x = torch.randn(N, C, H, W, dtype=DT)
    Ho, Wo = 1 + (H - ph) // stride, 1 + (W - pw) // stride
    dout = torch.randn(N, C, Ho, Wo, dtype=DT)
    ref_out, ref_dx = _pool_reference(x, ph, pw, stride, dout)
    Layer = getattr(cn, layer)
    out, cache = Layer.forward(x, {"pool_height": ph, "pool_width": pw, "stride": stride})
    assert_close(out, ref_out, 1e-12, f"{layer} forward")
    dx = Layer.backward(dout, cache)
    assert_close(dx, ref_dx, 1e-12, f"{layer} dx")


@pytest.mark.parametrize("layer", ["MaxPool", "FastMaxPool"])
@pytest.mark.parametrize("stride", [1, 2])
def test_maxpool_ties_go_to_first_maximum_like_torch(layer, stride):
    """Tied maxima (e.g. the zeros after a ReLU): the gradient goes to the first one only."""
    x = torch.tensor([[1., 1., 0., 2.], [1., 0., 2., 2.], [3., 3., 3., 3.], [0., 3., 3., 3.]],
                     dtype=DT).view(1, 1, 4, 4).repeat(2, 2, 1, 1)
    x[1] = x[1].clamp(max=0.0)  # whole windows of zeros
    Ho = 1 + (4 - 2) // stride
    dout = torch.arange(1.0, 1.0 + 2 * 2 * Ho * Ho, dtype=DT).view(2, 2, Ho, Ho)
    ref_out, ref_dx = _pool_reference(x, 2, 2, stride, dout)
    Layer = getattr(cn, layer)
    out, cache = Layer.forward(x, {"pool_height": 2, "pool_width": 2, "stride": stride})
    assert torch.equal(out, ref_out)
    dx = Layer.backward(dout, cache)
    assert torch.equal(dx, ref_dx), f"ours:\n{dx}\nreference:\n{ref_dx}"


def test_fast_maxpool_matches_naive():
    torch.manual_seed(4)
    x = torch.randn(2, 3, 9, 7, dtype=DT)
    pool_param = {"pool_height": 3, "pool_width": 2, "stride": 2}
    out_n, cache_n = cn.MaxPool.forward(x, pool_param)
    out_f, cache_f = cn.FastMaxPool.forward(x, pool_param)
    assert torch.equal(out_n, out_f)
    dout = torch.randn_like(out_n)
    assert torch.equal(cn.MaxPool.backward(dout, cache_n), cn.FastMaxPool.backward(dout, cache_f))


# ---------------------------------------------------------------------------------------
# Batch normalization
# ---------------------------------------------------------------------------------------
def _bn_reference(x, gamma, beta, running_mean, running_var, training, dout, eps=1e-5):
    xr, gr, br = (t.clone().requires_grad_() for t in (x, gamma, beta))
    out = F.batch_norm(xr, running_mean.clone(), running_var.clone(), gr, br,
                       training=training, momentum=0.1, eps=eps)
    out.backward(dout)
    return out.detach(), xr.grad, gr.grad, br.grad


def _bn_inputs(shape, seed):
    torch.manual_seed(seed)
    C = shape[1]
    x = 3.0 * torch.randn(*shape, dtype=DT) + 5.0 * torch.randn(C, *([1] * (len(shape) - 2)), dtype=DT)
    gamma = torch.rand(C, dtype=DT) + 0.5
    beta = torch.randn(C, dtype=DT)
    running_mean = torch.randn(C, dtype=DT)
    running_var = torch.rand(C, dtype=DT) + 0.5
    dout = torch.randn(*shape, dtype=DT)
    return x, gamma, beta, running_mean, running_var, dout


@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("backward", ["backward", "backward_alt"])
def test_batchnorm_vs_autograd(mode, backward):
    x, gamma, beta, rm, rv, dout = _bn_inputs((16, 7), seed=5)
    ref_out, ref_dx, ref_dgamma, ref_dbeta = _bn_reference(x, gamma, beta, rm, rv, mode == "train", dout)
    bn_param = {"mode": mode, "running_mean": rm.clone(), "running_var": rv.clone()}
    out, cache = cn.BatchNorm.forward(x, gamma, beta, bn_param)
    assert_close(out, ref_out, 1e-10, f"BatchNorm {mode} forward")
    dx, dgamma, dbeta = getattr(cn.BatchNorm, backward)(dout, cache)
    assert_close(dx, ref_dx, 1e-9, f"BatchNorm.{backward} dx ({mode})")
    assert_close(dgamma, ref_dgamma, 1e-10, f"BatchNorm.{backward} dgamma ({mode})")
    assert_close(dbeta, ref_dbeta, 1e-10, f"BatchNorm.{backward} dbeta ({mode})")
    if mode == "test":  # test mode reads the running statistics and leaves them as they were
        assert torch.equal(bn_param["running_mean"], rm) and torch.equal(bn_param["running_var"], rv)


def test_batchnorm_backward_and_backward_alt_agree():
    x, gamma, beta, rm, rv, dout = _bn_inputs((32, 5), seed=6)
    _, cache = cn.BatchNorm.forward(x, gamma, beta, {"mode": "train"})
    for a, b, name in zip(cn.BatchNorm.backward(dout, cache), cn.BatchNorm.backward_alt(dout, cache),
                          ("dx", "dgamma", "dbeta")):
        assert_close(a, b, 1e-10, f"backward vs backward_alt {name}")


def test_batchnorm_numeric_gradient():
    x, gamma, beta, _, _, dout = _bn_inputs((6, 4), seed=7)
    _, cache = cn.BatchNorm.forward(x, gamma, beta, {"mode": "train"})
    dx, dgamma, dbeta = cn.BatchNorm.backward_alt(dout, cache)
    f = lambda t: cn.BatchNorm.forward(t, gamma, beta, {"mode": "train"})[0]  # noqa: E731
    assert_close(dx, compute_numeric_gradient(f, x.clone(), dout, h=1e-6), 1e-6, "numeric dx")
    fg = lambda t: cn.BatchNorm.forward(x, t, beta, {"mode": "train"})[0]  # noqa: E731
    assert_close(dgamma, compute_numeric_gradient(fg, gamma.clone(), dout, h=1e-6), 1e-6, "numeric dgamma")


def test_batchnorm_running_averages_and_defaults():
    """Momentum 0.9, biased variance, eps 1e-5; running stats start at zeros with x's dtype."""
    x, gamma, beta, _, _, _ = _bn_inputs((20, 3), seed=8)
    bn_param = {"mode": "train"}
    out, _ = cn.BatchNorm.forward(x, gamma, beta, bn_param)
    mean = x.mean(dim=0)
    var = ((x - mean) ** 2).mean(dim=0)
    assert_close(bn_param["running_mean"], 0.1 * mean, 1e-12, "running_mean after one step")
    assert_close(bn_param["running_var"], 0.1 * var, 1e-12, "running_var after one step (biased)")
    assert bn_param["running_mean"].dtype == DT
    expected = gamma * (x - mean) / torch.sqrt(var + 1e-5) + beta
    assert_close(out, expected, 1e-10, "train-mode output")
    cn.BatchNorm.forward(x, gamma, beta, bn_param)
    assert_close(bn_param["running_mean"], 0.9 * 0.1 * mean + 0.1 * mean, 1e-12, "running_mean, two steps")
    # Train-mode statistics: zero mean, unit std per feature with gamma=1, beta=0.
    out, _ = cn.BatchNorm.forward(x, torch.ones(3, dtype=DT), torch.zeros(3, dtype=DT), {"mode": "train"})
    assert out.mean(dim=0).abs().max().item() < 1e-10, "normalized mean"
    assert_close(out.std(dim=0, unbiased=False), torch.ones(3, dtype=DT), 1e-5, "normalized std")


def test_batchnorm_invalid_mode():
    with pytest.raises(ValueError):
        cn.BatchNorm.forward(torch.zeros(2, 3), torch.ones(3), torch.zeros(3), {"mode": "eval"})


@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("shape", [(4, 5, 3, 6), (2, 3, 7, 5), (8, 2, 1, 1)])
def test_spatial_batchnorm_vs_autograd(mode, shape):
    x, gamma, beta, rm, rv, dout = _bn_inputs(shape, seed=9)
    ref_out, ref_dx, ref_dgamma, ref_dbeta = _bn_reference(x, gamma, beta, rm, rv, mode == "train", dout)
    bn_param = {"mode": mode, "running_mean": rm.clone(), "running_var": rv.clone()}
    out, cache = cn.SpatialBatchNorm.forward(x, gamma, beta, bn_param)
    assert_close(out, ref_out, 1e-10, f"SpatialBatchNorm {mode} forward")
    dx, dgamma, dbeta = cn.SpatialBatchNorm.backward(dout, cache)
    assert_close(dx, ref_dx, 1e-9, f"SpatialBatchNorm dx ({mode})")
    assert_close(dgamma, ref_dgamma, 1e-10, f"SpatialBatchNorm dgamma ({mode})")
    assert_close(dbeta, ref_dbeta, 1e-10, f"SpatialBatchNorm dbeta ({mode})")
    if mode == "train":
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        assert_close(bn_param["running_mean"], 0.9 * rm + 0.1 * mean, 1e-12, "spatial running_mean")
        assert_close(bn_param["running_var"], 0.9 * rv + 0.1 * var, 1e-12, "spatial running_var (biased)")


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_spatial_batchnorm_float32_large_mean(offset):
    """float32 with a channel mean far from zero: the statistics must stay accurate."""
    torch.manual_seed(10)
    x64 = torch.randn(8, 3, 5, 5, dtype=DT) + offset
    x = x64.float()
    gamma, beta = torch.ones(3), torch.zeros(3)
    out, _ = cn.SpatialBatchNorm.forward(x, gamma, beta, {"mode": "train"})
    ref = F.batch_norm(x.double(), None, None, gamma.double(), beta.double(), training=True, eps=1e-5)
    assert out.dtype == torch.float32
    assert (out.double() - ref).abs().max().item() < 5e-3


@pytest.mark.parametrize("offset", [0.0, 3.0, 10.0, 100.0, 1e4])
def test_spatial_batchnorm_float32_precision_is_torchs(offset):
    """float32, channel means `offset` standard deviations from zero: forward and backward are
    as close to the float64 result as torch's own float32 batch norm (within 3x), where the
    fast sum formulas alone would lose eps_float32 * offset^2."""
    torch.manual_seed(11)
    x64 = torch.randn(8, 4, 6, 6, dtype=DT) + offset
    g64, b64 = torch.rand(4, dtype=DT) + 0.5, torch.randn(4, dtype=DT)
    dout64 = torch.randn(8, 4, 6, 6, dtype=DT)
    out64, cache64 = cn.SpatialBatchNorm.forward(x64, g64, b64, {"mode": "train"})
    truth = (out64, *cn.SpatialBatchNorm.backward(dout64, cache64))
    out, cache = cn.SpatialBatchNorm.forward(x64.float(), g64.float(), b64.float(), {"mode": "train"})
    ours = (out, *cn.SpatialBatchNorm.backward(dout64.float(), cache))
    x, g, b = (t.float().requires_grad_() for t in (x64, g64, b64))
    ref_out = F.batch_norm(x, None, None, g, b, training=True, eps=1e-5)
    ref_out.backward(dout64.float())
    torch_f32 = (ref_out.detach(), x.grad, g.grad, b.grad)
    for name, o, t, exact in zip(("out", "dx", "dgamma", "dbeta"), ours, torch_f32, truth):
        assert o.dtype == torch.float32
        err, torch_err = rel_error(o.double(), exact), rel_error(t.double(), exact)
        assert err <= 3 * torch_err + 1e-7, f"{name}: {err:.1e} vs torch's {torch_err:.1e}"


# ---------------------------------------------------------------------------------------
# Sandwich layers vs a torch.nn.functional composition
# ---------------------------------------------------------------------------------------
def _sandwich_reference(x, w, b, gamma, beta, conv, bn, pool, dout):
    leaves = [t.clone().requires_grad_() for t in (x, w, b, gamma, beta)]
    xr, wr, br, gr, ber = leaves
    a = F.conv2d(xr, wr, br, padding=1) if conv else xr.reshape(xr.shape[0], -1) @ wr + br
    if bn:
        a = F.batch_norm(a, None, None, gr, ber, training=True, eps=1e-5)
    a = torch.relu(a)
    if pool:
        a = F.max_pool2d(a, 2, 2)
    a.backward(dout)
    return a.detach(), [t.grad for t in leaves]


SANDWICHES = [
    ("Conv_ReLU", True, False, False),
    ("Conv_ReLU_Pool", True, False, True),
    ("Conv_BatchNorm_ReLU", True, True, False),
    ("Conv_BatchNorm_ReLU_Pool", True, True, True),
    ("Linear_BatchNorm_ReLU", False, True, False),
]


@pytest.mark.parametrize("name, conv, bn, pool", SANDWICHES, ids=[s[0] for s in SANDWICHES])
def test_sandwich_layers_vs_autograd(name, conv, bn, pool):
    torch.manual_seed(11)
    if conv:
        x, w, b = _randn(3, 3, 6, 8), _randn(4, 3, 3, 3), _randn(4)
        out_shape = (3, 4, 3, 4) if pool else (3, 4, 6, 8)
    else:
        x, w, b = _randn(6, 2, 5), _randn(10, 7), _randn(7)
        out_shape = (6, 7)
    C = w.shape[0] if conv else w.shape[1]
    gamma, beta = torch.rand(C, dtype=DT) + 0.5, _randn(C)
    dout = _randn(*out_shape)
    ref_out, ref_grads = _sandwich_reference(x, w, b, gamma, beta, conv, bn, pool, dout)
    args = [x, w, b] + ([gamma, beta] if bn else []) + ([{"stride": 1, "pad": 1}] if conv else [])
    args += [{"mode": "train"}] if bn else []
    args += [{"pool_height": 2, "pool_width": 2, "stride": 2}] if pool else []
    Layer = getattr(cn, name)
    out, cache = Layer.forward(*args)
    assert_close(out, ref_out, 1e-10, f"{name} forward")
    grads = Layer.backward(dout, cache)
    names = ["dx", "dw", "db", "dgamma", "dbeta"][:len(grads)]
    assert len(grads) == (5 if bn else 3)
    for g, r, n in zip(grads, ref_grads, names):
        if bn and n == "db":  # a bias before batch norm has no effect: gradient ~ 0
            assert g.abs().max().item() < 1e-10
            continue
        assert_close(g, r, 1e-9, f"{name} {n}")


# ---------------------------------------------------------------------------------------
# Kaiming initialization
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("Din, Dout, K, relu", [(500, 300, None, True), (400, 200, None, False),
                                               (64, 128, 3, True), (32, 64, 5, False)])
def test_kaiming_initializer_shape_and_std(Din, Dout, K, relu):
    torch.manual_seed(12)
    w = cn.kaiming_initializer(Din, Dout, K=K, relu=relu, dtype=DT)
    assert w.shape == ((Din, Dout) if K is None else (Dout, Din, K, K))
    assert w.dtype == DT and w.device.type == "cpu"
    fan_in = Din if K is None else Din * K * K
    expected = math.sqrt((2.0 if relu else 1.0) / fan_in)
    n = w.numel()
    # The sample std of n normal draws has relative standard error ~ 1/sqrt(2n): allow 6 of those.
    assert abs(w.std().item() / expected - 1) < 6 / math.sqrt(2 * n)
    assert abs(w.mean().item()) < 6 * expected / math.sqrt(n)


def test_kaiming_initializer_dtype_default():
    assert cn.kaiming_initializer(3, 4).dtype == torch.float32
    assert cn.kaiming_initializer(3, 4, K=3, dtype=torch.float16).dtype == torch.float16


# ---------------------------------------------------------------------------------------
# Models: numeric gradient checks (float64, tiny shapes), losses, save / load
# ---------------------------------------------------------------------------------------
def _model_grad_check(model, X, y, tol, skip=()):
    loss, grads = model.loss(X, y)
    assert set(grads) == set(model.params)
    for name in sorted(model.params):
        param = model.params[name]
        f = lambda _: model.loss(X, y)[0]  # noqa: E731
        numeric = compute_numeric_gradient(f, param, h=1e-6)
        if name in skip:  # biases right before batch norm: both gradients are ~0
            assert grads[name].abs().max().item() < 1e-8 and numeric.abs().max().item() < 1e-6, name
            continue
        err = rel_error(grads[name], numeric)
        assert err < tol, f"{name}: relative error {err:.2e}\nours:\n{grads[name]}\nnumeric:\n{numeric}"
    return loss


def test_three_layer_convnet_initial_loss_and_reg():
    torch.manual_seed(13)
    model = cn.ThreeLayerConvNet(input_dims=(3, 8, 8), num_filters=4, filter_size=3, hidden_dim=6,
                                 dtype=DT)
    X = _randn(10, 3, 8, 8)
    y = torch.randint(10, size=(10,))
    loss, _ = model.loss(X, y)
    assert abs(loss.item() - math.log(10)) < 1e-3  # tiny weights: uniform scores
    model.reg = 0.5
    loss_reg, _ = model.loss(X, y)
    expected = sum(0.5 * (model.params[k] ** 2).sum().item() for k in ("W1", "W2", "W3"))
    assert abs((loss_reg - loss).item() - expected) < 1e-10
    assert model.loss(X).shape == (10, 10)


@pytest.mark.parametrize("reg", [0.0, 0.5])
def test_three_layer_convnet_gradient_check(reg):
    torch.manual_seed(14)
    model = cn.ThreeLayerConvNet(input_dims=(2, 6, 6), num_filters=3, filter_size=3, hidden_dim=5,
                                 num_classes=4, weight_scale=1e-1, reg=reg, dtype=DT)
    X = _randn(3, 2, 6, 6)
    y = torch.tensor([0, 3, 1])
    _model_grad_check(model, X, y, tol=1e-6)


@pytest.mark.parametrize("batchnorm, reg", [(False, 0.0), (False, 3.14), (True, 0.0), (True, 3.14)])
def test_deep_convnet_gradient_check(batchnorm, reg):
    torch.manual_seed(15)
    model = cn.DeepConvNet(input_dims=(2, 6, 6), num_filters=[3, 4], max_pools=[0], batchnorm=batchnorm,
                           num_classes=3, weight_scale=2e-1, reg=reg, dtype=DT)
    if batchnorm:  # non-trivial scale and shift
        for i in (1, 2):
            model.params[f"gamma{i}"] = torch.rand(model.params[f"gamma{i}"].shape, dtype=DT) + 0.5
            model.params[f"beta{i}"] = 0.1 * _randn(*model.params[f"beta{i}"].shape)
    X = _randn(4, 2, 6, 6)
    y = torch.tensor([0, 2, 1, 1])
    skip = ("b1", "b2") if batchnorm else ()
    _model_grad_check(model, X, y, tol=1e-6, skip=skip)


def test_deep_convnet_params_and_kaiming():
    torch.manual_seed(16)
    model = cn.DeepConvNet(input_dims=(3, 32, 32), num_filters=[8, 16, 32], max_pools=[0, 2],
                           batchnorm=True, weight_scale="kaiming", dtype=torch.float32)
    assert model.num_layers == 4
    assert len(model.params) == 4 * 3 + 2 and len(model.bn_params) == 3
    assert model.params["W1"].shape == (8, 3, 3, 3)
    assert model.params["W3"].shape == (32, 16, 3, 3)
    assert model.params["W4"].shape == (32 * 8 * 8, 10)
    assert torch.equal(model.params["gamma2"], torch.ones(16))
    w = model.params["W3"]
    assert abs(w.std().item() / math.sqrt(2 / (16 * 9)) - 1) < 0.1
    w = model.params["W4"]
    assert abs(w.std().item() / math.sqrt(1 / (32 * 8 * 8)) - 1) < 0.1


def test_deep_convnet_rejects_pools_it_cannot_apply():
    with pytest.raises(ValueError, match="not macro layers"):
        cn.DeepConvNet(input_dims=(3, 8, 8), num_filters=[4, 4], max_pools=[0, 2])
    with pytest.raises(ValueError, match="to nothing"):
        cn.DeepConvNet(input_dims=(3, 4, 8), num_filters=[4, 4, 4], max_pools=[0, 1, 2])
    model = cn.DeepConvNet(input_dims=(3, 4, 8), num_filters=[4, 4], max_pools=[0, 1])
    assert model.params["W3"].shape == (4 * 1 * 2, 10)


def test_deep_convnet_initial_loss_and_bn_modes():
    torch.manual_seed(17)
    model = cn.DeepConvNet(input_dims=(3, 8, 8), num_filters=[4, 4], max_pools=[0, 1], batchnorm=True,
                           weight_scale="kaiming", dtype=DT)
    X, y = _randn(6, 3, 8, 8), torch.randint(10, size=(6,))
    model.loss(X, y)
    assert all(p["mode"] == "train" and "running_mean" in p for p in model.bn_params)
    scores = model.loss(X)
    assert scores.shape == (6, 10)
    assert all(p["mode"] == "test" for p in model.bn_params)
    model = cn.DeepConvNet(input_dims=(3, 8, 8), num_filters=[4, 4], max_pools=[0, 1],
                           weight_scale=1e-3, dtype=DT)
    loss, _ = model.loss(X, y)
    assert abs(loss.item() - math.log(10)) < 1e-3


def test_deep_convnet_matches_torch_composition():
    """The whole forward/backward of a BN DeepConvNet vs the same net in torch.nn.functional."""
    torch.manual_seed(18)
    model = cn.DeepConvNet(input_dims=(3, 8, 6), num_filters=[4, 5, 3], max_pools=[0, 2], batchnorm=True,
                           num_classes=4, weight_scale="kaiming", reg=0.1, dtype=DT)
    X, y = _randn(5, 3, 8, 6), torch.tensor([0, 1, 2, 3, 1])
    loss, grads = model.loss(X, y)
    p = {k: v.clone().requires_grad_() for k, v in model.params.items()}
    h = X
    for i in range(3):
        h = F.conv2d(h, p[f"W{i + 1}"], p[f"b{i + 1}"], padding=1)
        h = torch.relu(F.batch_norm(h, None, None, p[f"gamma{i + 1}"], p[f"beta{i + 1}"], training=True))
        if i in (0, 2):
            h = F.max_pool2d(h, 2, 2)
    scores = h.reshape(5, -1) @ p["W4"] + p["b4"]
    ref = F.cross_entropy(scores, y) + 0.1 * sum((p[f"W{i}"] ** 2).sum() for i in range(1, 5))
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-10
    for k in p:
        if k in ("b1", "b2", "b3"):
            continue
        assert_close(grads[k], p[k].grad, 1e-8, f"grad {k}")


def _check_against_autograd(model, p, X, y, ref_scores, reg):
    """The model's loss, gradients and test-time scores vs softmax cross-entropy + reg * sum W^2
    of `ref_scores` (a torch.nn.functional composition of the params `p`), through autograd."""
    loss, grads = model.loss(X, y)
    ref = F.cross_entropy(ref_scores, y) + reg * sum((v ** 2).sum() for k, v in p.items() if k.startswith("W"))
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-10
    assert_close(model.loss(X), ref_scores.detach(), 1e-10, "test-time scores")
    for k in p:
        assert_close(grads[k], p[k].grad, 1e-8, f"grad {k}")


def test_three_layer_convnet_matches_torch_composition():
    """conv (same padding) - ReLU - 2x2 max pool - linear - ReLU - linear, vs torch.nn.functional."""
    torch.manual_seed(21)
    model = cn.ThreeLayerConvNet(input_dims=(3, 8, 6), num_filters=4, filter_size=5, hidden_dim=7,
                                 num_classes=5, weight_scale=0.3, reg=0.2, dtype=DT)
    X, y = _randn(4, 3, 8, 6), torch.tensor([0, 4, 2, 1])
    p = {k: v.clone().requires_grad_() for k, v in model.params.items()}
    h = F.max_pool2d(torch.relu(F.conv2d(X, p["W1"], p["b1"], padding=2)), 2, 2)
    h = torch.relu(h.reshape(4, -1) @ p["W2"] + p["b2"])
    _check_against_autograd(model, p, X, y, h @ p["W3"] + p["b3"], reg=0.2)


def test_deep_convnet_without_batchnorm_matches_torch_composition():
    """A DeepConvNet without batch norm (the course's one-minute net) vs torch.nn.functional."""
    torch.manual_seed(22)
    model = cn.DeepConvNet(input_dims=(3, 8, 6), num_filters=[4, 5, 3], max_pools=[0, 2], batchnorm=False,
                           num_classes=4, weight_scale="kaiming", reg=0.1, dtype=DT)
    X, y = _randn(5, 3, 8, 6), torch.tensor([0, 1, 2, 3, 1])
    p = {k: v.clone().requires_grad_() for k, v in model.params.items()}
    h = X
    for i in range(3):
        h = torch.relu(F.conv2d(h, p[f"W{i + 1}"], p[f"b{i + 1}"], padding=1))
        if i in (0, 2):
            h = F.max_pool2d(h, 2, 2)
    _check_against_autograd(model, p, X, y, h.reshape(5, -1) @ p["W4"] + p["b4"], reg=0.1)


def test_models_work_in_float32():
    torch.manual_seed(19)
    X, y = torch.randn(4, 3, 8, 8), torch.tensor([1, 2, 3, 4])
    for model in (cn.ThreeLayerConvNet(input_dims=(3, 8, 8), num_filters=4, filter_size=3, hidden_dim=8),
                  cn.DeepConvNet(input_dims=(3, 8, 8), num_filters=[4, 4], max_pools=[1], batchnorm=True,
                                 weight_scale="kaiming")):
        loss, grads = model.loss(X, y)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
        assert model.loss(X.double()).dtype == torch.float32  # inputs are cast to the model dtype


def test_deep_convnet_save_load_round_trip(tmp_path):
    torch.manual_seed(20)
    model = cn.DeepConvNet(input_dims=(3, 8, 8), num_filters=[4, 6], max_pools=[0, 1], batchnorm=True,
                           weight_scale="kaiming", reg=0.25, dtype=torch.float32)
    X, y = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4])
    model.loss(X, y)  # fills the running averages
    scores = model.loss(X)
    path = tmp_path / "deep.pth"
    model.save(str(path))
    other = cn.DeepConvNet(input_dims=(3, 8, 8), num_filters=[4, 6], max_pools=[0, 1], batchnorm=True,
                           dtype=torch.float32)
    other.load(str(path), dtype=DT, device="cpu")
    assert other.reg == 0.25 and other.batchnorm and other.max_pools == [0, 1] and other.num_layers == 3
    assert all(v.dtype == DT for v in other.params.values())
    assert other.bn_params[0]["running_mean"].dtype == DT
    for k in model.params:
        assert torch.equal(other.params[k], model.params[k].double())
    assert_close(other.loss(X), scores.double(), 1e-5, "scores after reload")
    assert other.dtype == DT
    kept = cn.DeepConvNet(input_dims=(3, 8, 8), num_filters=[4, 6], max_pools=[0, 1], batchnorm=True, dtype=DT)
    kept.load(str(path))  # dtype None: as saved (float32), running averages included
    assert kept.dtype == torch.float32 and kept.bn_params[0]["running_mean"].dtype == torch.float32
    assert torch.equal(kept.loss(X), scores)


def test_three_layer_convnet_save_load_round_trip(tmp_path):
    torch.manual_seed(21)
    model = cn.ThreeLayerConvNet(input_dims=(3, 8, 8), num_filters=4, filter_size=3, hidden_dim=8, reg=0.1)
    path = tmp_path / "three.pth"
    model.save(str(path))
    other = cn.ThreeLayerConvNet(input_dims=(3, 8, 8), num_filters=4, filter_size=3, hidden_dim=8)
    other.load(str(path))
    assert other.reg == 0.1
    for k in model.params:
        assert torch.equal(other.params[k], model.params[k])


def test_find_overfit_parameters():
    weight_scale, learning_rate = cn.find_overfit_parameters()
    assert 0 < weight_scale < 10 and 0 < learning_rate < 1


def test_create_convolutional_solver_instance():
    torch.manual_seed(22)
    data = {"X_train": torch.randn(20, 3, 32, 32), "y_train": torch.randint(10, (20,)),
            "X_val": torch.randn(10, 3, 32, 32), "y_val": torch.randint(10, (10,))}
    solver = cn.create_convolutional_solver_instance(data, torch.float32, "cpu")
    model = solver.model
    assert isinstance(model, cn.DeepConvNet)
    assert [model.params[f"W{i}"].shape[0] for i in (1, 2, 3)] == [128, 64, 32]
    assert model.max_pools == [0, 1, 2] and model.batchnorm and model.reg == 1e-5
    assert model.params["W4"].shape == (32 * 4 * 4, 10)
    assert solver.batch_size == 128 and solver.num_epochs == 10
    assert solver.optim_config["learning_rate"] == 2e-3 and solver.lr_decay == 0.8
    assert solver.update_rule.__name__ == "adam"


def test_deep_convnet_overfits_a_tiny_batch():
    """Training runs through the project's layers: the loss on 10 images falls quickly."""
    from fully_connected_networks import adam

    torch.manual_seed(23)
    model = cn.DeepConvNet(input_dims=(3, 8, 8), num_filters=[8, 8], max_pools=[0, 1], batchnorm=True,
                           weight_scale="kaiming", dtype=torch.float32)
    X, y = torch.randn(10, 3, 8, 8), torch.arange(10)
    configs = {k: {"learning_rate": 1e-2} for k in model.params}
    first = None
    for _ in range(30):
        loss, grads = model.loss(X, y)
        first = loss.item() if first is None else first
        for k in model.params:
            model.params[k], configs[k] = adam(model.params[k], grads[k], configs[k])
    assert loss.item() < 0.5 * first


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_layers_follow_device_and_dtype(device, dtype):
    torch.manual_seed(24)
    x = torch.randn(2, 3, 6, 6, dtype=dtype, device=device)
    w = torch.randn(4, 3, 3, 3, dtype=dtype, device=device)
    b = torch.randn(4, dtype=dtype, device=device)
    out, cache = cn.FastConv.forward(x, w, b, {"stride": 1, "pad": 1})
    grads = cn.FastConv.backward(torch.ones_like(out), cache)
    pooled, pcache = cn.FastMaxPool.forward(out, {"pool_height": 2, "pool_width": 2, "stride": 2})
    dpool = cn.FastMaxPool.backward(torch.ones_like(pooled), pcache)
    normed, bcache = cn.SpatialBatchNorm.forward(out, torch.ones(4, dtype=dtype, device=device),
                                                 torch.zeros(4, dtype=dtype, device=device), {"mode": "train"})
    dbn = cn.SpatialBatchNorm.backward(torch.ones_like(normed), bcache)
    for t in (out, *grads, pooled, dpool, normed, *dbn):
        assert t.dtype == dtype and t.device.type == torch.device(device).type
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    # values against torch.nn.functional + autograd in float64 on the CPU: the device's code
    # paths (e.g. the CUDA branch of the batch-norm statistics) are checked, not only shapes
    xr, wr, br = (t.detach().double().cpu().requires_grad_() for t in (x, w, b))
    ref = F.conv2d(xr, wr, br, padding=1)
    ref_grads = torch.autograd.grad(ref, (xr, wr, br), torch.ones_like(ref))
    assert_close(out.double().cpu(), ref.detach(), tol, "conv forward")
    for got, want, name in zip(grads, ref_grads, ("dx", "dw", "db")):
        assert_close(got.double().cpu(), want, tol, f"conv {name}")
    o = out.detach().double().cpu().requires_grad_()
    ref_pool = F.max_pool2d(o, 2, 2)
    assert_close(pooled.double().cpu(), ref_pool.detach(), tol, "pool forward")
    assert_close(dpool.double().cpu(), torch.autograd.grad(ref_pool, o, torch.ones_like(ref_pool))[0], tol,
                 "pool backward")
    dout_bn = torch.linspace(-1, 1, o.numel(), dtype=torch.float64).reshape(o.shape)
    normed, bcache = cn.SpatialBatchNorm.forward(out, torch.ones(4, dtype=dtype, device=device),
                                                 torch.zeros(4, dtype=dtype, device=device), {"mode": "train"})
    dx_bn = cn.SpatialBatchNorm.backward(dout_bn.to(device, dtype), bcache)[0]
    ref_bn = F.batch_norm(o, None, None, training=True, eps=1e-5)
    assert_close(normed.double().cpu(), ref_bn.detach(), 10 * tol, "batch norm forward")
    assert_close(dx_bn.double().cpu(), torch.autograd.grad(ref_bn, o, dout_bn)[0], 10 * tol, "batch norm dx")


# ---------------------------------------------------------------------------------------
# Beyond the course: the from-scratch ResNet (A3/resnet_from_scratch.py)
# ---------------------------------------------------------------------------------------
def test_resnet9_loss_and_gradients_match_torch_composition():
    import resnet_from_scratch as rs

    torch.manual_seed(25)
    model = rs.ResNet9(widths=(2, 3, 4, 4), num_classes=5, scale=0.5, label_smoothing=0.2, dtype=DT)
    for name in model.params:  # non-trivial batch-norm scales and shifts
        if name.endswith(".gamma"):
            model.params[name] = torch.rand(model.params[name].shape, dtype=DT) + 0.5
        elif name.endswith(".beta"):
            model.params[name] = 0.1 * torch.randn(model.params[name].shape, dtype=DT)
    X, y = _randn(4, 3, 16, 16), torch.tensor([0, 4, 2, 1])
    loss, grads = model.loss(X, y)
    p = {k: v.clone().requires_grad_() for k, v in model.params.items()}

    def layer(name, h, pool):
        h = F.conv2d(h, p[f"{name}.w"], padding=1)
        if pool:
            h = F.max_pool2d(h, 2, 2)
        return torch.relu(F.batch_norm(h, None, None, p[f"{name}.gamma"], p[f"{name}.beta"], training=True))

    h = layer("layer1", layer("prep", X, False), True)
    h = h + layer("res1b", layer("res1a", h, False), False)
    h = layer("layer3", layer("layer2", h, True), True)
    h = h + layer("res3b", layer("res3a", h, False), False)
    scores = 0.5 * (h.amax(dim=(2, 3)) @ p["fc.w"] + p["fc.b"])
    ref = F.cross_entropy(scores, y, label_smoothing=0.2)
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-10
    assert set(grads) == set(p)
    for k in p:
        assert_close(grads[k], p[k].grad, 1e-8, f"ResNet9 grad {k}")
    test_scores = model.loss(X)  # test mode: running statistics
    assert test_scores.shape == (4, 5) and torch.isfinite(test_scores).all()
    assert all(b["mode"] == "test" for b in model.bn_params.values())


def test_resnet9_trains_under_the_solver():
    """ResNet9 follows the Solver contract: its bn_params (a dict keyed by layer name) come back
    with the best params."""
    import resnet_from_scratch as rs
    torch.manual_seed(0)
    X = torch.randn(16, 3, 32, 32)
    y = torch.arange(16) % 10
    data = {"X_train": X, "y_train": y, "X_val": X[:8], "y_val": y[:8]}
    model = rs.ResNet9(widths=(4, 4, 4, 4), seed=0)
    solver = Solver(model, data, optim_config={"learning_rate": 1e-2}, batch_size=8, num_epochs=2,
                    verbose=False)
    solver.train()
    assert len(solver.loss_history) == 4 and len(solver.val_acc_history) == 3
    assert len(solver.best_bn_state) == len(model.bn_params) == 8
    assert all("running_mean" in layer for layer in model.bn_params.values())


def test_resnet_predict_flip_average_and_plain_scores_from_one_pass():
    import resnet_from_scratch as rs
    torch.manual_seed(0)
    model = rs.ResNet9(widths=(4, 4, 4, 4), seed=0)
    for layer in model.bn_params.values():  # test mode needs running statistics
        layer.update(running_mean=torch.zeros(4), running_var=torch.ones(4))
    X = torch.randn(6, 3, 32, 32)
    calls = []
    loss = model.loss
    model.loss = lambda xb, y=None: calls.append(len(xb)) or loss(xb, y)
    scores, plain = rs.predict(model, X, tta=True, batch=4, with_plain=True)
    assert sum(calls) == 2 * len(X)  # x and its mirror, once each
    model.loss = loss
    own = model.loss(X).softmax(dim=1)
    assert_close(plain, own, 1e-6, "plain scores")
    assert_close(scores, 0.5 * (own + model.loss(X.flip(3)).softmax(dim=1)), 1e-6, "flip average")
    assert torch.equal(rs.predict(model, X, tta=False, batch=4), plain)


def test_train_resnet_refuses_fewer_images_than_one_batch():
    import resnet_from_scratch as rs
    model = rs.ResNet9(widths=(4, 4, 4, 4), seed=0)
    data = {"X_train": torch.randn(40, 3, 16, 16), "y_train": torch.randint(10, (40,)),
            "X_test": torch.randn(8, 3, 16, 16), "y_test": torch.randint(10, (8,))}
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        rs.train_resnet(model, data, {**rs.settings(), "widths": (4, 4, 4, 4), "batch_size": 64, "epochs": 1})


def test_resnet_augment_crops_and_flips():
    import resnet_from_scratch as rs

    x = torch.arange(2 * 3 * 6 * 5, dtype=DT).view(2, 3, 6, 5)
    g = torch.Generator().manual_seed(0)
    out = rs.augment(x, pad=2, flip=True, generator=g)
    assert out.shape == x.shape
    # Every output is a flipped-or-not window of the reflect-padded image.
    padded = x.index_select(2, rs._reflect_index(6, 2, "cpu")).index_select(3, rs._reflect_index(5, 2, "cpu"))
    ref_pad = F.pad(x, (2, 2, 2, 2), mode="reflect")
    assert torch.equal(padded, ref_pad)
    for n in range(2):
        windows = [ref_pad[n, :, i:i + 6, j:j + 5] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[n], w) or torch.equal(out[n], w.flip(2)) for w in windows)
    assert torch.equal(rs.augment(x, pad=0, flip=False), x)
    # Over many images both transformations really happen, each about as often as drawn: the
    # shift (i, j) and the flip of every output are identified among all 50 candidates.
    # (8 columns: no window of the padded image is its own mirror image)
    many = torch.arange(64 * 1 * 6 * 8, dtype=DT).view(64, 1, 6, 8)
    out = rs.augment(many, pad=2, flip=True, generator=torch.Generator().manual_seed(1))
    ref_pad = F.pad(many, (2, 2, 2, 2), mode="reflect")
    shifts, flips = set(), 0
    for n in range(64):
        found = [(i, j, f) for i in range(5) for j in range(5) for f in (False, True)
                 if torch.equal(out[n], ref_pad[n, :, i:i + 6, j:j + 8].flip(2) if f else ref_pad[n, :, i:i + 6, j:j + 8])]
        assert len(found) == 1
        shifts.add(found[0][:2])
        flips += found[0][2]
    assert len(shifts) >= 15 and 16 <= flips <= 48, (len(shifts), flips)


def test_resnet_smoothed_loss_and_schedule():
    import resnet_from_scratch as rs

    torch.manual_seed(26)
    scores, y = _randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    sr = scores.clone().requires_grad_()
    ref = F.cross_entropy(sr, y, label_smoothing=0.1)
    ref.backward()
    loss, dscores = rs.smoothed_softmax_loss(scores, y, 0.1)
    assert abs(loss.item() - ref.item()) < 1e-12
    assert_close(dscores, sr.grad, 1e-10, "smoothed loss gradient")
    lrs = [rs.lr_at(s, 100, 0.4) for s in range(101)]
    assert max(lrs) == pytest.approx(0.4) and lrs[-1] == 0.0 and lrs[0] == pytest.approx(0.04)
    # every step: linear from 0.04 to 0.4 over the first 20 steps, then linear down to 0 at 100
    expected = [0.04 + (0.4 - 0.04) * s / 20 if s < 20 else 0.4 * (100 - s) / 80 for s in range(101)]
    assert lrs == pytest.approx(expected, abs=1e-12)


def test_nesterov_sgd_matches_torch_optim_sgd():
    """The ResNet's optimizer follows torch.optim.SGD(momentum, nesterov=True, weight_decay)
    over several steps (float64)."""
    import resnet_from_scratch as rs

    torch.manual_seed(26)
    w0 = torch.randn(5, 3, dtype=DT)
    grads = [torch.randn(5, 3, dtype=DT) for _ in range(4)]
    ours, config = w0.clone(), {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
    ref = w0.clone().requires_grad_()
    opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for g in grads:
        ours, config = rs.nesterov_sgd(ours, g.clone(), config)
        ref.grad = g.clone()
        opt.step()
        assert_close(ours, ref.detach(), 1e-12, "nesterov_sgd vs torch.optim.SGD")


def test_resnet_half_width_settings_change_only_the_widths(monkeypatch):
    import resnet_from_scratch as rs

    monkeypatch.setenv("EECS598_QUICK", "0")
    full, half = rs.settings(), rs.half_width_settings()
    assert half["widths"] == rs.HALF_WIDTHS == (32, 64, 128, 256)
    assert full["widths"] == (64, 128, 256, 512)
    assert {k: v for k, v in half.items() if k != "widths"} == {k: v for k, v in full.items() if k != "widths"}
    monkeypatch.setenv("EECS598_QUICK", "1")
    assert rs.half_width_settings() == rs.settings()


def test_conv_experiments_run_names_unknown_parts():
    import conv_experiments as ce

    assert "resnet_half" not in ce.PARTS and "resnet_half" in ce.OPTIONAL_PARTS
    with pytest.raises(ValueError, match=r"unknown parts \['resnet_ha'\]"):
        ce.run("cpu", parts=("resnet_ha",))


def test_conv_experiments_resnet_parts_do_not_load_the_course_split(monkeypatch):
    import conv_experiments as ce

    assert set(ce.COURSE_SPLIT_PARTS) | {"resnet"} == set(ce.PARTS)

    def no_course_split(*args, **kwargs):
        raise AssertionError("load_data() called for ResNet-only parts")

    monkeypatch.setattr(ce, "load_data", no_course_split)
    monkeypatch.setattr(ce, "resnet", lambda device: None)  # as on a CPU in full mode
    assert ce.run("cpu", parts=("resnet",)) == []


def test_three_layer_convnet_refuses_an_even_filter_size():
    with pytest.raises(ValueError, match="filter_size must be odd"):
        cn.ThreeLayerConvNet(input_dims=(3, 8, 8), filter_size=4)


def test_solver_returns_a_batchnorm_net_as_it_was_at_its_best_check():
    """The Solver puts back the params of the best validation check AND the batch-norm running
    statistics of that check: the returned net scores best_val_acc on the validation set. In
    this run (seed 1) the best check (0.70) is the 6th of 7; with the last step's running
    statistics the best params would score 0.60."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(60, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (60,), generator=g)
    X[torch.arange(60), y, :2, :2] += 1.5  # the class shows in the top-left corner of its channel
    data = {"X_train": X[:40], "y_train": y[:40], "X_val": X[40:], "y_val": y[40:]}
    torch.manual_seed(1)
    model = cn.DeepConvNet(input_dims=(3, 8, 8), num_classes=3, num_filters=[4, 4], max_pools=[0, 1],
                           batchnorm=True, weight_scale="kaiming", reg=0, dtype=torch.float64)
    solver = Solver(model, data, update_rule=cn.adam, optim_config={"learning_rate": 5e-2}, batch_size=10,
                    num_epochs=6, verbose=False)
    solver.train()
    history = solver.val_acc_history
    assert history.index(max(history)) < len(history) - 1, "the test needs a best check before the last"
    assert solver.check_accuracy(data["X_val"], data["y_val"]) == solver.best_val_acc


def test_conv_nets_train_without_autograd():
    """From scratch: a DeepConvNet with batch norm gives its gradients with autograd switched
    off, and neither convolutional_networks.py nor resnet_from_scratch.py uses torch.nn or
    autograd (the reference solutions wrapped torch.nn + autograd)."""
    import resnet_from_scratch

    torch.manual_seed(0)
    model = cn.DeepConvNet(input_dims=(3, 8, 8), num_classes=3, num_filters=[4, 4], max_pools=[0, 1],
                           batchnorm=True, dtype=torch.float64)
    with torch.inference_mode():
        _, grads = model.loss(torch.randn(5, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0]))
    assert set(grads) == set(model.params) and all(torch.isfinite(g).all() for g in grads.values())
    assert autograd_or_nn_uses(cn) == []
    assert autograd_or_nn_uses(resnet_from_scratch) == []


# --- gaps found by mutation testing: initialization of the models -------------------------

def _assert_normal(t, std, name):
    """`t` looks drawn from N(0, std^2): sample std and mean within 6 standard errors."""
    n = t.numel()
    assert abs(t.std().item() / std - 1) < 6 / math.sqrt(2 * n), (name, t.std().item(), std)
    assert abs(t.mean().item()) < 6 * std / math.sqrt(n), (name, t.mean().item())


def test_three_layer_convnet_init_follows_weight_scale():
    torch.manual_seed(0)
    model = cn.ThreeLayerConvNet(input_dims=(3, 8, 8), num_filters=16, filter_size=5, hidden_dim=50,
                                 num_classes=10, weight_scale=0.05, dtype=DT)
    for k in ("W1", "W2", "W3"):
        _assert_normal(model.params[k], 0.05, k)
    for k in ("b1", "b2", "b3"):
        assert not model.params[k].any(), k


def test_deep_convnet_init_with_a_numeric_weight_scale():
    torch.manual_seed(0)
    model = cn.DeepConvNet(input_dims=(3, 8, 8), num_filters=[16, 16], max_pools=[0], batchnorm=True,
                           weight_scale=0.05, dtype=DT)
    for i in (1, 2, 3):
        assert not model.params[f"b{i}"].any()
        _assert_normal(model.params[f"W{i}"], 0.05, f"W{i}")
    for i in (1, 2):
        assert not model.params[f"beta{i}"].any()
        assert torch.equal(model.params[f"gamma{i}"], torch.ones(16, dtype=DT))


def test_deep_convnet_uses_the_given_weight_initializer():
    """The course API's `weight_initializer(Din, Dout, K, relu, device, dtype)` replaces the
    weight_scale / Kaiming choice for every layer, and its weights are the ones used."""
    calls = []

    def init(Din, Dout, K, relu, device, dtype):
        calls.append((Din, Dout, K, relu))
        shape = (Din, Dout) if K is None else (Dout, Din, K, K)
        return torch.full(shape, 0.25, dtype=dtype, device=device)

    model = cn.DeepConvNet(input_dims=(3, 8, 8), num_filters=[4, 5], max_pools=[0], weight_initializer=init)
    assert calls == [(3, 4, 3, True), (4, 5, 3, True), (5 * 4 * 4, 10, None, False)]
    assert all((model.params[f"W{i}"] == 0.25).all() for i in (1, 2, 3))


# --- gaps found by mutation testing (each test fails on a one-line bug the others let through)


class _FakeResNet:
    """Stands in for ResNet9 in train_resnet: records the batches, returns chosen gradients.
    Test mode (y None): scores 3*e[left pixel] + 2*e[second pixel] of channel 0, row 0."""

    def __init__(self):
        self.params = {"c.w": torch.ones(3, dtype=DT), "c.gamma": torch.ones(3, dtype=DT),
                       "fc.b": torch.ones(3, dtype=DT)}
        self.seen = []

    def loss(self, X, y=None):
        if y is None:
            row = X[:, 0, 0].long()
            return 3.0 * F.one_hot(row[:, 0], 10).to(DT) + 2.0 * F.one_hot(row[:, 1], 10).to(DT)
        self.seen.append((X.clone(), y.clone()))
        return torch.tensor(0.0), {"c.w": torch.zeros(3, dtype=DT), "c.gamma": torch.ones(3, dtype=DT),
                                   "fc.b": torch.zeros(3, dtype=DT)}


def _train_fake():
    import resnet_from_scratch as rs
    N = 20
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, 2, 8, 8, generator=g, dtype=DT)
    X[:, 0] = torch.arange(N, dtype=DT).view(N, 1, 1)  # channel 0: the sample's index, everywhere
    # test images: row 0 of channel 0 reads [a, b, ..., b, b]: plain says a, the mirror says b
    Xt = torch.zeros(4, 2, 8, 8, dtype=DT)
    a, b = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])
    Xt[:, 0, 0, :] = b.to(DT).view(4, 1)
    Xt[:, 0, 0, 0] = a.to(DT)
    data = {"X_train": X, "y_train": torch.arange(N), "X_test": Xt, "y_test": a}
    config = {**rs.settings(), "batch_size": 5, "epochs": 2, "learning_rate": 0.4, "momentum": 0.0,
              "weight_decay": 0.1, "crop_pad": 2, "flip": True, "tta": True, "eval_batch": 4,
              "allow_tf32": False}
    model = _FakeResNet()
    return rs, model, X, config, rs.train_resnet(model, data, config, seed=0)


def test_train_resnet_batches_schedule_weight_decay_and_tta_accuracy():
    rs, model, X, config, res = _train_fake()
    total = 2 * (20 // 5)
    assert res["steps"] == total and len(model.seen) == total
    # labels stay with their images (channel 0 carries the index through crops and flips)
    for Xb, yb in model.seen:
        assert torch.equal(Xb[:, 0, 0, 0].long(), yb)
    # every epoch visits each image once
    for e in range(2):
        ys = torch.cat([yb for _, yb in model.seen[4 * e:4 * e + 4]])
        assert sorted(ys.tolist()) == list(range(20))
    # the images are augmented (channel 1 is not just the stored image)
    assert any(not torch.equal(Xb[:, 1], X[yb, 1]) for Xb, yb in model.seen)
    # schedule: gamma gets gradient 1, no momentum, no decay -> 1 - sum of lr_at over all steps
    lrs = [rs.lr_at(s, total, 0.4) for s in range(total)]
    assert torch.allclose(model.params["c.gamma"], torch.full((3,), 1 - sum(lrs), dtype=DT))
    # weight decay on ".w" only: c.w shrinks by prod(1 - lr * wd); fc.b (zero grad) is untouched
    assert torch.allclose(model.params["c.w"], torch.full((3,), math.prod(1 - lr * 0.1 for lr in lrs),
                                                          dtype=DT))
    assert torch.equal(model.params["fc.b"], torch.ones(3, dtype=DT))
    # test_acc is the flip-averaged prediction (says b: wrong), test_acc_no_tta the plain one (a)
    assert res["test_acc"] == 0.0 and res["test_acc_no_tta"] == 1.0


def test_resnet9_test_mode_matches_torch_composition_with_running_statistics():
    """Test mode: every batch norm uses its running statistics, and the scores are scaled."""
    import resnet_from_scratch as rs
    torch.manual_seed(3)
    model = rs.ResNet9(widths=(2, 3, 4, 4), num_classes=5, scale=0.5, dtype=DT)
    stats = {}
    for name, bn in model.bn_params.items():
        C = model.params[f"{name}.gamma"].numel()
        stats[name] = (0.3 * torch.randn(C, dtype=DT), torch.rand(C, dtype=DT) + 0.5)
        bn.update(running_mean=stats[name][0].clone(), running_var=stats[name][1].clone())
        model.params[f"{name}.gamma"] = torch.rand(C, dtype=DT) + 0.5
        model.params[f"{name}.beta"] = 0.1 * torch.randn(C, dtype=DT)
    X = torch.randn(3, 3, 16, 16, dtype=DT)
    p = model.params

    def layer(name, h, pool):
        h = F.conv2d(h, p[f"{name}.w"], padding=1)
        if pool:
            h = F.max_pool2d(h, 2, 2)
        rm, rv = stats[name]
        return torch.relu(F.batch_norm(h, rm, rv, p[f"{name}.gamma"], p[f"{name}.beta"], training=False, eps=1e-5))

    h = layer("layer1", layer("prep", X, False), True)
    h = h + layer("res1b", layer("res1a", h, False), False)
    h = layer("layer3", layer("layer2", h, True), True)
    h = h + layer("res3b", layer("res3a", h, False), False)
    ref = 0.5 * (h.amax(dim=(2, 3)) @ p["fc.w"] + p["fc.b"])
    assert torch.allclose(model.loss(X), ref, atol=1e-10)


def test_resnet_augment_reaches_every_shift_in_both_axes():
    """Offsets 0 .. 2*pad inclusive, in rows and in columns (no flips: each window is unique)."""
    import resnet_from_scratch as rs
    many = torch.arange(400 * 6 * 8, dtype=DT).view(400, 1, 6, 8)
    out = rs.augment(many, pad=2, flip=False, generator=torch.Generator().manual_seed(0))
    ref_pad = F.pad(many, (2, 2, 2, 2), mode="reflect")
    shifts = set()
    for n in range(400):
        found = [(i, j) for i in range(5) for j in range(5) if torch.equal(out[n], ref_pad[n, :, i:i + 6, j:j + 8])]
        assert len(found) == 1
        shifts.add(found[0])
    assert shifts == {(i, j) for i in range(5) for j in range(5)}


def test_resnet_load_data_normalizes_both_splits_with_training_statistics(monkeypatch):
    import resnet_from_scratch as rs
    g = torch.Generator().manual_seed(0)
    xtr = torch.rand(50, 3, 4, 4, generator=g) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    xte = torch.rand(20, 3, 4, 4, generator=g) + 5.0  # a different distribution: must not be re-centred
    ytr, yte = torch.randint(10, (50,), generator=g), torch.randint(10, (20,), generator=g)
    monkeypatch.setattr(rs.eecs598.data, "cifar10", lambda *a, **k: (xtr, ytr, xte, yte))
    monkeypatch.setattr(rs.eecs598.data, "load_cifar10_uint8", lambda *a, **k: {"source": "fake"})
    data, source = rs.load_data("cpu")
    mean = xtr.mean(dim=(0, 2, 3), keepdim=True)
    std = xtr.std(dim=(0, 2, 3), keepdim=True)
    assert torch.allclose(data["X_train"], (xtr - mean) / std, atol=1e-6)
    assert torch.allclose(data["X_test"], (xte - mean) / std, atol=1e-6)
    assert torch.allclose(data["X_train"].std(dim=(0, 2, 3)), torch.ones(3), atol=1e-5)


def test_run_resnet_builds_the_model_from_the_config(monkeypatch):
    import resnet_from_scratch as rs
    data = {"X_train": torch.zeros(1, 3, 8, 8), "y_train": torch.zeros(1, dtype=torch.long),
            "X_test": torch.zeros(1, 3, 8, 8), "y_test": torch.zeros(1, dtype=torch.long)}
    monkeypatch.setattr(rs, "load_data", lambda *a, **k: (data, "fake"))
    monkeypatch.setattr(rs, "train_resnet", lambda model, data, config, **k: {"model_seen": model})
    config = {**rs.settings(), "widths": (2, 3, 4, 5), "scale": 0.3, "label_smoothing": 0.15}
    model = rs.run_resnet("cpu", config=config)["model"]
    assert model.widths == (2, 3, 4, 5) and model.scale == 0.3 and model.label_smoothing == 0.15


def test_resnet9_init_is_kaiming_fan_in():
    """conv weights ~ N(0, 2 / (9 * C_in)), fc.w ~ N(0, 1 / w3); gamma 1, beta 0, fc.b 0."""
    import resnet_from_scratch as rs
    torch.manual_seed(0)
    w = (32, 64, 64, 128)
    m = rs.ResNet9(widths=w, dtype=DT)
    cin = {"prep": 3, "layer1": w[0], "res1a": w[1], "res1b": w[1], "layer2": w[1], "layer3": w[2],
           "res3a": w[3], "res3b": w[3]}
    for name, c in cin.items():
        _assert_normal(m.params[f"{name}.w"], math.sqrt(2.0 / (9 * c)), name)
    _assert_normal(m.params["fc.w"], math.sqrt(1.0 / w[3]), "fc.w")


def test_resnet_full_settings_match_the_documented_recipe(monkeypatch):
    """The module docstring's GPU recipe: 50k images, batch 512, 10 epochs, label smoothing,
    crops + flips, test-time flips (values as recorded in results/)."""
    import resnet_from_scratch as rs
    monkeypatch.setenv("EECS598_QUICK", "0")
    s = rs.settings()
    assert (s["num_train"], s["batch_size"], s["epochs"], s["widths"]) == (None, 512, 10, (64, 128, 256, 512))
    assert (s["learning_rate"], s["momentum"], s["weight_decay"], s["label_smoothing"]) == (0.4, 0.9, 5e-4, 0.2)
    assert (s["crop_pad"], s["flip"], s["tta"], s["scale"]) == (4, True, True, 0.125)
