"""Unit tests for A3/fully_connected_networks.py.

References are independent of the code under test:
  * layers and models: the same maths written with torch autograd in float64 (the gradient
    of sum(out * dout) with respect to every input), or centred numeric gradients from
    eecs598.grad.compute_numeric_gradient;
  * losses: torch.nn.functional.cross_entropy / multi_margin_loss and their autograd gradients;
  * update rules: the formulas written out again below, iterated over several steps.
Tolerances are relative errors (eecs598.grad.rel_error), stated at each check.
"""

import pytest
import torch
import torch.nn.functional as F

import fully_connected_networks as fc
from eecs598.grad import compute_numeric_gradient, rel_error
from eecs598.testing import assert_close, autograd_or_nn_uses

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, dtype=F64, device="cpu"):
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype).to(device)


def _autograd(fn, inputs, dout):
    """Gradients of sum(fn(*inputs) * dout) with respect to every input (reference)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    (out * dout).sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves]


def test_hello(capsys):
    fc.hello_fully_connected_networks()
    assert capsys.readouterr().out.strip() == "Hello from fully_connected_networks.py!"


# --- layers ------------------------------------------------------------------------------

@pytest.mark.parametrize("x_shape,M", [((2, 4), 3), ((3, 2, 5), 4), ((4, 2, 3, 3), 6), ((1, 7), 1)])
def test_linear_forward_backward_vs_autograd(x_shape, M):
    D = int(torch.tensor(x_shape[1:]).prod())
    x, w, b = _randn(*x_shape, seed=1), _randn(D, M, seed=2), _randn(M, seed=3)
    dout = _randn(x_shape[0], M, seed=4)
    ref_out, (ref_dx, ref_dw, ref_db) = _autograd(lambda x, w, b: x.reshape(x.shape[0], -1) @ w + b,
                                                  [x, w, b], dout)
    out, cache = fc.Linear.forward(x, w, b)
    dx, dw, db = fc.Linear.backward(dout, cache)
    assert out.shape == (x_shape[0], M) and dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    assert_close(out, ref_out, 1e-12, "Linear out")
    assert_close(dx, ref_dx, 1e-12, "Linear dx")
    assert_close(dw, ref_dw, 1e-12, "Linear dw")
    assert_close(db, ref_db, 1e-12, "Linear db")


def test_linear_empty_batch():
    """N = 0 (an empty last batch, say): out (0, M), dx like x, dw and db zero."""
    x, w, b = _randn(0, 2, 3, seed=1), _randn(6, 4, seed=2), _randn(4, seed=3)
    out, cache = fc.Linear.forward(x, w, b)
    dx, dw, db = fc.Linear.backward(_randn(0, 4, seed=4), cache)
    assert out.shape == (0, 4) and dx.shape == (0, 2, 3)
    assert torch.equal(dw, torch.zeros_like(w)) and torch.equal(db, torch.zeros_like(b))


def test_linear_course_forward_values():
    """The course's linspace check, with the expected values printed in the course notebook."""
    num_inputs, input_shape, output_dim = 2, (4, 5, 6), 3
    input_size = num_inputs * 120
    weight_size = output_dim * 120
    x = torch.linspace(-0.1, 0.5, steps=input_size, dtype=F64).reshape(num_inputs, *input_shape)
    w = torch.linspace(-0.2, 0.3, steps=weight_size, dtype=F64).reshape(120, output_dim)
    b = torch.linspace(-0.3, 0.1, steps=output_dim, dtype=F64)
    out, _ = fc.Linear.forward(x, w, b)
    expected = torch.tensor([[1.49834967, 1.70660132, 1.91485297],
                             [3.25553199, 3.51413270, 3.77273342]], dtype=F64)
    assert_close(out, expected, 1e-7, "Linear forward (course values)")


def test_relu_forward_backward_vs_autograd_and_no_mutation():
    x = _randn(3, 4, 5, seed=5)
    x_before = x.clone()
    dout = _randn(3, 4, 5, seed=6)
    ref_out, (ref_dx,) = _autograd(lambda x: torch.where(x > 0, x, torch.zeros_like(x)), [x], dout)
    out, cache = fc.ReLU.forward(x)
    dx = fc.ReLU.backward(dout, cache)
    assert torch.equal(x, x_before), "ReLU.forward modified its input"
    assert_close(out, ref_out, 1e-15, "ReLU out")
    assert_close(dx, ref_dx, 1e-15, "ReLU dx")


def test_linear_relu_vs_autograd():
    x, w, b = _randn(4, 2, 3, seed=7), _randn(6, 5, seed=8), _randn(5, seed=9)
    dout = _randn(4, 5, seed=10)
    ref_out, (ref_dx, ref_dw, ref_db) = _autograd(
        lambda x, w, b: torch.clamp(x.reshape(x.shape[0], -1) @ w + b, min=0), [x, w, b], dout)
    out, cache = fc.Linear_ReLU.forward(x, w, b)
    dx, dw, db = fc.Linear_ReLU.backward(dout, cache)
    for ours, ref, what in [(out, ref_out, "out"), (dx, ref_dx, "dx"), (dw, ref_dw, "dw"), (db, ref_db, "db")]:
        assert_close(ours, ref, 1e-12, f"Linear_ReLU {what}")


def test_layers_numeric_gradient():
    """A second, independent reference: centred differences (course style, float64)."""
    x, w, b = _randn(3, 2, 2, seed=11), _randn(4, 3, seed=12), _randn(3, seed=13)
    dout = _randn(3, 3, seed=14)
    _, cache = fc.Linear_ReLU.forward(x, w, b)
    dx, dw, db = fc.Linear_ReLU.backward(dout, cache)
    dx_num = compute_numeric_gradient(lambda x: fc.Linear_ReLU.forward(x, w, b)[0], x, dout)
    dw_num = compute_numeric_gradient(lambda w: fc.Linear_ReLU.forward(x, w, b)[0], w, dout)
    db_num = compute_numeric_gradient(lambda b: fc.Linear_ReLU.forward(x, w, b)[0], b, dout)
    assert_close(dx, dx_num, 1e-7, "dx vs numeric")
    assert_close(dw, dw_num, 1e-7, "dw vs numeric")
    assert_close(db, db_num, 1e-7, "db vs numeric")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_layers_follow_device_and_dtype(device, dtype):
    x, w, b = (_randn(2, 3, 4, seed=s, dtype=dtype, device=device) for s in (1, 2, 3))
    w = w.reshape(12, 2)[:, :2].contiguous()
    b = b.reshape(-1)[:2].contiguous()
    out, cache = fc.Linear_ReLU.forward(x, w, b)
    dx, dw, db = fc.Linear_ReLU.backward(torch.ones_like(out), cache)
    drop, dcache = fc.Dropout.forward(out, {"p": 0.5, "mode": "train", "seed": 0})
    ddrop = fc.Dropout.backward(torch.ones_like(drop), dcache)
    for t in (out, dx, dw, db, drop, ddrop, dcache[1]):
        assert t.dtype == dtype and t.device.type == device


# --- dropout -----------------------------------------------------------------------------

def test_dropout_fixed_seed_is_reproducible_and_leaves_global_rng_alone():
    x = _randn(50, 40, seed=15)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    out1, _ = fc.Dropout.forward(x, {"p": 0.3, "mode": "train", "seed": 7})
    assert torch.equal(torch.rand(3), expected_next), "a seeded Dropout.forward changed the global RNG"
    out2, _ = fc.Dropout.forward(x, {"p": 0.3, "mode": "train", "seed": 7})
    out3, _ = fc.Dropout.forward(x, {"p": 0.3, "mode": "train", "seed": 8})
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, out3)
    out4, _ = fc.Dropout.forward(x, {"p": 0.3, "mode": "train"})
    out5, _ = fc.Dropout.forward(x, {"p": 0.3, "mode": "train"})
    assert not torch.equal(out4, out5), "without a seed, two calls should draw different masks"


@pytest.mark.parametrize("p", [0.25, 0.4, 0.7])
def test_dropout_mask_statistics(p):
    x = torch.rand(500, 500, generator=_gen(16), dtype=F64) + 10  # all positive, never 0
    out, (_, mask) = fc.Dropout.forward(x, {"p": p, "mode": "train", "seed": 123})
    n = x.numel()
    zero_frac = (out == 0).double().mean().item()
    # Binomial(n, p): 6 standard deviations.
    assert abs(zero_frac - p) < 6 * (p * (1 - p) / n) ** 0.5, f"zero fraction {zero_frac} for p={p}"
    kept = out != 0
    assert_close(out[kept], x[kept] / (1 - p), 1e-14, "kept units scaled by 1/(1-p)")
    # Inverted dropout keeps the mean: E[out] = E[x]. Given x, out_i has variance
    # x_i^2 p / (1 - p), so the mean over n units is within 6 standard errors of E[x].
    std_err = ((x * x).mean().item() * p / (1 - p) / n) ** 0.5
    assert abs(out.mean().item() - x.mean().item()) < 6 * std_err
    assert set(torch.unique(mask).tolist()) <= {0.0, 1 / (1 - p)}


def test_dropout_test_mode_is_identity_and_p0_keeps_everything():
    x = _randn(6, 7, seed=17)
    out, cache = fc.Dropout.forward(x, {"p": 0.6, "mode": "test"})
    assert torch.equal(out, x)
    dout = _randn(6, 7, seed=18)
    assert torch.equal(fc.Dropout.backward(dout, cache), dout)
    out0, _ = fc.Dropout.forward(x, {"p": 0.0, "mode": "train", "seed": 0})
    assert torch.equal(out0, x)


def test_dropout_backward_matches_mask_and_numeric():
    x = _randn(10, 12, seed=19)
    dout = _randn(10, 12, seed=20)
    param = {"p": 0.2, "mode": "train", "seed": 123}
    out, cache = fc.Dropout.forward(x, param)
    dx = fc.Dropout.backward(dout, cache)
    # The backward of out = x * m is dout * m, with m read off the forward pass.
    m = torch.where(out != 0, out / x, torch.zeros_like(x))
    assert_close(dx, dout * m, 1e-12, "Dropout dx vs the forward's mask")
    dx_num = compute_numeric_gradient(lambda x: fc.Dropout.forward(x, param)[0], x, dout)
    assert_close(dx, dx_num, 1e-8, "Dropout dx vs numeric (course: ~1e-10)")


def test_dropout_backward_follows_the_forward_mode():
    """The backward pass uses the mask of its forward pass even if the shared dropout_param
    has been switched to test mode in between (and passes dout through after a test-mode forward)."""
    x, dout = _randn(4, 5, seed=21), _randn(4, 5, seed=22)
    param = {"p": 0.5, "mode": "train", "seed": 7}
    _, cache = fc.Dropout.forward(x, param)
    mask = cache[1]
    param["mode"] = "test"
    assert torch.equal(fc.Dropout.backward(dout, cache), dout * mask)
    _, cache = fc.Dropout.forward(x, param)
    param["mode"] = "train"
    assert torch.equal(fc.Dropout.backward(dout, cache), dout)


def test_dropout_rejects_bad_p():
    with pytest.raises(ValueError):
        fc.Dropout.forward(torch.ones(2, 2), {"p": 1.0, "mode": "train"})


# --- losses ------------------------------------------------------------------------------

def _scores_and_labels(N=20, C=7, seed=21, scale=1.0, dtype=F64):
    x = scale * _randn(N, C, seed=seed, dtype=dtype)
    y = torch.randint(C, (N,), generator=_gen(seed + 1))
    return x, y


@pytest.mark.parametrize("N,C", [(1, 2), (20, 7), (50, 10)])
def test_svm_loss_vs_multi_margin_loss(N, C):
    x, y = _scores_and_labels(N, C)
    # multi_margin_loss averages the hinge terms over the C classes as well; ours sums them.
    ref_loss, (ref_dx,) = _autograd(lambda x: C * F.multi_margin_loss(x, y, p=1, margin=1.0), [x], 1.0)
    loss, dx = fc.svm_loss(x, y)
    assert_close(loss, ref_loss, 1e-12, "svm loss")
    assert_close(dx, ref_dx, 1e-12, "svm dx")


@pytest.mark.parametrize("N,C", [(1, 2), (20, 7), (50, 10)])
def test_softmax_loss_vs_cross_entropy(N, C):
    x, y = _scores_and_labels(N, C)
    ref_loss, (ref_dx,) = _autograd(lambda x: F.cross_entropy(x, y), [x], 1.0)
    loss, dx = fc.softmax_loss(x, y)
    assert_close(loss, ref_loss, 1e-12, "softmax loss")
    assert_close(dx, ref_dx, 1e-12, "softmax dx")


def test_losses_on_the_course_inputs():
    """Course check: tiny scores give svm ~ 9 (C - 1) and softmax ~ log(10)."""
    x, y = _scores_and_labels(50, 10, scale=1e-3)
    svm, _ = fc.svm_loss(x, y)
    soft, _ = fc.softmax_loss(x, y)
    assert abs(svm.item() - 9.0) < 0.01
    assert abs(soft.item() - 2.302585) < 0.01


def test_softmax_loss_is_numerically_stable():
    x, y = _scores_and_labels(10, 5, scale=1e4, dtype=torch.float32)
    loss, dx = fc.softmax_loss(x, y)
    ref = F.cross_entropy(x.double(), y)
    assert torch.isfinite(loss) and torch.isfinite(dx).all()
    assert abs(loss.item() - ref.item()) / ref.item() < 1e-5


def test_losses_do_not_modify_inputs():
    x, y = _scores_and_labels()
    x0 = x.clone()
    fc.svm_loss(x, y)
    fc.softmax_loss(x, y)
    assert torch.equal(x, x0)


def test_losses_keep_the_courses_import_path():
    """The course imports the losses from a3_helper, where it shipped them."""
    import a3_helper
    assert a3_helper.svm_loss is fc.svm_loss and a3_helper.softmax_loss is fc.softmax_loss


# --- update rules ------------------------------------------------------------------------

def _known_vectors(seed=30):
    w = torch.linspace(-0.4, 0.6, steps=20, dtype=F64).reshape(4, 5)
    grads = [_randn(4, 5, seed=seed + k) for k in range(4)]
    return w, grads


def _run_rule(rule, w, grads, config):
    w = w.clone()
    for dw in grads:
        w, config = rule(w, dw, config)
    return w, config


def test_sgd_matches_formula_and_defaults():
    w, grads = _known_vectors()
    ours, config = _run_rule(fc.sgd, w, grads, None)
    ref = w.clone()
    for dw in grads:
        ref = ref - 1e-2 * dw
    assert config["learning_rate"] == 1e-2
    assert_close(ours, ref, 1e-14, "sgd w")


def test_sgd_momentum_matches_formula():
    w, grads = _known_vectors()
    lr, mu = 1e-3, 0.9
    ours, config = _run_rule(fc.sgd_momentum, w, grads, {"learning_rate": lr})
    ref, v = w.clone(), torch.zeros_like(w)
    for dw in grads:
        v = mu * v - lr * dw
        ref = ref + v
    assert config["momentum"] == 0.9
    assert_close(ours, ref, 1e-12, "momentum w")
    assert_close(config["velocity"], v, 1e-12, "momentum velocity")


def test_sgd_momentum_course_values():
    """The course's one-step check (expected values written in the course notebook)."""
    N, D = 4, 5
    w = torch.linspace(-0.4, 0.6, steps=N * D, dtype=F64).reshape(N, D)
    dw = torch.linspace(-0.6, 0.4, steps=N * D, dtype=F64).reshape(N, D)
    v = torch.linspace(0.6, 0.9, steps=N * D, dtype=F64).reshape(N, D)
    next_w, config = fc.sgd_momentum(w, dw, {"learning_rate": 1e-3, "velocity": v})
    expected_next_w = torch.tensor([
        [0.1406, 0.20738947, 0.27417895, 0.34096842, 0.40775789],
        [0.47454737, 0.54133684, 0.60812632, 0.67491579, 0.74170526],
        [0.80849474, 0.87528421, 0.94207368, 1.00886316, 1.07565263],
        [1.14244211, 1.20923158, 1.27602105, 1.34281053, 1.4096]], dtype=F64)
    assert_close(next_w, expected_next_w, 1e-8, "momentum next_w (course)")


def test_rmsprop_matches_formula():
    w, grads = _known_vectors()
    lr, decay, eps = 1e-2, 0.99, 1e-8
    ours, config = _run_rule(fc.rmsprop, w, grads, None)
    ref, cache = w.clone(), torch.zeros_like(w)
    for dw in grads:
        cache = decay * cache + (1 - decay) * dw ** 2
        ref = ref - lr * dw / (torch.sqrt(cache) + eps)
    assert (config["learning_rate"], config["decay_rate"], config["epsilon"]) == (lr, decay, eps)
    assert_close(ours, ref, 1e-12, "rmsprop w")
    assert_close(config["cache"], cache, 1e-12, "rmsprop cache")


def test_adam_matches_formula_over_steps():
    w, grads = _known_vectors()
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    ours, config = _run_rule(fc.adam, w, grads, {"learning_rate": lr})
    ref, m, v = w.clone(), torch.zeros_like(w), torch.zeros_like(w)
    for t, dw in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * dw
        v = b2 * v + (1 - b2) * dw ** 2
        ref = ref - lr * (m / (1 - b1 ** t)) / (torch.sqrt(v / (1 - b2 ** t)) + eps)
    assert config["t"] == len(grads)
    assert (config["beta1"], config["beta2"], config["epsilon"]) == (b1, b2, eps)
    assert_close(ours, ref, 1e-12, "adam w")
    assert_close(config["m"], m, 1e-12, "adam m")
    assert_close(config["v"], v, 1e-12, "adam v")


def test_adam_defaults_and_first_step_is_lr_sized():
    """With t incremented before the bias correction, step 1 moves each weight by ~lr."""
    w = torch.zeros(3, dtype=F64)
    dw = torch.tensor([2.0, -0.5, 1e-3], dtype=F64)
    next_w, config = fc.adam(w, dw)
    assert config["learning_rate"] == 1e-3 and config["t"] == 1
    assert_close(next_w, -1e-3 * torch.sign(dw), 1e-4, "adam first step")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("rule", [fc.sgd, fc.sgd_momentum, fc.rmsprop, fc.adam])
def test_rules_follow_device_and_dtype(rule, dtype, device):
    w = torch.ones(3, 2, dtype=dtype, device=device)
    config = None
    for _ in range(2):
        w, config = rule(w, torch.full_like(w, 0.5), config)
    assert w.dtype == dtype and w.device.type == device
    assert (w < 1).all()


# --- models ------------------------------------------------------------------------------

def _reference_fc_loss(params, X, y, reg, num_layers, masks=None):
    """The FC net's loss written with plain torch ops (differentiated by autograd)."""
    h = X.reshape(X.shape[0], -1)
    for i in range(1, num_layers):
        h = torch.clamp(h @ params[f"W{i}"] + params[f"b{i}"], min=0)
        if masks is not None:
            h = h * masks[i - 1]
    scores = h @ params[f"W{num_layers}"] + params[f"b{num_layers}"]
    loss = F.cross_entropy(scores, y)
    return loss + reg * sum((params[f"W{i}"] ** 2).sum() for i in range(1, num_layers + 1)), scores


def _randomize_biases(model, seed):
    """Non-zero biases: with zero biases a sample whose hidden units are all off puts the next
    layer exactly at the ReLU kink, where autograd (gradient 1) and the layer (0) may differ."""
    for k in model.params:
        if k.startswith("b"):
            model.params[k] = 0.1 * _randn(*model.params[k].shape, seed=seed + int(k[1:]),
                                           dtype=model.params[k].dtype)


def _check_model_vs_autograd(model, X, y, reg, num_layers, tol=1e-10):
    _randomize_biases(model, 60)
    scores = model.loss(X)
    loss, grads = model.loss(X, y)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in model.params.items()}
    ref_loss, ref_scores = _reference_fc_loss(leaves, X, y, reg, num_layers)
    ref_loss.backward()
    assert set(grads) == set(model.params)
    assert_close(scores, ref_scores.detach(), tol, "scores")
    assert_close(loss, ref_loss.detach(), tol, "loss")
    for k in model.params:
        assert grads[k].shape == model.params[k].shape
        assert_close(grads[k], leaves[k].grad, tol, f"d{k}")


@pytest.mark.parametrize("reg", [0.0, 0.7])
def test_two_layer_net_vs_autograd(reg):
    torch.manual_seed(0)
    model = fc.TwoLayerNet(input_dim=12, hidden_dim=6, num_classes=4, weight_scale=0.5, reg=reg, dtype=F64)
    assert sorted(model.params) == ["W1", "W2", "b1", "b2"]
    assert model.params["W1"].shape == (12, 6) and model.params["b2"].shape == (4,)
    assert (model.params["b1"] == 0).all()
    X = _randn(5, 3, 2, 2, seed=40)
    y = torch.tensor([0, 3, 1, 2, 3])
    _check_model_vs_autograd(model, X, y, reg, 2)


@pytest.mark.parametrize("weight_scale", [1e-2, 0.05])
def test_two_layer_net_init_scale(weight_scale):
    """Both weight matrices ~ N(0, weight_scale^2) (std within 10%: 60,000 and 2,000 draws),
    biases zero, the requested dtype; `FullyConnectedNet` alike."""
    torch.manual_seed(0)
    model = fc.TwoLayerNet(input_dim=300, hidden_dim=200, num_classes=10, weight_scale=weight_scale)
    for name in ("W1", "W2"):
        std = model.params[name].std().item()
        assert 0.9 * weight_scale < std < 1.1 * weight_scale, (name, std)
        assert abs(model.params[name].mean().item()) < 0.1 * weight_scale
    assert model.params["W1"].shape == (300, 200) and model.params["W2"].shape == (200, 10)
    assert not model.params["b1"].any() and not model.params["b2"].any()
    assert model.params["W1"].dtype == torch.float32
    net = fc.FullyConnectedNet([200, 100], input_dim=300, num_classes=10, weight_scale=weight_scale)
    for name in ("W1", "W2", "W3"):
        std = net.params[name].std().item()
        assert 0.9 * weight_scale < std < 1.1 * weight_scale, (name, std)


@pytest.mark.parametrize("reg", [0.0, 3.14])
@pytest.mark.parametrize("hidden_dims", [[4], [5, 4], [4, 3, 5]])
def test_fc_net_vs_autograd(hidden_dims, reg):
    torch.manual_seed(1)
    model = fc.FullyConnectedNet(hidden_dims, input_dim=10, num_classes=3, reg=reg, weight_scale=0.5, dtype=F64)
    L = len(hidden_dims) + 1
    assert sorted(model.params) == sorted([f"W{i}" for i in range(1, L + 1)] + [f"b{i}" for i in range(1, L + 1)])
    X = _randn(6, 10, seed=41)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    _check_model_vs_autograd(model, X, y, reg, L)


@pytest.mark.parametrize("reg,dropout", [(0.0, 0.0), (3.14, 0.0), (0.0, 0.25), (0.5, 0.5)])
def test_fc_net_numeric_gradient(reg, dropout):
    """Course check: every parameter's gradient vs centred differences (float64, tiny net)."""
    torch.manual_seed(2)
    N, D, H1, H2, C = 3, 5, 4, 3, 3
    X = _randn(N, D, seed=42)
    y = torch.tensor([0, 2, 1])
    model = fc.FullyConnectedNet([H1, H2], input_dim=D, num_classes=C, reg=reg, weight_scale=0.5,
                                 dropout=dropout, seed=123, dtype=F64)
    _randomize_biases(model, 70)
    loss, grads = model.loss(X, y)
    for name in sorted(model.params):
        f = lambda _: model.loss(X, y)[0]  # noqa: E731
        grad_num = compute_numeric_gradient(f, model.params[name])
        err = rel_error(grad_num, grads[name])
        assert err < 1e-6, f"{name}: relative error {err:.2e} (reg={reg}, dropout={dropout})"


def test_fc_net_dropout_acts_in_training_only():
    """The reference never applied dropout; here the train-mode loss must see it."""
    torch.manual_seed(3)
    X = _randn(40, 8, seed=43)
    y = torch.randint(4, (40,), generator=_gen(44))
    params_from = fc.FullyConnectedNet([16, 16], input_dim=8, num_classes=4, weight_scale=0.5, dtype=F64)
    dropped = fc.FullyConnectedNet([16, 16], input_dim=8, num_classes=4, weight_scale=0.5,
                                   dropout=0.5, dtype=F64)
    plain = fc.FullyConnectedNet([16, 16], input_dim=8, num_classes=4, weight_scale=0.5, dtype=F64)
    dropped.params = {k: v.clone() for k, v in params_from.params.items()}
    plain.params = {k: v.clone() for k, v in params_from.params.items()}

    # Test mode: deterministic and identical to the same weights without dropout.
    s1, s2 = dropped.loss(X), dropped.loss(X)
    assert torch.equal(s1, s2)
    assert_close(s1, plain.loss(X), 1e-14, "test-mode scores with vs without dropout")

    # Train mode: the loss is not the loss of the test-mode scores, and it changes between calls.
    test_loss, _ = fc.softmax_loss(s1, y)
    plain_loss, _ = plain.loss(X, y)
    assert_close(plain_loss, test_loss, 1e-14, "no dropout: train loss == loss of test scores")
    train_losses = [dropped.loss(X, y)[0].item() for _ in range(3)]
    assert all(abs(t - test_loss.item()) > 1e-6 for t in train_losses), (train_losses, test_loss.item())
    assert len(set(train_losses)) == 3, "no seed: each training step should draw a new mask"
    _, grads_plain = plain.loss(X, y)
    _, grads_drop = dropped.loss(X, y)
    assert not torch.allclose(grads_plain["W1"], grads_drop["W1"])
    # And it went back to deterministic test mode afterwards.
    assert torch.equal(dropped.loss(X), s1)


def test_fc_net_dropout_matches_reference_with_the_same_masks():
    """With a fixed seed the masks are fixed; recover them from the Dropout layer and compare."""
    torch.manual_seed(4)
    D, H, C, N = 6, 5, 3, 4
    seed, p = 7, 0.4
    model = fc.FullyConnectedNet([H, H], input_dim=D, num_classes=C, weight_scale=0.5, dropout=p,
                                 seed=seed, dtype=F64)
    _randomize_biases(model, 80)
    X = _randn(N, D, seed=45)
    y = torch.tensor([0, 1, 2, 1])
    loss, grads = model.loss(X, y)
    # Same seed and shape -> the same mask at both layers (the course passes one dropout_param).
    _, (_, mask) = fc.Dropout.forward(torch.ones(N, H, dtype=F64), {"p": p, "mode": "train", "seed": seed})
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in model.params.items()}
    ref_loss, _ = _reference_fc_loss(leaves, X, y, 0.0, 3, masks=[mask, mask])
    ref_loss.backward()
    assert_close(loss, ref_loss.detach(), 1e-12, "dropout net loss")
    for k in model.params:
        assert_close(grads[k], leaves[k].grad, 1e-10, f"dropout net d{k}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_models_follow_device_and_dtype(dtype, device):
    X = torch.randn(4, 3, 2, 2, generator=_gen(46)).to(device=device, dtype=dtype)
    y = torch.tensor([0, 1, 2, 1], device=device)
    for model in (fc.TwoLayerNet(input_dim=12, hidden_dim=5, num_classes=3, reg=0.1, dtype=dtype, device=device),
                  fc.FullyConnectedNet([5, 4], input_dim=12, num_classes=3, dropout=0.3, reg=0.1,
                                       dtype=dtype, device=device)):
        scores = model.loss(X)
        loss, grads = model.loss(X, y)
        assert scores.dtype == dtype and scores.device.type == device
        assert torch.isfinite(loss)
        for k, g in grads.items():
            assert g.dtype == dtype and g.device.type == device and g.shape == model.params[k].shape


def test_models_train_without_autograd():
    """From scratch: gradients come out under inference mode (where autograd cannot be switched
    back on), and the source uses neither torch.nn nor autograd."""
    X = _randn(4, 6, seed=47)
    y = torch.tensor([0, 1, 2, 1])
    model = fc.FullyConnectedNet([5], input_dim=6, num_classes=3, dropout=0.2, dtype=F64)
    with torch.inference_mode():
        loss, grads = model.loss(X, y)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert autograd_or_nn_uses(fc) == []


def test_overfit_small_batch_loss_drops():
    """A smoke check of the whole training path (no accuracy targets): loss falls on 20 points."""
    from eecs598.solver import Solver
    torch.manual_seed(5)
    X = torch.randn(20, 15, generator=_gen(48), dtype=F64)
    y = torch.randint(5, (20,), generator=_gen(49))
    model = fc.FullyConnectedNet([20, 20], input_dim=15, num_classes=5, weight_scale=0.1, dtype=F64)
    solver = Solver(model, {"X_train": X, "y_train": y, "X_val": X, "y_val": y}, update_rule=fc.adam,
                    optim_config={"learning_rate": 1e-2}, num_epochs=30, batch_size=10, verbose=False)
    solver.train()
    assert solver.loss_history[-1] < 0.5 * solver.loss_history[0]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_save_load_round_trip(tmp_path, dropout, capsys):
    torch.manual_seed(6)
    X = _randn(3, 8, seed=50)
    net = fc.FullyConnectedNet([6, 5], input_dim=8, num_classes=4, dropout=dropout, reg=0.2, dtype=F64)
    path = tmp_path / "fc.pth"
    net.save(path)
    other = fc.FullyConnectedNet([3], input_dim=8, num_classes=4, dtype=torch.float32)
    other.load(path, dtype=F64, device="cpu")
    assert (other.num_layers, other.use_dropout, other.reg) == (3, dropout != 0, 0.2)
    assert other.dropout_param == net.dropout_param
    assert torch.equal(other.loss(X), net.loss(X))
    loaded32 = fc.FullyConnectedNet([3], input_dim=8, num_classes=4)
    loaded32.load(path, dtype=torch.float32, device="cpu")
    assert loaded32.params["W1"].dtype == torch.float32
    assert loaded32.loss(X).dtype == torch.float32

    two = fc.TwoLayerNet(input_dim=8, hidden_dim=7, num_classes=4, reg=0.3, dtype=F64)
    two.save(tmp_path / "two.pth")
    two_back = fc.TwoLayerNet(input_dim=8, hidden_dim=2, num_classes=4)
    two_back.load(tmp_path / "two.pth", dtype=F64, device="cpu")
    assert two_back.reg == 0.3 and torch.equal(two_back.loss(X), two.loss(X))

    # dtype None keeps the dtype the params were saved in, and the model's dtype follows
    kept = fc.FullyConnectedNet([3], input_dim=8, num_classes=4, dtype=torch.float32)
    kept.load(path, dtype=None)
    assert kept.dtype == F64 and all(v.dtype == F64 for v in kept.params.values())
    two_kept = fc.TwoLayerNet(input_dim=8, hidden_dim=2, num_classes=4)
    two_kept.load(tmp_path / "two.pth")
    assert torch.equal(two_kept.loss(X), two.loss(X))


# --- solver factory and hyperparameters --------------------------------------------------

def test_create_solver_instance_configuration():
    from eecs598.solver import Solver
    data = {"X_train": torch.randn(30, 3, 4, 4), "y_train": torch.randint(10, (30,)),
            "X_val": torch.randn(10, 3, 4, 4), "y_val": torch.randint(10, (10,))}
    solver = fc.create_solver_instance(data, torch.float32, "cpu")
    assert isinstance(solver, Solver)
    assert isinstance(solver.model, fc.TwoLayerNet)
    assert solver.model.params["W1"].shape == (48, 200)
    assert solver.optim_config == {"learning_rate": 0.1}, "only keys the update rule reads"
    scores = solver.model.loss(data["X_val"])
    assert scores.shape == (10, 10)


@pytest.mark.parametrize("getter", [fc.get_three_layer_network_params, fc.get_five_layer_network_params])
def test_network_params_are_positive_numbers(getter):
    weight_scale, learning_rate = getter()
    assert weight_scale > 0 and learning_rate > 0


def test_overfit_check_keeps_the_final_weights():
    """fc_experiments.overfit returns the overfitted net (its final weights), which the notebook
    saves: its accuracy on the training samples is the last check's, whatever validation said."""
    import fc_experiments
    torch.manual_seed(0)
    data = {"X_train": torch.randn(40, 12), "y_train": torch.randint(3, (40,)),
            "X_val": torch.randn(30, 12), "y_val": torch.randint(3, (30,))}
    res = fc_experiments.overfit([16], 5e-2, 5e-2, data, "cpu", num_train=40, num_epochs=6,
                                 batch_size=10, num_val=30, dtype=torch.float64)
    solver = res["solver"]
    assert solver.check_accuracy(data["X_train"], data["y_train"]) == res["final_train_acc"]
    assert res["final_train_acc"] == solver.train_acc_history[-1]


def test_load_moves_params_to_the_requested_device(tmp_path):
    """load(path, dtype, device): params AND batch-norm running statistics land on `device`
    (checked on the meta device, so that a CPU-only run checks it too)."""
    net = fc.FullyConnectedNet([5], input_dim=6, num_classes=3, dtype=torch.float64)
    net.save(tmp_path / "fc.pth")
    other = fc.FullyConnectedNet([5], input_dim=6, num_classes=3)
    other.load(tmp_path / "fc.pth", dtype=torch.float32, device="meta")
    assert all(v.device.type == "meta" and v.dtype == torch.float32 for v in other.params.values())
    import convolutional_networks as cn
    deep = cn.DeepConvNet(input_dims=(3, 8, 8), num_filters=[4], max_pools=[0], batchnorm=True)
    deep.loss(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))  # fills the running statistics
    deep.save(str(tmp_path / "deep.pth"))
    back = cn.DeepConvNet(input_dims=(3, 8, 8), num_filters=[4], max_pools=[0], batchnorm=True)
    back.load(str(tmp_path / "deep.pth"), device="meta")
    assert all(v.device.type == "meta" for v in back.params.values())
    assert back.bn_params[0]["running_mean"].device.type == "meta"


def test_create_solver_instance_training_settings():
    """The docstring's recipe: plain SGD, lr 0.1 decayed by 0.95 per epoch, 10 epochs, batch 100."""
    data = {"X_train": torch.randn(30, 12), "y_train": torch.randint(10, (30,)),
            "X_val": torch.randn(10, 12), "y_val": torch.randint(10, (10,))}
    solver = fc.create_solver_instance(data, torch.float32, "cpu")
    assert (solver.lr_decay, solver.num_epochs, solver.batch_size) == (0.95, 10, 100)
    assert solver.update_rule.__name__ == "sgd"


# --- gaps found by mutation testing: exact zeros, non-default hyperparameters, zero biases --

def test_relu_backward_is_zero_at_zero():
    """The kink: no gradient where x == 0 (as torch's relu; the docstring's "x <= 0"). Random
    normal inputs never hit it, but a zero-bias net on an all-zero input does."""
    x = torch.tensor([[-1.0, 0.0, 2.0], [0.0, 3.0, -0.5]], dtype=F64)
    dout = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64)
    leaf = x.clone().requires_grad_()
    F.relu(leaf).backward(dout)
    _, cache = fc.ReLU.forward(x)
    assert torch.equal(fc.ReLU.backward(dout, cache), leaf.grad)


def test_update_rules_read_non_default_hyperparameters():
    """Every hyperparameter comes from `config` (the other tests use the defaults, so rules
    with 1e-2, 0.9, 0.99, 0.999 or 1e-8 written in would pass them): the known vectors' steps
    against the update formulas written out."""
    w0, grads = _known_vectors()
    ours, _ = _run_rule(fc.sgd, w0, grads, {"learning_rate": 0.3})
    assert_close(ours, w0 - 0.3 * sum(grads), 1e-12, "sgd learning_rate")

    ours, _ = _run_rule(fc.sgd_momentum, w0, grads, {"learning_rate": 0.2, "momentum": 0.5})
    w, v = w0.clone(), torch.zeros_like(w0)
    for dw in grads:
        v = 0.5 * v - 0.2 * dw
        w = w + v
    assert_close(ours, w, 1e-12, "sgd_momentum momentum")

    ours, _ = _run_rule(fc.rmsprop, w0, grads, {"learning_rate": 3e-3, "decay_rate": 0.5, "epsilon": 1e-2})
    w, cache = w0.clone(), torch.zeros_like(w0)
    for dw in grads:
        cache = 0.5 * cache + 0.5 * dw ** 2
        w = w - 3e-3 * dw / (cache.sqrt() + 1e-2)
    assert_close(ours, w, 1e-12, "rmsprop decay_rate / epsilon / learning_rate")

    ours, _ = _run_rule(fc.adam, w0, grads, {"learning_rate": 3e-3, "beta1": 0.5, "beta2": 0.8, "epsilon": 1e-2})
    w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    for t, dw in enumerate(grads, 1):
        m = 0.5 * m + 0.5 * dw
        v = 0.8 * v + 0.2 * dw ** 2
        w = w - 3e-3 * (m / (1 - 0.5 ** t)) / ((v / (1 - 0.8 ** t)).sqrt() + 1e-2)
    assert_close(ours, w, 1e-12, "adam beta1 / beta2 / epsilon")


def test_fully_connected_net_biases_start_at_zero():
    torch.manual_seed(0)
    net = fc.FullyConnectedNet([20, 30], input_dim=15, num_classes=5, weight_scale=0.1)
    assert all(torch.equal(net.params[f"b{i}"], torch.zeros(d)) for i, d in ((1, 20), (2, 30), (3, 5)))
