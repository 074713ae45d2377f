"""
Convolutional networks, written from scratch: convolution, max-pooling and batch
normalization layers with hand-written forward and backward passes, the "sandwich" layers
built from them, a three-layer ConvNet, a VGG-style DeepConvNet and Kaiming initialization.

Nothing here uses torch.autograd, torch.nn or torch.nn.functional: every gradient is
computed by the backward functions below, and the networks train through them.

Two implementations of each spatial layer:
  * `Conv`, `MaxPool`: the naive loop versions (for teaching; tested, too slow to train with);
  * `FastConv`, `FastMaxPool`: vectorized versions written with tensor views and matrix
    products (im2col + GEMM for the convolution, window views for pooling). The course
    shipped these as wrappers around torch.nn + autograd; here they are the project's own.
    The networks train on these.

The code is device- and dtype-agnostic: it follows the device and dtype of its inputs (or
the `device` / `dtype` given to a model's constructor), CPU or CUDA, float32 or float64.

Conventions (those of the course):
  * each layer is a class with static `forward(...) -> (out, cache)` and
    `backward(dout, cache) -> gradients`; images are (N, C, H, W);
  * models hold `self.params` (a dict of tensors) and `loss(X, y=None)`: scores when `y` is
    None, otherwise `(loss, grads)` with `grads` keyed like `params` (the `Solver` contract);
  * regularization: loss + reg * sum(W ** 2) over the weights, gradient + 2 * reg * W.
"""
import torch

from eecs598 import Solver
from fully_connected_networks import (Linear, Linear_ReLU, ReLU, _as_dtype, adam, load_model, save_model,
                                      softmax_loss)


def hello_convolutional_networks():
    """Smoke test: prints a greeting so the notebook knows this file was imported."""
    print("Hello from convolutional_networks.py!")


def _output_size(size, kernel, stride, pad):
    """Spatial output size of a convolution / pooling window: 1 + (size + 2 * pad - kernel) // stride."""
    span = size + 2 * pad - kernel
    if span < 0:
        raise ValueError(f"window {kernel} larger than the padded input {size + 2 * pad}")
    return 1 + span // stride


# ---------------------------------------------------------------------------------------------
# Naive layers (loops)
# ---------------------------------------------------------------------------------------------
class Conv(object):

    @staticmethod
    def forward(x, w, b, conv_param):
        """
        A naive implementation of the forward pass for a convolutional layer.
        The input consists of N data points, each with C channels, height H and width W.
        We convolve each input with F different filters, where each filter spans all C
        channels and has height HH and width WW.

        Input:
        - x: Input data of shape (N, C, H, W)
        - w: Filter weights of shape (F, C, HH, WW)
        - b: Biases, of shape (F,)
        - conv_param: A dictionary with the following keys:
          - 'stride': The number of pixels between adjacent receptive fields in the
            horizontal and vertical directions.
          - 'pad': The number of pixels that will be used to zero-pad the input.

        During padding, 'pad' zeros are placed symmetrically (i.e equally on both sides)
        along the height and width axes of the input. Do not modify the original input x
        directly.

        Returns a tuple of:
        - out: Output data, of shape (N, F, H', W') where H' and W' are given by
          H' = 1 + (H + 2 * pad - HH) // stride
          W' = 1 + (W + 2 * pad - WW) // stride
        - cache: (x, w, b, conv_param)
        """
        out = None
        ### BEGIN SOLUTION
        ### HINT: zero-pad x into a new tensor (same dtype and device), then loop over n, f and the output positions: out[n, f, i, j] = sum(window * w[f]) + b[f].
        stride, pad = conv_param["stride"], conv_param["pad"]
        N, C, H, W = x.shape
        F, _, HH, WW = w.shape
        H_out = 1 + (H + 2 * pad - HH) // stride
        W_out = 1 + (W + 2 * pad - WW) // stride
        x_pad = x.new_zeros(N, C, H + 2 * pad, W + 2 * pad)
        x_pad[:, :, pad:pad + H, pad:pad + W] = x
        out = x.new_zeros(N, F, H_out, W_out)
        for n in range(N):
            for f in range(F):
                for i in range(H_out):
                    for j in range(W_out):
                        window = x_pad[n, :, i * stride:i * stride + HH, j * stride:j * stride + WW]
                        out[n, f, i, j] = (window * w[f]).sum() + b[f]
        ### END SOLUTION
        cache = (x, w, b, conv_param)
        return out, cache

    @staticmethod
    def backward(dout, cache):
        """
        A naive implementation of the backward pass for a convolutional layer.

        Inputs:
        - dout: Upstream derivatives, of shape (N, F, H', W')
        - cache: A tuple of (x, w, b, conv_param) as in Conv.forward

        Returns a tuple of:
        - dx: Gradient with respect to x, of shape (N, C, H, W)
        - dw: Gradient with respect to w, of shape (F, C, HH, WW)
        - db: Gradient with respect to b, of shape (F,)
        """
        dx, dw, db = None, None, None
        ### BEGIN SOLUTION
        ### HINT: loop like the forward pass; each output position adds dout * w[f] to the gradient of its padded-input window and dout * window to dw[f]. Crop the padding at the end (careful with pad = 0).
        x, w, b, conv_param = cache
        stride, pad = conv_param["stride"], conv_param["pad"]
        N, C, H, W = x.shape
        F, _, HH, WW = w.shape
        _, _, H_out, W_out = dout.shape
        x_pad = x.new_zeros(N, C, H + 2 * pad, W + 2 * pad)
        x_pad[:, :, pad:pad + H, pad:pad + W] = x
        dx_pad = torch.zeros_like(x_pad)
        dw = torch.zeros_like(w)
        db = dout.sum(dim=(0, 2, 3))
        for n in range(N):
            for f in range(F):
                for i in range(H_out):
                    for j in range(W_out):
                        hs, ws = i * stride, j * stride
                        g = dout[n, f, i, j]
                        dw[f] += g * x_pad[n, :, hs:hs + HH, ws:ws + WW]
                        dx_pad[n, :, hs:hs + HH, ws:ws + WW] += g * w[f]
        dx = dx_pad[:, :, pad:pad + H, pad:pad + W].clone()
        ### END SOLUTION
        return dx, dw, db


class MaxPool(object):

    @staticmethod
    def forward(x, pool_param):
        """
        A naive implementation of the forward pass for a max-pooling layer.

        Inputs:
        - x: Input data, of shape (N, C, H, W)
        - pool_param: dictionary with the following keys:
          - 'pool_height': The height of each pooling region
          - 'pool_width': The width of each pooling region
          - 'stride': The distance between adjacent pooling regions
        No padding is necessary here.

        Returns a tuple of:
        - out: Output data, of shape (N, C, H', W') where H' and W' are given by
          H' = 1 + (H - pool_height) // stride
          W' = 1 + (W - pool_width) // stride
        - cache: (x, pool_param)
        """
        out = None
        ### BEGIN SOLUTION
        ### HINT: loop over n, c and the output positions; out[n, c, i, j] is the max of the window starting at (i * stride, j * stride).
        ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
        N, C, H, W = x.shape
        H_out = 1 + (H - ph) // stride
        W_out = 1 + (W - pw) // stride
        out = x.new_zeros(N, C, H_out, W_out)
        for n in range(N):
            for c in range(C):
                for i in range(H_out):
                    for j in range(W_out):
                        out[n, c, i, j] = x[n, c, i * stride:i * stride + ph, j * stride:j * stride + pw].max()
        ### END SOLUTION
        cache = (x, pool_param)
        return out, cache

    @staticmethod
    def backward(dout, cache):
        """
        A naive implementation of the backward pass for a max-pooling layer.

        Inputs:
        - dout: Upstream derivatives, of shape (N, C, H', W')
        - cache: A tuple of (x, pool_param) as in the forward pass.

        Returns:
        - dx: Gradient with respect to x, of shape (N, C, H, W). Each window's upstream
          derivative goes to its maximum; when several elements tie for the maximum, to
          the first of them in row-major order (as PyTorch does).
        """
        dx = None
        ### BEGIN SOLUTION
        ### HINT: for each window, find the (first) argmax and add dout[n, c, i, j] to dx at that position.
        x, pool_param = cache
        ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
        N, C, H_out, W_out = dout.shape
        dx = torch.zeros_like(x)
        for n in range(N):
            for c in range(C):
                for i in range(H_out):
                    for j in range(W_out):
                        window = x[n, c, i * stride:i * stride + ph, j * stride:j * stride + pw]
                        k = int(torch.argmax(window))
                        dx[n, c, i * stride + k // pw, j * stride + k % pw] += dout[n, c, i, j]
        ### END SOLUTION
        return dx


# ---------------------------------------------------------------------------------------------
# Fast layers: the project's own vectorized implementations (given code, as in the course)
# ---------------------------------------------------------------------------------------------
class FastConv(object):
    """
    Convolution by im2col + matrix products, forward and backward.

    Stride 1 (the common case) uses a "wide" im2col: the input is zero-padded once (plus one
    spare row) and flattened per channel; the window of output (i, j) shifted by (kh, kw)
    then starts at flat offset (i + kh) * Wp + (j + kw), so for each (kh, kw) the inputs of
    all outputs form ONE contiguous run of the flat buffer. im2col is then a copy of C*KH*KW
    contiguous runs (a strided view + reshape), the product is computed on a grid Wp wide
    (the KW - 1 extra columns per row are dropped), and col2im in the backward pass is
    KH*KW additions of contiguous runs. Other strides use the classic unfold view
    (N, C, KH, KW, H', W') and strided additions for col2im.

    The batch is processed in chunks so that the im2col buffer stays small (in cache on a
    CPU); the buffer is recomputed in the backward pass from the cached padded input instead
    of being stored. `chunk_bytes` sets the budget per device type.
    """

    chunk_bytes = {"cpu": 4 << 20, "cuda": 1 << 30}

    @staticmethod
    def _chunk(N, per_sample_bytes, device):
        budget = FastConv.chunk_bytes.get(device.type, 1 << 30)
        return max(1, min(N, budget // max(per_sample_bytes, 1)))

    @staticmethod
    def _weight_grad(d2, cols):
        """sum_i d2[i] @ cols[i]^T for d2 (n, F, M) and cols (n, K, M) -> (F, K). Per-sample
        products summed afterwards write n * F * K numbers; one product over (sample, position)
        first copies the n * (F + K) * M inputs into its layout. Take the cheaper: the batched
        products for large maps, the single one for small maps with many channels (a ResNet's
        4 x 4 stage, where the per-sample products would write gigabytes at batch 512)."""
        n, F, M = d2.shape
        K = cols.shape[1]
        if n > 1 and M * (F + K) < F * K:
            return torch.tensordot(d2, cols, dims=([0, 2], [0, 2]))
        if n == 1:
            return d2[0] @ cols[0].t()
        return torch.bmm(d2, cols.transpose(1, 2)).sum(dim=0)

    @staticmethod
    def _wide_cols(xp, KH, KW, M):
        """(n, C, Hp + 1, Wp) padded buffer -> (n, C*KH*KW, M) columns on the wide grid."""
        n, C, _, Wp = xp.shape
        sN, sC, _, _ = xp.stride()
        view = xp.as_strided((n, C, KH, KW, M), (sN, sC, Wp, 1, 1), xp.storage_offset())
        return view.reshape(n, C * KH * KW, M)

    @staticmethod
    def _strided_cols(xp, KH, KW, stride):
        """(n, C, Hp, Wp) padded input -> (n, C*KH*KW, H'*W') columns."""
        v = xp.unfold(2, KH, stride).unfold(3, KW, stride)  # (n, C, H', W', KH, KW) view
        n, C, Ho, Wo = v.shape[:4]
        return v.permute(0, 1, 4, 5, 2, 3).reshape(n, C * KH * KW, Ho * Wo)

    @staticmethod
    def forward(x, w, b, conv_param):
        """
        Same contract as Conv.forward: x (N, C, H, W), w (F, C, HH, WW), b (F,),
        conv_param {'stride', 'pad'} -> out (N, F, H', W'), cache.
        """
        stride, pad = int(conv_param.get("stride", 1)), int(conv_param.get("pad", 0))
        N, C, H, W = x.shape
        F, Cw, KH, KW = w.shape
        if C != Cw:
            raise ValueError(f"input has {C} channels but the filters expect {Cw}")
        Hp, Wp = H + 2 * pad, W + 2 * pad
        Ho, Wo = _output_size(H, KH, stride, pad), _output_size(W, KW, stride, pad)
        w2 = w.reshape(F, C * KH * KW)
        out = x.new_empty(N, F, Ho, Wo)
        bias = b.view(1, F, 1, 1)
        if stride == 1:
            xp = x.new_zeros(N, C, Hp + 1, Wp)  # one spare row keeps every flat run in range
            xp[:, :, pad:pad + H, pad:pad + W] = x
            M = Ho * Wp
            chunk = FastConv._chunk(N, C * KH * KW * M * x.element_size(), x.device)
            for i in range(0, N, chunk):
                cols = FastConv._wide_cols(xp[i:i + chunk], KH, KW, M)
                wide = torch.matmul(w2, cols).view(-1, F, Ho, Wp)
                torch.add(wide[..., :Wo], bias, out=out[i:i + chunk])
        else:
            if pad:
                xp = x.new_zeros(N, C, Hp, Wp)
                xp[:, :, pad:pad + H, pad:pad + W] = x
            else:
                xp = x
            chunk = FastConv._chunk(N, C * KH * KW * Ho * Wo * x.element_size(), x.device)
            for i in range(0, N, chunk):
                cols = FastConv._strided_cols(xp[i:i + chunk], KH, KW, stride)
                res = torch.matmul(w2, cols).view(-1, F, Ho, Wo)
                torch.add(res, bias, out=out[i:i + chunk])
        cache = (xp, w, stride, pad, (N, C, H, W), chunk)
        return out, cache

    @staticmethod
    def backward(dout, cache):
        """Same contract as Conv.backward: returns dx (N, C, H, W), dw (F, C, HH, WW), db (F,)."""
        xp, w, stride, pad, (N, C, H, W), chunk = cache
        F, _, KH, KW = w.shape
        Ho, Wo = dout.shape[2], dout.shape[3]
        w2t = w.reshape(F, C * KH * KW).t()
        db = dout.sum(dim=(0, 2, 3))
        dw = w.new_zeros(F, C * KH * KW)
        dxp = torch.zeros_like(xp)
        if stride == 1:
            Wp = xp.shape[3]
            M = Ho * Wp
            dwide = dout.new_zeros(min(chunk, N), F, Ho, Wp)  # its KW - 1 extra columns stay 0
            for i in range(0, N, chunk):
                n = min(chunk, N - i)
                dwide[:n, :, :, :Wo] = dout[i:i + n]
                d2 = dwide[:n].view(n, F, M)
                cols = FastConv._wide_cols(xp[i:i + n], KH, KW, M)
                dw += FastConv._weight_grad(d2, cols)
                dcols = torch.matmul(w2t, d2).view(n, C, KH * KW, M)
                flat = dxp[i:i + n].view(n, C, -1)
                for kh in range(KH):
                    for kw in range(KW):
                        off = kh * Wp + kw
                        flat[:, :, off:off + M].add_(dcols[:, :, kh * KW + kw])
        else:
            for i in range(0, N, chunk):
                n = min(chunk, N - i)
                d2 = dout[i:i + n].reshape(n, F, Ho * Wo)
                cols = FastConv._strided_cols(xp[i:i + n], KH, KW, stride)
                dw += FastConv._weight_grad(d2, cols)
                dcols = torch.matmul(w2t, d2).view(n, C, KH, KW, Ho, Wo)
                dxi = dxp[i:i + n]
                for kh in range(KH):
                    for kw in range(KW):
                        dxi[:, :, kh:kh + stride * (Ho - 1) + 1:stride,
                            kw:kw + stride * (Wo - 1) + 1:stride].add_(dcols[:, :, kh, kw])
        dx = dxp[:, :, pad:pad + H, pad:pad + W]
        return dx, dw.view_as(w), db


class FastMaxPool(object):
    """
    Max-pooling on strided window views, forward and backward, with no unfold copies.

    Non-overlapping windows (stride == pool_height == pool_width, the common 2x2/2 case) are
    reduced in two separable stages of elementwise `torch.maximum` over strided slices: first
    across the pw columns of each window row (x (N, C, Ho*s, Wo*s) -> m (N, C, Ho*s, Wo)), then
    across the ph rows (m -> out (N, C, Ho, Wo)). Each stage records, as uint8, which slice won
    with a strict `>`, so ties go to the earlier one; rows-after-columns makes that the first
    maximum in row-major order, as PyTorch does. Backward runs the stages in reverse: dout is
    routed to the winning row of every window, then to the winning column of that row, each a
    few elementwise products written straight into strided views of the result (one gradient
    per window). Rows/columns past the last whole window get zero gradient.

    Any other stride/window (overlapping or with gaps): out is the running maximum over the
    ph * pw strided window-offset slices of x; backward sends dout, for each window offset in
    row-major order, to the positions equal to the window's maximum not preceded by an earlier
    one (the first maximum), accumulating over overlapping windows.
    """

    @staticmethod
    def forward(x, pool_param):
        """Same contract as MaxPool.forward: x (N, C, H, W) -> out (N, C, H', W'), cache."""
        ph, pw = int(pool_param.get("pool_height", 2)), int(pool_param.get("pool_width", 2))
        s = int(pool_param.get("stride", 2))
        Ho, Wo = _output_size(x.shape[2], ph, s, 0), _output_size(x.shape[3], pw, s, 0)
        if s == ph == pw:
            m, col = FastMaxPool._reduce(x[:, :, :Ho * s, :Wo * s], 3, s)  # (N, C, Ho*s, Wo)
            out, row = FastMaxPool._reduce(m, 2, s)  # (N, C, Ho, Wo)
            return out, ("tiles", x.shape, row, col, s)
        out = None
        for kh in range(ph):
            for kw in range(pw):
                window = x[:, :, kh:kh + s * (Ho - 1) + 1:s, kw:kw + s * (Wo - 1) + 1:s]
                out = window.clone() if out is None else torch.maximum(out, window)
        return out, ("general", x, out, ph, pw, s)

    @staticmethod
    def _reduce(t, dim, k):
        """Max over groups of k consecutive entries along `dim` (of size a multiple of k), as
        k strided slices. Returns (max, index of the first maximum in each group: uint8, or
        int32 for k > 256, whose indices do not fit in a byte)."""
        def part(j):
            return t[(slice(None),) * dim + (slice(j, None, k),)]
        best, index = part(0), None
        for j in range(1, k):
            candidate = part(j)
            better = (candidate > best).view(torch.uint8)  # strict: ties keep the earlier slice
            if k > 256:
                better = better.int()
            index = better if index is None else torch.maximum(index, better * j)
            best = torch.maximum(best, candidate)
        if index is None:  # k == 1
            best, index = best.clone(), torch.zeros(best.shape, dtype=torch.uint8, device=t.device)
        return best, index

    @staticmethod
    def _route(grad, index, dim, k, out):
        """Inverse of `_reduce`: write grad into slice index[i] of every group of k along `dim`
        of `out` (the other k - 1 slices get 0)."""
        def part(j):
            return out[(slice(None),) * dim + (slice(j, None, k),)]
        if k == 1:
            part(0).copy_(grad)
        elif k == 2:  # two products instead of four: the loser's share is grad - winner's
            torch.mul(grad, index.view(torch.bool), out=part(1))
            torch.sub(grad, part(1), out=part(0))
        else:
            for j in range(k):
                torch.mul(grad, index == j, out=part(j))

    @staticmethod
    def backward(dout, cache):
        """Same contract as MaxPool.backward: returns dx (N, C, H, W)."""
        if cache[0] == "tiles":
            _, shape, row, col, s = cache
            N, C, H, W = shape
            Ho, Wo = dout.shape[2], dout.shape[3]
            g = torch.empty((N, C, Ho * s, Wo), dtype=dout.dtype, device=dout.device)
            FastMaxPool._route(dout, row, 2, s, g)  # dout -> the winning row of each window
            whole = H == Ho * s and W == Wo * s
            dx = (torch.empty if whole else torch.zeros)(shape, dtype=dout.dtype, device=dout.device)
            FastMaxPool._route(g, col, 3, s, dx[:, :, :Ho * s, :Wo * s])  # -> its winning column
            return dx
        _, x, out, ph, pw, s = cache
        Ho, Wo = out.shape[2], out.shape[3]
        dx = torch.zeros_like(x)
        seen = None
        for kh in range(ph):
            for kw in range(pw):
                rows = slice(kh, kh + s * (Ho - 1) + 1, s)
                cols = slice(kw, kw + s * (Wo - 1) + 1, s)
                hit = x[:, :, rows, cols] == out
                if seen is None:
                    first, seen = hit, hit
                else:
                    first = hit & ~seen
                    seen = seen | hit
                dx[:, :, rows, cols].add_(dout * first)
        return dx


# ---------------------------------------------------------------------------------------------
# Batch normalization
# ---------------------------------------------------------------------------------------------
class BatchNorm(object):

    @staticmethod
    def forward(x, gamma, beta, bn_param):
        """
        Forward pass for batch normalization.

        During training the sample mean and (uncorrected) sample variance are computed from
        minibatch statistics and used to normalize the incoming data. During training we
        also keep an exponentially decaying running mean of the mean and variance of each
        feature, and these averages are used to normalize data at test-time.

        At each timestep we update the running averages for mean and variance using an
        exponential decay based on the momentum parameter:

        running_mean = momentum * running_mean + (1 - momentum) * sample_mean
        running_var = momentum * running_var + (1 - momentum) * sample_var

        Input:
        - x: Data of shape (N, D)
        - gamma: Scale parameter of shape (D,)
        - beta: Shift parameter of shape (D,)
        - bn_param: Dictionary with the following keys:
          - mode: 'train' or 'test'; required
          - eps: Constant for numeric stability (default 1e-5)
          - momentum: Constant for running mean / variance (default 0.9)
          - running_mean: Tensor of shape (D,) giving running mean of features (created
            as zeros, with x's dtype and device, if absent)
          - running_var: Tensor of shape (D,) giving running variance of features (created
            as zeros if absent)

        Returns a tuple of:
        - out: of shape (N, D)
        - cache: A tuple of values needed in the backward pass
        """
        mode = bn_param["mode"]
        eps = bn_param.get("eps", 1e-5)
        momentum = bn_param.get("momentum", 0.9)

        N, D = x.shape
        running_mean = bn_param.get("running_mean", torch.zeros(D, dtype=x.dtype, device=x.device))
        running_var = bn_param.get("running_var", torch.zeros(D, dtype=x.dtype, device=x.device))

        out, cache = None, None
        if mode == "train":
            ### BEGIN SOLUTION
            ### HINT: mean and biased variance over the batch (dim 0); xhat = (x - mean) / sqrt(var + eps); out = gamma * xhat + beta; update the running averages; cache what the backward passes need.
            mean = x.mean(dim=0)
            xc = x - mean
            var = (xc * xc).mean(dim=0)
            istd = 1.0 / torch.sqrt(var + eps)
            xhat = xc * istd
            out = gamma * xhat + beta
            running_mean = momentum * running_mean + (1 - momentum) * mean
            running_var = momentum * running_var + (1 - momentum) * var
            cache = {"mode": "train", "x": x, "xhat": xhat, "xc": xc, "mean": mean, "var": var,
                     "istd": istd, "gamma": gamma, "eps": eps}
            ### END SOLUTION
        elif mode == "test":
            ### BEGIN SOLUTION
            ### HINT: normalize with the running mean and variance instead of batch statistics.
            istd = 1.0 / torch.sqrt(running_var + eps)
            xhat = (x - running_mean) * istd
            out = gamma * xhat + beta
            cache = {"mode": "test", "xhat": xhat, "istd": istd, "gamma": gamma, "eps": eps}
            ### END SOLUTION
        else:
            raise ValueError('Invalid forward batchnorm mode "%s"' % mode)

        # Store the updated running means back into bn_param
        bn_param["running_mean"] = running_mean.detach()
        bn_param["running_var"] = running_var.detach()

        return out, cache

    @staticmethod
    def backward(dout, cache):
        """
        Backward pass for batch normalization, step by step through the computational
        graph of the forward pass (mean -> centred x -> variance -> 1/std -> xhat -> out).

        Inputs:
        - dout: Upstream derivatives, of shape (N, D)
        - cache: Variable of intermediates from BatchNorm.forward.

        Returns a tuple of:
        - dx: Gradient with respect to inputs x, of shape (N, D)
        - dgamma: Gradient with respect to scale parameter gamma, of shape (D,)
        - dbeta: Gradient with respect to shift parameter beta, of shape (D,)
        """
        dx, dgamma, dbeta = None, None, None
        ### BEGIN SOLUTION
        ### HINT: walk the graph backwards: dbeta, dgamma, dxhat = dout * gamma, then through 1/std, the variance, the centring and the mean. In test mode mean and variance are constants.
        xhat, istd, gamma = cache["xhat"], cache["istd"], cache["gamma"]
        dbeta = dout.sum(dim=0)
        dgamma = (dout * xhat).sum(dim=0)
        dxhat = dout * gamma
        if cache["mode"] == "test":
            dx = dxhat * istd
        else:
            xc = cache["xc"]
            N = dout.shape[0]
            dxc = dxhat * istd                         # through xhat = xc * istd
            distd = (dxhat * xc).sum(dim=0)
            dvar = distd * (-0.5) * istd ** 3          # istd = (var + eps) ** -0.5
            dxc = dxc + dvar * 2.0 * xc / N            # var = mean(xc ** 2)
            dmean = -dxc.sum(dim=0)                    # xc = x - mean
            dx = dxc + dmean / N                       # mean = mean(x)
        ### END SOLUTION

        return dx, dgamma, dbeta

    @staticmethod
    def backward_alt(dout, cache):
        """
        Alternative backward pass for batch normalization: the simplified closed form

            dx = gamma / (N * std) * (N * dout - sum(dout) - xhat * sum(dout * xhat))

        obtained by working the derivatives out on paper (a single expression, no
        intermediate graph nodes). Same inputs and outputs as BatchNorm.backward.
        """
        dx, dgamma, dbeta = None, None, None
        ### BEGIN SOLUTION
        ### HINT: dbeta = sum(dout), dgamma = sum(dout * xhat), then the closed form above (test mode: dx = dout * gamma / std).
        xhat, istd, gamma = cache["xhat"], cache["istd"], cache["gamma"]
        N = dout.shape[0]
        dbeta = dout.sum(dim=0)
        dgamma = (dout * xhat).sum(dim=0)
        if cache["mode"] == "test":
            dx = dout * (gamma * istd)
        else:
            dx = (gamma * istd / N) * (N * dout - dbeta - xhat * dgamma)
        ### END SOLUTION

        return dx, dgamma, dbeta


class SpatialBatchNorm(object):

    @staticmethod
    def forward(x, gamma, beta, bn_param):
        """
        Computes the forward pass for spatial batch normalization: batch normalization of
        each channel over the N * H * W values it takes in a minibatch.

        Inputs:
        - x: Input data of shape (N, C, H, W)
        - gamma: Scale parameter, of shape (C,)
        - beta: Shift parameter, of shape (C,)
        - bn_param: Dictionary with the following keys (as for BatchNorm.forward):
          - mode: 'train' or 'test'; required
          - eps: Constant for numeric stability (default 1e-5)
          - momentum: Constant for running mean / variance (default 0.9)
          - running_mean: Tensor of shape (C,) giving running mean of features
          - running_var: Tensor of shape (C,) giving running variance of features

        Returns a tuple of:
        - out: Output data, of shape (N, C, H, W)
        - cache: Values needed for the backward pass

        This works directly on the (N, C, H, W) layout (no transposes): the statistics are
        reductions over dims (0, 2, 3) and the normalization is one fused multiply-add
        out = x * scale + shift per channel.
        """
        mode = bn_param["mode"]
        eps = bn_param.get("eps", 1e-5)
        momentum = bn_param.get("momentum", 0.9)
        N, C, H, W = x.shape
        running_mean = bn_param.get("running_mean", torch.zeros(C, dtype=x.dtype, device=x.device))
        running_var = bn_param.get("running_var", torch.zeros(C, dtype=x.dtype, device=x.device))

        out, cache = None, None
        ### BEGIN SOLUTION
        ### HINT: the same algorithm as BatchNorm.forward with statistics over dims (0, 2, 3); you may reshape x to (N*H*W, C) and call BatchNorm.forward, or work on (N, C, H, W) directly.
        if mode == "train":
            mean, var = _channel_mean_var(x, eps)
            running_mean = momentum * running_mean + (1 - momentum) * mean
            running_var = momentum * running_var + (1 - momentum) * var
        elif mode == "test":
            mean, var = running_mean, running_var
        else:
            raise ValueError('Invalid forward batchnorm mode "%s"' % mode)
        istd = torch.rsqrt(var + eps)
        scale = gamma * istd
        shift = beta - mean * scale
        out = torch.addcmul(shift.view(1, C, 1, 1), x, scale.view(1, C, 1, 1))
        cache = {"mode": mode, "x": x, "mean": mean, "istd": istd, "gamma": gamma}
        ### END SOLUTION

        bn_param["running_mean"] = running_mean.detach()
        bn_param["running_var"] = running_var.detach()
        return out, cache

    @staticmethod
    def backward(dout, cache):
        """
        Computes the backward pass for spatial batch normalization.

        Inputs:
        - dout: Upstream derivatives, of shape (N, C, H, W)
        - cache: Values from the forward pass

        Returns a tuple of:
        - dx: Gradient with respect to inputs, of shape (N, C, H, W)
        - dgamma: Gradient with respect to scale parameter, of shape (C,)
        - dbeta: Gradient with respect to shift parameter, of shape (C,)
        """
        dx, dgamma, dbeta = None, None, None
        ### BEGIN SOLUTION
        ### HINT: the closed form of BatchNorm.backward_alt with sums over dims (0, 2, 3) (M = N*H*W values per channel).
        x, mean, istd, gamma = cache["x"], cache["mean"], cache["istd"], cache["gamma"]
        C = x.shape[1]
        M = x.numel() // C
        shape = (1, C, 1, 1)
        dbeta = _channel_sum(dout)
        # Like _channel_mean_var: the fast forms below (sums over x itself) lose about
        # eps_dtype * mean^2 / var of relative precision, so on the CPU, when a channel's mean is
        # large against its spread, they run on the centred x - mean instead (one more pass). An
        # accelerator keeps the fast forms: the test would make the host wait for the device at
        # every layer. The loss grows as (mean / std)^2: in float32, about 5e-6 relative at a
        # mean of 10 standard deviations, 3e-4 at 100 and 4e-2 at 1000 (a nearly dead channel).
        # Training does not notice; a float32 gradient check of such a channel on a GPU would
        # (check in float64, or on the CPU).
        centre = x.device.type == "cpu" and bool(
            (torch.finfo(x.dtype).eps * (mean * istd).square() > _CANCELLATION_TOLERANCE).any())
        if centre:
            x = x - mean.view(shape)
            mean = torch.zeros_like(mean)
        # sum(dout * xhat) = (sum(dout * x) - mean * sum(dout)) / std
        dgamma = (_channel_dot(dout, x) - mean * dbeta) * istd
        k1 = gamma * istd
        if cache["mode"] == "test":
            dx = dout * k1.view(shape)
        else:
            # dx = k1 * (dout - dbeta / M - xhat * dgamma / M), written as k1*dout + k2*x + k3
            k2 = -k1 * istd * dgamma / M
            k3 = -k1 * dbeta / M - k2 * mean
            dx = torch.addcmul(k3.view(shape), dout, k1.view(shape))
            dx.addcmul_(x, k2.view(shape))
        ### END SOLUTION

        return dx, dgamma, dbeta


def _rows(t):
    """(N, C, H, W) -> (N, C, H*W), a view when possible."""
    return t.reshape(t.shape[0], t.shape[1], -1)


def _channel_sum(t):
    """Sum of an (N, C, H, W) tensor over dims (0, 2, 3), as two contiguous reductions."""
    return _rows(t).sum(dim=2).sum(dim=0)


def _channel_dot(a, b):
    """sum over (0, 2, 3) of a * b for two (N, C, H, W) tensors."""
    return torch.linalg.vecdot(_rows(a), _rows(b), dim=2).sum(dim=0)


# The relative precision the fast batch-norm formulas (sums over x, not x - mean) may lose,
# eps_dtype * mean^2 / var, before the exact centred computation is used instead: in float32
# when a channel's mean exceeds about 3 standard deviations (then within a few times torch's
# own float32 error), in float64 practically never.
_CANCELLATION_TOLERANCE = 1e-6


def _channel_mean_var(x, eps=1e-5):
    """Per-channel mean and biased variance of an (N, C, H, W) tensor.

    On CUDA: torch.var_mean (Welford, one pass). On the CPU, where that is several times
    slower than a plain reduction, from per-channel sums and sums of squares (two fast
    contiguous reductions): var = E[x^2] - mean^2. That formula loses about
    eps_dtype * E[x^2] / var of relative precision, so when the data's mean is large against
    its spread (beyond _CANCELLATION_TOLERANCE) the exact two-pass torch.var_mean is used instead.
    """
    if x.device.type != "cpu":
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        return mean, var
    rows = _rows(x)
    M = rows.shape[0] * rows.shape[2]
    mean = rows.sum(dim=2).sum(dim=0) / M
    mean_sq = torch.linalg.vector_norm(rows, dim=2).square().sum(dim=0) / M
    var = (mean_sq - mean.square()).clamp(min=0)
    if bool((torch.finfo(x.dtype).eps * mean_sq > _CANCELLATION_TOLERANCE * (var + eps)).any()):
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    return mean, var


# ---------------------------------------------------------------------------------------------
# Sandwich layers (given code, as in the course): they train on FastConv / FastMaxPool
# ---------------------------------------------------------------------------------------------
class Conv_ReLU(object):

    @staticmethod
    def forward(x, w, b, conv_param):
        """
        A convenience layer that performs a convolution followed by a ReLU.
        Inputs:
        - x: Input to the convolutional layer, (N, C, H, W)
        - w, b, conv_param: Weights (F, C, HH, WW), biases (F,) and parameters of the conv
        Returns a tuple of:
        - out: Output from the ReLU, (N, F, H', W')
        - cache: Object to give to the backward pass
        """
        a, conv_cache = FastConv.forward(x, w, b, conv_param)
        out, relu_cache = ReLU.forward(a)
        cache = (conv_cache, relu_cache)
        return out, cache

    @staticmethod
    def backward(dout, cache):
        """
        Backward pass for the conv-relu convenience layer: returns (dx, dw, db).
        """
        conv_cache, relu_cache = cache
        da = ReLU.backward(dout, relu_cache)
        dx, dw, db = FastConv.backward(da, conv_cache)
        return dx, dw, db


class Conv_ReLU_Pool(object):

    @staticmethod
    def forward(x, w, b, conv_param, pool_param):
        """
        A convenience layer that performs a convolution, a ReLU, and a pool.
        Inputs:
        - x: Input to the convolutional layer, (N, C, H, W)
        - w, b, conv_param: Weights (F, C, HH, WW), biases (F,) and parameters of the conv
        - pool_param: Parameters for the pooling layer
        Returns a tuple of:
        - out: Output from the pooling layer, (N, F, H'', W'')
        - cache: Object to give to the backward pass
        """
        a, conv_cache = FastConv.forward(x, w, b, conv_param)
        s, relu_cache = ReLU.forward(a)
        out, pool_cache = FastMaxPool.forward(s, pool_param)
        cache = (conv_cache, relu_cache, pool_cache)
        return out, cache

    @staticmethod
    def backward(dout, cache):
        """
        Backward pass for the conv-relu-pool convenience layer: returns (dx, dw, db).
        """
        conv_cache, relu_cache, pool_cache = cache
        ds = FastMaxPool.backward(dout, pool_cache)
        da = ReLU.backward(ds, relu_cache)
        dx, dw, db = FastConv.backward(da, conv_cache)
        return dx, dw, db


class Linear_BatchNorm_ReLU(object):

    @staticmethod
    def forward(x, w, b, gamma, beta, bn_param):
        """
        Convenience layer that performs an linear transform, batch normalization, and ReLU.
        Inputs:
        - x: Array of shape (N, D1); input to the linear layer
        - w, b: Arrays of shape (D1, D2) and (D2,) giving the weight and bias for the
          linear transform.
        - gamma, beta: Arrays of shape (D2,) and (D2,) giving scale and shift parameters
          for batch normalization.
        - bn_param: Dictionary of parameters for batch normalization.
        Returns:
        - out: Output from ReLU, of shape (N, D2)
        - cache: Object to give to the backward pass.
        """
        a, fc_cache = Linear.forward(x, w, b)
        a_bn, bn_cache = BatchNorm.forward(a, gamma, beta, bn_param)
        out, relu_cache = ReLU.forward(a_bn)
        cache = (fc_cache, bn_cache, relu_cache)
        return out, cache

    @staticmethod
    def backward(dout, cache):
        """
        Backward pass for the linear-batchnorm-relu convenience layer:
        returns (dx, dw, db, dgamma, dbeta).
        """
        fc_cache, bn_cache, relu_cache = cache
        da_bn = ReLU.backward(dout, relu_cache)
        da, dgamma, dbeta = BatchNorm.backward_alt(da_bn, bn_cache)
        dx, dw, db = Linear.backward(da, fc_cache)
        return dx, dw, db, dgamma, dbeta


class Conv_BatchNorm_ReLU(object):

    @staticmethod
    def forward(x, w, b, gamma, beta, conv_param, bn_param):
        """conv - spatial batch norm - ReLU: x (N, C, H, W), w (F, C, HH, WW), b / gamma / beta
        (F,) -> (out (N, F, H', W'), cache), H' and W' as FastConv gives them."""
        a, conv_cache = FastConv.forward(x, w, b, conv_param)
        an, bn_cache = SpatialBatchNorm.forward(a, gamma, beta, bn_param)
        out, relu_cache = ReLU.forward(an)
        cache = (conv_cache, bn_cache, relu_cache)
        return out, cache

    @staticmethod
    def backward(dout, cache):
        """Backward pass: returns (dx, dw, db, dgamma, dbeta)."""
        conv_cache, bn_cache, relu_cache = cache
        dan = ReLU.backward(dout, relu_cache)
        da, dgamma, dbeta = SpatialBatchNorm.backward(dan, bn_cache)
        dx, dw, db = FastConv.backward(da, conv_cache)
        return dx, dw, db, dgamma, dbeta


class Conv_BatchNorm_ReLU_Pool(object):

    @staticmethod
    def forward(x, w, b, gamma, beta, conv_param, bn_param, pool_param):
        """conv - spatial batch norm - ReLU - max pool: x (N, C, H, W), w (F, C, HH, WW),
        b / gamma / beta (F,) -> (out (N, F, H'', W''), cache), the conv output pooled by
        `pool_param`."""
        a, conv_cache = FastConv.forward(x, w, b, conv_param)
        an, bn_cache = SpatialBatchNorm.forward(a, gamma, beta, bn_param)
        s, relu_cache = ReLU.forward(an)
        out, pool_cache = FastMaxPool.forward(s, pool_param)
        cache = (conv_cache, bn_cache, relu_cache, pool_cache)
        return out, cache

    @staticmethod
    def backward(dout, cache):
        """Backward pass: returns (dx, dw, db, dgamma, dbeta)."""
        conv_cache, bn_cache, relu_cache, pool_cache = cache
        ds = FastMaxPool.backward(dout, pool_cache)
        dan = ReLU.backward(ds, relu_cache)
        da, dgamma, dbeta = SpatialBatchNorm.backward(dan, bn_cache)
        dx, dw, db = FastConv.backward(da, conv_cache)
        return dx, dw, db, dgamma, dbeta


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def _same_device(a, b):
    """True when devices a and b are the same ('cuda' without an index is the current device)."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


class ThreeLayerConvNet(object):
    """
    A three-layer convolutional network with the following architecture:
    conv - relu - 2x2 max pool - linear - relu - linear - softmax
    The network operates on minibatches of data that have shape (N, C, H, W)
    consisting of N images, each with height H and width W and with C input
    channels.
    """

    def __init__(self, input_dims=(3, 32, 32), num_filters=32, filter_size=7,
                 hidden_dim=100, num_classes=10, weight_scale=1e-3, reg=0.0,
                 dtype=torch.float, device="cpu"):
        """
        Initialize a new network.
        Inputs:
        - input_dims: Tuple (C, H, W) giving size of input data
        - num_filters: Number of filters to use in the convolutional layer
        - filter_size: Width/height of filters to use in convolutional layer (odd; the
          convolution uses stride 1 and 'same' padding (filter_size - 1) // 2)
        - hidden_dim: Number of units to use in fully-connected hidden layer
        - num_classes: Number of scores to produce from the final linear layer.
        - weight_scale: Scalar giving standard deviation for random initialization
          of weights (biases start at zero).
        - reg: Scalar giving L2 regularization strength
        - dtype: A torch data type object; all computations will be performed using
          this datatype. float is faster but less accurate, so you should use
          double for numeric gradient checking.
        - device: device to use for computation. 'cpu' or 'cuda'
        """
        if filter_size % 2 != 1:
            raise ValueError(f"filter_size must be odd ('same' padding), got {filter_size}")
        self.params = {}
        self.reg = reg
        self.dtype = dtype

        ### BEGIN SOLUTION
        ### HINT: W1 (F, C, K, K), b1 (F,); the pooled conv output has F * (H // 2) * (W // 2) values, so W2 is (F * H/2 * W/2, hidden_dim); W3 (hidden_dim, num_classes). Weights ~ weight_scale * randn, biases zero.
        C, H, W = input_dims
        self.params["W1"] = weight_scale * torch.randn(num_filters, C, filter_size, filter_size,
                                                       dtype=dtype, device=device)
        self.params["b1"] = torch.zeros(num_filters, dtype=dtype, device=device)
        self.params["W2"] = weight_scale * torch.randn(num_filters * (H // 2) * (W // 2), hidden_dim,
                                                       dtype=dtype, device=device)
        self.params["b2"] = torch.zeros(hidden_dim, dtype=dtype, device=device)
        self.params["W3"] = weight_scale * torch.randn(hidden_dim, num_classes, dtype=dtype, device=device)
        self.params["b3"] = torch.zeros(num_classes, dtype=dtype, device=device)
        ### END SOLUTION

    def save(self, path):
        save_model(self, path, ("reg", "dtype", "params"))

    def load(self, path, dtype=None, device="cpu"):
        load_model(self, path, ("reg", "dtype", "params"), dtype, device)

    def loss(self, X, y=None):
        """
        Evaluate loss and gradient for the three-layer convolutional network.
        Input / output: Same API as TwoLayerNet.
        """
        X = _as_dtype(X, self.params)
        W1, b1 = self.params["W1"], self.params["b1"]
        W2, b2 = self.params["W2"], self.params["b2"]
        W3, b3 = self.params["W3"], self.params["b3"]

        # pass conv_param to the forward pass for the convolutional layer
        # Padding and stride chosen to preserve the input spatial size
        filter_size = W1.shape[2]
        conv_param = {"stride": 1, "pad": (filter_size - 1) // 2}

        # pass pool_param to the forward pass for the max-pooling layer
        pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}

        scores = None
        ### BEGIN SOLUTION
        ### HINT: Conv_ReLU_Pool, then Linear_ReLU, then Linear.
        h1, cache1 = Conv_ReLU_Pool.forward(X, W1, b1, conv_param, pool_param)
        h2, cache2 = Linear_ReLU.forward(h1, W2, b2)
        scores, cache3 = Linear.forward(h2, W3, b3)
        ### END SOLUTION

        if y is None:
            return scores

        loss, grads = 0.0, {}
        ### BEGIN SOLUTION
        ### HINT: softmax_loss plus reg * sum of squared weights (W1, W2, W3); backpropagate through the three layers and add 2 * reg * W to each weight gradient.
        loss, dscores = softmax_loss(scores, y)
        loss = loss + self.reg * ((W1 * W1).sum() + (W2 * W2).sum() + (W3 * W3).sum())
        dh2, grads["W3"], grads["b3"] = Linear.backward(dscores, cache3)
        dh1, grads["W2"], grads["b2"] = Linear_ReLU.backward(dh2, cache2)
        _, grads["W1"], grads["b1"] = Conv_ReLU_Pool.backward(dh1, cache1)
        for name, W in (("W1", W1), ("W2", W2), ("W3", W3)):
            grads[name] = grads[name] + 2 * self.reg * W
        ### END SOLUTION

        return loss, grads


class DeepConvNet(object):
    """
    A convolutional neural network with an arbitrary number of convolutional
    layers in VGG-Net style. All convolution layers will use kernel size 3 and
    padding 1 to preserve the feature map size, and all pooling layers will be
    max pooling layers with 2x2 receptive fields and a stride of 2 to halve the
    size of the feature map.

    The network will have the following architecture:

    {conv - [batchnorm?] - relu - [pool?]} x (L - 1) - linear

    Each {...} structure is a "macro layer" consisting of a convolution layer,
    an optional batch normalization layer, a ReLU nonlinearity, and an optional
    pooling layer. After L-1 such macro layers, a single fully-connected layer
    is used to predict the class scores.

    The network operates on minibatches of data that have shape (N, C, H, W)
    consisting of N images, each with height H and width W and with C input
    channels.

    Parameters: W1..WL, b1..bL (macro layer i uses Wi (F_i, F_{i-1}, 3, 3) and bi; WL is
    the final linear layer), and with batchnorm gamma1..gamma{L-1}, beta1..beta{L-1}.
    """

    def __init__(self, input_dims=(3, 32, 32), num_filters=[8, 8, 8, 8, 8],
                 max_pools=[0, 1, 2, 3, 4], batchnorm=False, num_classes=10,
                 weight_scale=1e-3, reg=0.0, weight_initializer=None,
                 dtype=torch.float, device="cpu"):
        """
        Initialize a new network.

        Inputs:
        - input_dims: Tuple (C, H, W) giving size of input data
        - num_filters: List of length (L - 1) giving the number of convolutional
          filters to use in each macro layer.
        - max_pools: List of integers giving the indices of the macro layers that
          should have max pooling (zero-indexed).
        - batchnorm: Whether to include batch normalization in each macro layer
        - num_classes: Number of scores to produce from the final linear layer.
        - weight_scale: Scalar giving standard deviation for random initialization
          of weights, or the string "kaiming" to use Kaiming initialization instead
        - reg: Scalar giving L2 regularization strength. L2 regularization should
          only be applied to convolutional and fully-connected weight matrices;
          it should not be applied to biases or to batchnorm scale and shifts.
        - weight_initializer: optional function (Din, Dout, K, relu, device, dtype) ->
          weight tensor, used instead of weight_scale (K=None for the linear layer).
        - dtype: A torch data type object; all computations will be performed using
          this datatype. float is faster but less accurate, so you should use
          double for numeric gradient checking.
        - device: device to use for computation. 'cpu' or 'cuda'
        """
        self.params = {}
        self.num_layers = len(num_filters) + 1
        self.max_pools = list(max_pools)
        bad = [i for i in self.max_pools if not 0 <= i < len(num_filters)]
        if bad:
            raise ValueError(f"max_pools {self.max_pools}: indices {bad} are not macro layers "
                             f"0..{len(num_filters) - 1}")
        smallest = min(input_dims[1:]) // 2 ** len(set(self.max_pools))
        if smallest < 1:
            raise ValueError(f"{len(set(self.max_pools))} poolings shrink the {input_dims[1]}x{input_dims[2]} "
                             f"input to nothing")
        self.batchnorm = batchnorm
        self.reg = reg
        self.dtype = dtype

        ### BEGIN SOLUTION
        ### HINT: for macro layer i (1-based) create W{i} (F_i, F_{i-1}, 3, 3) with weight_initializer(F_{i-1}, F_i, 3, True, device, dtype) if one is given, else kaiming_initializer(F_{i-1}, F_i, K=3, ...) when weight_scale == "kaiming" (else weight_scale * randn), b{i} zeros and, with batchnorm, gamma{i} ones and beta{i} zeros. Track the spatial size (each pool halves it); the final W{L} maps F_{L-1} * H * W features to num_classes (kaiming with relu=False).
        C, H, W = input_dims

        def init(Din, Dout, K, relu):
            if weight_initializer is not None:
                return weight_initializer(Din, Dout, K, relu, device, dtype)
            if weight_scale == "kaiming":
                return kaiming_initializer(Din, Dout, K=K, relu=relu, device=device, dtype=dtype)
            shape = (Din, Dout) if K is None else (Dout, Din, K, K)
            return weight_scale * torch.randn(*shape, dtype=dtype, device=device)

        prev = C
        for i, F in enumerate(num_filters):
            self.params[f"W{i + 1}"] = init(prev, F, 3, True)
            self.params[f"b{i + 1}"] = torch.zeros(F, dtype=dtype, device=device)
            if batchnorm:
                self.params[f"gamma{i + 1}"] = torch.ones(F, dtype=dtype, device=device)
                self.params[f"beta{i + 1}"] = torch.zeros(F, dtype=dtype, device=device)
            if i in self.max_pools:
                H, W = H // 2, W // 2
            prev = F
        L = self.num_layers
        self.params[f"W{L}"] = init(prev * H * W, num_classes, None, False)
        self.params[f"b{L}"] = torch.zeros(num_classes, dtype=dtype, device=device)
        ### END SOLUTION

        # With batch normalization we need to keep track of running means and
        # variances, so we need to pass a special bn_param object to each batch
        # normalization layer. You should pass self.bn_params[0] to the forward pass
        # of the first batch normalization layer, self.bn_params[1] to the forward
        # pass of the second batch normalization layer, etc.
        self.bn_params = []
        if self.batchnorm:
            self.bn_params = [{"mode": "train"} for _ in range(len(num_filters))]

        # Check that we got the right number of parameters
        if not self.batchnorm:
            params_per_macro_layer = 2  # weight and bias
        else:
            params_per_macro_layer = 4  # weight, bias, scale, shift
        num_params = params_per_macro_layer * len(num_filters) + 2
        msg = "self.params has the wrong number of elements. Got %d; expected %d"
        msg = msg % (len(self.params), num_params)
        assert len(self.params) == num_params, msg

        # Check that all parameters have the correct device and dtype:
        for k, param in self.params.items():
            msg = 'param "%s" has device %r; should be %r' % (k, param.device, device)
            assert _same_device(param.device, device), msg
            msg = 'param "%s" has dtype %r; should be %r' % (k, param.dtype, dtype)
            assert param.dtype == dtype, msg

    @property
    def num_filters(self):
        """The filter count of each conv layer, read off the weights (also after `load`)."""
        return [self.params[f"W{i}"].shape[0] for i in range(1, self.num_layers)]

    _SAVED = ("reg", "dtype", "params", "num_layers", "max_pools", "batchnorm", "bn_params")

    def save(self, path):
        save_model(self, path, self._SAVED)

    def load(self, path, dtype=None, device="cpu"):
        load_model(self, path, self._SAVED, dtype, device)
        for bn_param in self.bn_params:
            for p in ["running_mean", "running_var"]:
                if p in bn_param:
                    bn_param[p] = bn_param[p].to(device=device, dtype=self.dtype)

    def loss(self, X, y=None):
        """
        Evaluate loss and gradient for the deep convolutional network.
        Input / output: Same API as ThreeLayerConvNet.
        """
        X = _as_dtype(X, self.params)
        mode = "test" if y is None else "train"

        # Set train/test mode for batchnorm params since they
        # behave differently during training and testing.
        if self.batchnorm:
            for bn_param in self.bn_params:
                bn_param["mode"] = mode
        scores = None

        # pass conv_param to the forward pass for the
        # convolutional layer
        # Padding and stride chosen to preserve the input
        # spatial size
        filter_size = 3
        conv_param = {"stride": 1, "pad": (filter_size - 1) // 2}

        # pass pool_param to the forward pass for the
        # max-pooling layer
        pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}

        ### BEGIN SOLUTION
        ### HINT: macro layer i uses Conv_ReLU / Conv_ReLU_Pool, or Conv_BatchNorm_ReLU / Conv_BatchNorm_ReLU_Pool with self.bn_params[i]; then Linear with W{L}, b{L}. Keep each layer's cache for the backward pass.
        caches = []
        out = X
        for i in range(self.num_layers - 1):
            w, b = self.params[f"W{i + 1}"], self.params[f"b{i + 1}"]
            pool = i in self.max_pools
            if self.batchnorm:
                gamma, beta = self.params[f"gamma{i + 1}"], self.params[f"beta{i + 1}"]
                if pool:
                    out, cache = Conv_BatchNorm_ReLU_Pool.forward(out, w, b, gamma, beta, conv_param,
                                                                  self.bn_params[i], pool_param)
                else:
                    out, cache = Conv_BatchNorm_ReLU.forward(out, w, b, gamma, beta, conv_param,
                                                             self.bn_params[i])
            elif pool:
                out, cache = Conv_ReLU_Pool.forward(out, w, b, conv_param, pool_param)
            else:
                out, cache = Conv_ReLU.forward(out, w, b, conv_param)
            caches.append(cache)
        L = self.num_layers
        scores, cache = Linear.forward(out, self.params[f"W{L}"], self.params[f"b{L}"])
        caches.append(cache)
        ### END SOLUTION

        if y is None:
            return scores

        loss, grads = 0, {}
        ### BEGIN SOLUTION
        ### HINT: softmax_loss plus reg * sum of squared weights W1..WL (not biases, gammas or betas); backpropagate through the layers in reverse order and add 2 * reg * W{i} to each weight gradient.
        loss, dout = softmax_loss(scores, y)
        for i in range(1, L + 1):
            W = self.params[f"W{i}"]
            loss = loss + self.reg * (W * W).sum()
        dout, grads[f"W{L}"], grads[f"b{L}"] = Linear.backward(dout, caches[L - 1])
        for i in reversed(range(L - 1)):
            pool = i in self.max_pools
            if self.batchnorm:
                layer = Conv_BatchNorm_ReLU_Pool if pool else Conv_BatchNorm_ReLU
                dout, dw, db, dgamma, dbeta = layer.backward(dout, caches[i])
                grads[f"gamma{i + 1}"], grads[f"beta{i + 1}"] = dgamma, dbeta
            else:
                layer = Conv_ReLU_Pool if pool else Conv_ReLU
                dout, dw, db = layer.backward(dout, caches[i])
            grads[f"W{i + 1}"], grads[f"b{i + 1}"] = dw, db
        for i in range(1, L + 1):
            grads[f"W{i}"] = grads[f"W{i}"] + 2 * self.reg * self.params[f"W{i}"]
        ### END SOLUTION

        return loss, grads


def find_overfit_parameters():
    """Weight scale and learning rate that let a DeepConvNet overfit 50 images:
    returns (weight_scale, learning_rate)."""
    weight_scale = 2e-3   # Experiment with this!
    learning_rate = 1e-5  # Experiment with this!
    ### BEGIN SOLUTION
    ### HINT: the course's deep net ([8, 16, 32, 64], pools on every layer, Adam, batch 10) reaches 100% train accuracy within 30 epochs with a weight scale of a few tenths and a learning rate around 1e-3.
    weight_scale = 2e-1
    learning_rate = 1e-3
    ### END SOLUTION
    return weight_scale, learning_rate


def create_convolutional_solver_instance(data_dict, dtype, device):
    """
    The "one-minute" DeepConvNet and its Solver: filters [128, 64, 32], each conv followed by
    batch norm, ReLU and a 2x2 max pool (Conv-BN-ReLU-Pool), Kaiming initialization, reg 1e-5;
    Adam with learning rate 2e-3, decayed by 0.8 after every epoch (lr_decay); batch 128, 10
    epochs (train with `solver.train(time_limit=60)`).

    The course's recipe is the same without the batch norm and without the decay. On the
    project's CIFAR-10 copy (JPEG re-encoded) it reached 69.1% / 69.8% validation and 69.1% /
    69.2% test accuracy after all 10 epochs (two seeds, CPU; A3/README.md), under the course's
    71% / 70%; this one reached 72.4% / 72.7% validation and 72.2% / 72.3% test accuracy (seeds 0 / 1).

    Inputs:
    - data_dict: dict with X_train (N, C, H, W), y_train, X_val, y_val
    - dtype, device: for the model's parameters and the Solver's minibatches
    Returns the Solver (its model is `solver.model`).
    """
    model = None
    solver = None
    ### BEGIN SOLUTION
    ### HINT: a DeepConvNet(input_dims=X_train.shape[1:], num_filters=[128, 64, 32], max_pools=[0, 1, 2], batchnorm=True, weight_scale="kaiming", reg=1e-5, ...) and a Solver with update_rule=adam, optim_config={"learning_rate": 2e-3}, lr_decay=0.8, batch_size=128, num_epochs=10.
    input_dims = tuple(data_dict["X_train"].shape[1:])
    model = DeepConvNet(input_dims=input_dims, num_classes=10, num_filters=[128, 64, 32],
                        max_pools=[0, 1, 2], batchnorm=True, weight_scale="kaiming", reg=1e-5,
                        dtype=dtype, device=device)
    solver = Solver(model, data_dict, num_epochs=10, batch_size=128, update_rule=adam,
                    optim_config={"learning_rate": 2e-3}, lr_decay=0.8, print_every=20, device=device)
    ### END SOLUTION
    return solver


def kaiming_initializer(Din, Dout, K=None, relu=True, device="cpu", dtype=torch.float32):
    """
    Implement Kaiming initialization for linear and convolution layers.

    Inputs:
    - Din, Dout: Integers giving the number of input and output dimensions
      for this layer
    - K: If K is None, then initialize weights for a linear layer with
      Din input dimensions and Dout output dimensions. Otherwise if K is
      a nonnegative integer then initialize the weights for a convolution
      with Din input channels, Dout output channels, and a kernel size of
      KxK.
    - relu: If ReLU=True, then initialize weights with a gain of 2 to
      account for a ReLU nonlinearity (Kaiming initialization); otherwise
      initialize weights with a gain of 1 (the course calls this Xavier
      initialization; N(0, 1 / fan_in) is LeCun's, Glorot's uses
      2 / (fan_in + fan_out)).
    - device, dtype: The device and datatype for the output tensor.

    Returns:
    - weight: A torch Tensor giving initialized weights for this layer.
      For a linear layer it should have shape (Din, Dout); for a
      convolution layer it should have shape (Dout, Din, K, K).
      Entries are drawn from N(0, gain / fan_in), fan_in = Din (linear) or Din * K * K (conv).
    """
    gain = 2.0 if relu else 1.0
    weight = None
    ### BEGIN SOLUTION
    ### HINT: std = sqrt(gain / fan_in); weight = std * randn(shape).
    if K is None:
        fan_in = Din
        shape = (Din, Dout)
    else:
        fan_in = Din * K * K
        shape = (Dout, Din, K, K)
    weight = (gain / fan_in) ** 0.5 * torch.randn(*shape, dtype=dtype, device=device)
    ### END SOLUTION
    return weight
