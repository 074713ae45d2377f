"""
Beyond the course: the best CIFAR-10 classifier we can build from the project's own
from-scratch layers, trained with a Solver-style loop that is hand-written too.

Everything in the training path is the project's code: FastConv, FastMaxPool and
SpatialBatchNorm from convolutional_networks.py, ReLU and Linear from
fully_connected_networks.py, and, here, the residual connections, the label-smoothed
softmax loss, Nesterov SGD with weight decay, the learning-rate schedule, the data
augmentation (random crops from reflect-padded images, horizontal flips) and test-time
augmentation (averaging the predictions for an image and its mirror). No autograd, no
torch.nn, no torch.nn.functional.

The network is a ResNet-9 in the style of David Page's DAWNBench entry ("How to train your
ResNet"): a prep conv, then three stages, each a conv followed by a 2x2 max pool, batch norm
and ReLU, with a residual block of two conv-BN-ReLU layers after stages 1 and 3; a global max
pool and a linear classifier whose scores are scaled by 1/8.

    model = ResNet9(widths=(64, 128, 256, 512), device="cuda")
    result = train_resnet(model, data, settings())   # data: see load_data()

`settings()` gives the full configuration (GPU sized: 50k training images, batch 512,
10 epochs; aims at >= 90% test accuracy within about a minute on one H100/H200, not measured
in this project yet) or, in quick mode, a CPU-sized one (narrow net, 640 images, 2 epochs).
On CUDA the matrix products may use TF32 (`settings()["allow_tf32"]`).
"""
import math

import torch

import eecs598
from convolutional_networks import FastConv, FastMaxPool, SpatialBatchNorm
from eecs598.utils import fp32_precision, timer
from fully_connected_networks import Linear, ReLU

CONV = {"stride": 1, "pad": 1}
POOL = {"pool_height": 2, "pool_width": 2, "stride": 2}


# ---------------------------------------------------------------------------------------------
# Building blocks (each forward returns (out, cache); backward returns the gradients)
# ---------------------------------------------------------------------------------------------
def conv_bn_relu_forward(x, w, gamma, beta, bn_param, pool=False):
    """conv 3x3 (no bias: batch norm follows) - [2x2 max pool] - spatial batch norm - ReLU:
    x (N, C, H, W), w (F, C, 3, 3), gamma / beta (F,) -> out (N, F, H, W), or (N, F, H/2, W/2)
    with `pool`; and the cache."""
    zero_bias = x.new_zeros(w.shape[0])
    a, conv_cache = FastConv.forward(x, w, zero_bias, CONV)
    pool_cache = None
    if pool:
        a, pool_cache = FastMaxPool.forward(a, POOL)
    a, bn_cache = SpatialBatchNorm.forward(a, gamma, beta, bn_param)
    out, relu_cache = ReLU.forward(a)
    return out, (conv_cache, pool_cache, bn_cache, relu_cache)


def conv_bn_relu_backward(dout, cache):
    """dout shaped like conv_bn_relu_forward's out -> (dx, dw, dgamma, dbeta), shaped like
    x, w, gamma and beta."""
    conv_cache, pool_cache, bn_cache, relu_cache = cache
    da = ReLU.backward(dout, relu_cache)
    da, dgamma, dbeta = SpatialBatchNorm.backward(da, bn_cache)
    if pool_cache is not None:
        da = FastMaxPool.backward(da, pool_cache)
    dx, dw, _ = FastConv.backward(da, conv_cache)
    return dx, dw, dgamma, dbeta


def global_max_pool_forward(x):
    """(N, C, H, W) -> (N, C): the maximum of each channel (a max pool with one H x W window)."""
    N, C, H, W = x.shape
    out, cache = FastMaxPool.forward(x, {"pool_height": H, "pool_width": W, "stride": max(H, W)})
    return out.reshape(N, C), (cache, out.shape)


def global_max_pool_backward(dout, cache):
    """dout (N, C) -> dx (N, C, H, W): each gradient goes to its channel's (first) maximum."""
    pool_cache, shape = cache
    return FastMaxPool.backward(dout.reshape(shape), pool_cache)


def smoothed_softmax_loss(scores, y, smoothing=0.0):
    """Softmax cross-entropy against smoothed one-hot targets (1 - s on the label, s / C spread
    over all classes), averaged over the batch. Returns (loss, dscores)."""
    N, C = scores.shape
    shifted = scores - scores.max(dim=1, keepdim=True).values
    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    target = torch.full_like(scores, smoothing / C)
    target[torch.arange(N, device=scores.device), y] += 1.0 - smoothing
    loss = -(target * log_probs).sum() / N
    dscores = (log_probs.exp() - target) / N
    return loss, dscores


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------
class ResNet9(object):
    """
    prep:   conv(3 -> w0) - BN - ReLU                                   32 x 32
    stage1: conv(w0 -> w1) - pool - BN - ReLU, + residual(2 x conv-BN-ReLU)   16 x 16
    stage2: conv(w1 -> w2) - pool - BN - ReLU                           8 x 8
    stage3: conv(w2 -> w3) - pool - BN - ReLU, + residual(2 x conv-BN-ReLU)   4 x 4
    head:   global max pool - linear(w3 -> 10) - scores * scale

    params: "<layer>.w" (F, C, 3, 3) conv weights, "<layer>.gamma" / ".beta" batch-norm scale
    and shift, "fc.w" (w3, 10), "fc.b" (10,). bn_params: one dict per batch-norm layer.
    `loss(X, y=None)` follows the Solver contract (scores, or (loss, grads)).
    """

    def __init__(self, widths=(64, 128, 256, 512), num_classes=10, scale=0.125, label_smoothing=0.0,
                 dtype=torch.float32, device="cpu", seed=None):
        if seed is not None:
            torch.manual_seed(seed)
        w0, w1, w2, w3 = widths
        channels = {"prep": (3, w0), "layer1": (w0, w1), "res1a": (w1, w1), "res1b": (w1, w1),
                    "layer2": (w1, w2), "layer3": (w2, w3), "res3a": (w3, w3), "res3b": (w3, w3)}
        self.widths, self.scale, self.label_smoothing = tuple(widths), scale, label_smoothing
        self.dtype = dtype
        self.params, self.bn_params = {}, {}
        for name, (cin, cout) in channels.items():
            fan_in = cin * 9
            # Kaiming (fan-in, ReLU gain) initialization.
            self.params[f"{name}.w"] = math.sqrt(2.0 / fan_in) * torch.randn(cout, cin, 3, 3, dtype=dtype,
                                                                             device=device)
            self.params[f"{name}.gamma"] = torch.ones(cout, dtype=dtype, device=device)
            self.params[f"{name}.beta"] = torch.zeros(cout, dtype=dtype, device=device)
            self.bn_params[name] = {"mode": "train"}
        self.params["fc.w"] = math.sqrt(1.0 / w3) * torch.randn(w3, num_classes, dtype=dtype, device=device)
        self.params["fc.b"] = torch.zeros(num_classes, dtype=dtype, device=device)

    def _layer(self, name, x, pool):
        p = self.params
        return conv_bn_relu_forward(x, p[f"{name}.w"], p[f"{name}.gamma"], p[f"{name}.beta"],
                                    self.bn_params[name], pool)

    def loss(self, X, y=None):
        X = X if X.dtype == self.dtype else X.to(self.dtype)
        mode = "test" if y is None else "train"
        for bn_param in self.bn_params.values():
            bn_param["mode"] = mode
        caches = {}
        h, caches["prep"] = self._layer("prep", X, False)
        h, caches["layer1"] = self._layer("layer1", h, True)
        r, caches["res1a"] = self._layer("res1a", h, False)
        r, caches["res1b"] = self._layer("res1b", r, False)
        h = h + r
        h, caches["layer2"] = self._layer("layer2", h, True)
        h, caches["layer3"] = self._layer("layer3", h, True)
        r, caches["res3a"] = self._layer("res3a", h, False)
        r, caches["res3b"] = self._layer("res3b", r, False)
        h = h + r
        feats, gcache = global_max_pool_forward(h)
        scores, fc_cache = Linear.forward(feats, self.params["fc.w"], self.params["fc.b"])
        scores = scores * self.scale
        if y is None:
            return scores

        loss, dscores = smoothed_softmax_loss(scores, y, self.label_smoothing)
        grads = {}
        dfeats, grads["fc.w"], grads["fc.b"] = Linear.backward(dscores * self.scale, fc_cache)
        dh = global_max_pool_backward(dfeats, gcache)

        def back(name, d):
            dx, grads[f"{name}.w"], grads[f"{name}.gamma"], grads[f"{name}.beta"] = \
                conv_bn_relu_backward(d, caches[name])
            return dx

        # h3 = layer3 + res3b(res3a(layer3)): the gradient reaches layer3's output along both paths.
        dh = dh + back("res3a", back("res3b", dh))
        dh = back("layer2", back("layer3", dh))
        dh = dh + back("res1a", back("res1b", dh))
        back("prep", back("layer1", dh))
        return loss, grads


# ---------------------------------------------------------------------------------------------
# Data, augmentation, optimizer, schedule, training loop
# ---------------------------------------------------------------------------------------------
def load_data(device=None, num_train=None, num_test=None, dtype=torch.float32):
    """CIFAR-10 for the ResNet: all 50k training images (no validation split: the test set is
    only evaluated once, at the end) and the 10k test images, normalized per channel with the
    training mean and std, on `device`. Returns (data dict, source string)."""
    device = eecs598.get_device(device)
    x_train, y_train, x_test, y_test = eecs598.data.cifar10(num_train, num_test, x_dtype=dtype)
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True)
    data = {"X_train": ((x_train - mean) / std).to(device), "y_train": y_train.to(device),
            "X_test": ((x_test - mean) / std).to(device), "y_test": y_test.to(device)}
    return data, eecs598.data.load_cifar10_uint8()["source"]


def _reflect_index(size, pad, device):
    idx = torch.arange(-pad, size + pad, device=device).abs()
    return torch.where(idx >= size, 2 * (size - 1) - idx, idx)


def augment(x, pad=4, flip=True, generator=None):
    """Random crops of the reflect-padded images (shifts of up to `pad` pixels) and random
    horizontal flips, drawn independently per image. x: (N, C, H, W) -> same shape."""
    N, C, H, W = x.shape
    device = x.device
    if pad:
        x = x.index_select(2, _reflect_index(H, pad, device)).index_select(3, _reflect_index(W, pad, device))
        oy = torch.randint(0, 2 * pad + 1, (N,), generator=generator).to(device)
        ox = torch.randint(0, 2 * pad + 1, (N,), generator=generator).to(device)
        rows = (oy[:, None] + torch.arange(H, device=device)).view(N, 1, H, 1).expand(N, C, H, W + 2 * pad)
        x = x.gather(2, rows)
        cols = (ox[:, None] + torch.arange(W, device=device)).view(N, 1, 1, W).expand(N, C, H, W)
        x = x.gather(3, cols)
    if flip:
        mask = (torch.rand(N, generator=generator) < 0.5).to(device).view(N, 1, 1, 1)
        x = torch.where(mask, x.flip(3), x)
    return x


def nesterov_sgd(w, dw, config):
    """SGD with Nesterov momentum and L2 weight decay added to the gradient (the semantics of
    torch.optim.SGD(nesterov=True, weight_decay=wd)): g = dw + wd * w; v = momentum * v + g;
    w -= lr * (g + momentum * v). Updates w in place."""
    g = dw if config.get("weight_decay", 0.0) == 0.0 else dw + config["weight_decay"] * w
    v = config.get("velocity")
    v = g.clone() if v is None else v.mul_(config["momentum"]).add_(g)
    config["velocity"] = v
    w.add_(g + config["momentum"] * v, alpha=-config["learning_rate"])
    return w, config


def lr_at(step, total_steps, peak, warmup=0.2):
    """Linear warm-up from peak/10 to `peak` over the first `warmup` fraction, then linear decay to 0."""
    t = step / max(total_steps, 1)
    if t < warmup:
        return peak * (0.1 + 0.9 * t / warmup)
    return peak * max(0.0, (1 - t) / (1 - warmup))


def settings():
    """The full (GPU) configuration, or a CPU-sized one in quick mode."""
    full = {"widths": (64, 128, 256, 512), "num_train": None, "num_test": None, "epochs": 10,
            "batch_size": 512, "learning_rate": 0.4, "momentum": 0.9, "weight_decay": 5e-4,
            "label_smoothing": 0.2, "scale": 0.125, "crop_pad": 4, "flip": True, "tta": True,
            "allow_tf32": True, "eval_batch": 1000}
    quick = {**full, "widths": (16, 32, 32, 64), "num_train": 640, "num_test": 300, "epochs": 2,
             "batch_size": 64, "learning_rate": 0.2, "eval_batch": 300}
    return dict(eecs598.pick(full=full, quick=quick))


HALF_WIDTHS = (32, 64, 128, 256)


def half_width_settings():
    """The full recipe (all 50k images, 10 epochs, batch 512, the same schedule and
    regularization) at half width, HALF_WIDTHS: about a quarter of the multiply-adds, so a
    2-core CPU runs it in about 65 minutes. It checks the GPU recipe at full scale where no GPU is
    available; it is not the GPU target's figure. In quick mode, the quick settings."""
    return dict(eecs598.pick(full={**settings(), "widths": HALF_WIDTHS}, quick=settings()))


def predict(model, X, tta=True, batch=1000, with_plain=False):
    """Class probabilities (N, C) in test mode; with tta, the mean of the softmax of x and of its
    mirror. with_plain: return (scores, plain), plain being x's own softmax (without the mirror),
    from the same forward passes."""
    outs, plains = [], []
    with torch.no_grad():
        for i in range(0, X.shape[0], batch):
            xb = X[i:i + batch]
            plain = model.loss(xb).softmax(dim=1)
            plains.append(plain)
            outs.append(0.5 * (plain + model.loss(xb.flip(3)).softmax(dim=1)) if tta else plain)
    scores = torch.cat(outs)
    return (scores, torch.cat(plains)) if with_plain else scores


def train_resnet(model, data, config, seed=0, verbose=False, print_every=50):
    """Train `model` on data["X_train"], data["y_train"] (augmented each epoch) with Nesterov SGD,
    weight decay on the conv / linear weights, the warm-up + linear-decay schedule, and evaluate
    on data["X_test"], data["y_test"] (with test-time flips if config["tta"]).

    Returns a dict: test_acc, test_acc_no_tta, train_seconds (the training loop, data on device),
    eval_seconds, loss_history, steps, config.
    """
    eecs598.reset_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    X, y = data["X_train"], data["y_train"]
    N = X.shape[0]
    bs = config["batch_size"]
    if N < bs:  # whole batches only: no step would run, and the "trained" net would be the initial one
        raise ValueError(f"{N} training images are fewer than one batch of {bs}; lower config['batch_size']")
    steps_per_epoch = N // bs
    total = steps_per_epoch * config["epochs"]
    configs = {k: {"learning_rate": 0.0, "momentum": config["momentum"],
                   "weight_decay": config["weight_decay"] if (k.endswith(".w")) else 0.0}
               for k in model.params}
    losses = []
    step = 0
    with fp32_precision("tf32" if config.get("allow_tf32") else "ieee"):
        with timer() as t_train:
            for epoch in range(config["epochs"]):
                Xa = augment(X, config["crop_pad"], config["flip"], generator)
                order = torch.randperm(N, generator=generator).to(X.device)
                for i in range(steps_per_epoch):
                    idx = order[i * bs:(i + 1) * bs]
                    loss, grads = model.loss(Xa[idx], y[idx])
                    lr = lr_at(step, total, config["learning_rate"])
                    for k in model.params:
                        configs[k]["learning_rate"] = lr
                        model.params[k], configs[k] = nesterov_sgd(model.params[k], grads[k], configs[k])
                    step += 1
                    if verbose and (step % print_every == 0 or step == 1):
                        losses.append(float(loss))
                        print(f"(epoch {epoch + 1}, step {step} / {total}) loss {losses[-1]:.4f} lr {lr:.4f}")
                    elif step % 10 == 0:
                        losses.append(float(loss))
        with timer() as t_eval:
            scores, plain = predict(model, data["X_test"], tta=config["tta"], batch=config["eval_batch"],
                                    with_plain=True)
    acc = (scores.argmax(dim=1) == data["y_test"]).float().mean().item()
    acc_plain = (plain.argmax(dim=1) == data["y_test"]).float().mean().item()
    return {"test_acc": acc, "test_acc_no_tta": acc_plain, "train_seconds": t_train.seconds,
            "eval_seconds": t_eval.seconds, "loss_history": losses, "steps": step,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}}


def run_resnet(device=None, config=None, verbose=False, seed=0):
    """Load the data, build the ResNet-9 and train it with `settings()` (or `config`). Returns
    train_resnet's dict plus model, data source and data load time."""
    device = eecs598.get_device(device)
    config = settings() if config is None else config
    with timer() as t_load:
        data, source = load_data(device, config["num_train"], config["num_test"])
    model = ResNet9(widths=config["widths"], scale=config["scale"], label_smoothing=config["label_smoothing"],
                    device=device, seed=seed)
    result = train_resnet(model, data, config, seed=seed, verbose=verbose)
    return {**result, "model": model, "source": source, "load_seconds": t_load.seconds,
            "num_train": data["X_train"].shape[0], "num_test": data["X_test"].shape[0]}
