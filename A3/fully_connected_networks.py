"""
Fully connected networks, written from scratch: layers with hand-written forward and backward
passes, the SVM and softmax losses, two- and multi-layer networks, and four update rules.

Nothing here uses torch.autograd, torch.nn or torch.nn.functional: every gradient is computed
by the backward functions below. The code is device- and dtype-agnostic: it follows the device
and dtype of its inputs (or the `device` / `dtype` given to a model's constructor).

Conventions (those of the course):
  * each layer is a class with static `forward(...) -> (out, cache)` and
    `backward(dout, cache) -> gradients`;
  * models hold `self.params` (a dict of tensors) and `loss(X, y=None)`: scores when `y` is
    None, otherwise `(loss, grads)` with `grads` keyed like `params` (the `Solver` contract);
  * regularization: loss + reg * sum(W ** 2) over the weight matrices, gradient + 2 * reg * W;
  * update rules: `rule(w, dw, config=None) -> (next_w, config)`, state kept in `config`.
"""
import torch


def hello_fully_connected_networks():
    """Smoke test: prints a greeting so the notebook knows this file was imported."""
    print("Hello from fully_connected_networks.py!")


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
class Linear(object):

    @staticmethod
    def forward(x, w, b):
        """
        Forward pass of a linear (fully connected) layer.

        The input x has shape (N, d_1, ..., d_k): a minibatch of N examples, each of which is
        reshaped into a vector of dimension D = d_1 * ... * d_k and mapped to M outputs.

        Inputs:
        - x: A tensor of shape (N, d_1, ..., d_k)
        - w: A tensor of weights, of shape (D, M)
        - b: A tensor of biases, of shape (M,)

        Returns a tuple of:
        - out: output, of shape (N, M)
        - cache: (x, w, b)
        """
        out = None
        ### BEGIN SOLUTION
        ### HINT: reshape x to (N, D) (x.reshape(x.shape[0], w.shape[0]); -1 for D would fail for N = 0), then out = x_flat @ w + b.
        out = x.reshape(x.shape[0], w.shape[0]).mm(w) + b
        ### END SOLUTION
        cache = (x, w, b)
        return out, cache

    @staticmethod
    def backward(dout, cache):
        """
        Backward pass of a linear layer.

        Inputs:
        - dout: Upstream derivative, of shape (N, M)
        - cache: Tuple of:
          - x: Input data, of shape (N, d_1, ..., d_k)
          - w: Weights, of shape (D, M)
          - b: Biases, of shape (M,)

        Returns a tuple of:
        - dx: Gradient with respect to x, of shape (N, d_1, ..., d_k)
        - dw: Gradient with respect to w, of shape (D, M)
        - db: Gradient with respect to b, of shape (M,)
        """
        x, w, b = cache
        dx, dw, db = None, None, None
        ### BEGIN SOLUTION
        ### HINT: dx = dout @ w^T reshaped like x; dw = x_flat^T @ dout; db = dout summed over the batch.
        dx = dout.mm(w.t()).reshape(x.shape)
        dw = x.reshape(x.shape[0], w.shape[0]).t().mm(dout)
        db = dout.sum(dim=0)
        ### END SOLUTION
        return dx, dw, db


class ReLU(object):

    @staticmethod
    def forward(x):
        """
        Forward pass of a layer of rectified linear units (ReLUs).

        Input:
        - x: Input tensor of any shape

        Returns a tuple of:
        - out: Output tensor, of the same shape as x (x itself is not modified)
        - cache: x
        """
        out = None
        ### BEGIN SOLUTION
        ### HINT: out = max(x, 0) elementwise; build a new tensor, do not change x in place.
        out = x.clamp(min=0)
        ### END SOLUTION
        cache = x
        return out, cache

    @staticmethod
    def backward(dout, cache):
        """
        Backward pass of a layer of ReLUs.

        Input:
        - dout: Upstream derivatives, of any shape
        - cache: Input x, of the same shape as dout

        Returns:
        - dx: Gradient with respect to x (zero where x <= 0)
        """
        dx, x = None, cache
        ### BEGIN SOLUTION
        ### HINT: the gradient passes where x > 0 and is zero elsewhere.
        dx = dout * (x > 0).to(dout.dtype)
        ### END SOLUTION
        return dx


class Linear_ReLU(object):

    @staticmethod
    def forward(x, w, b):
        """
        Convenience layer: a linear transform followed by a ReLU.

        Inputs:
        - x: Input to the linear layer, of shape (N, d_1, ..., d_k)
        - w, b: Weights (D, M) and bias (M,) of the linear layer

        Returns a tuple of:
        - out: Output of the ReLU, of shape (N, M)
        - cache: Object to give to the backward pass
        """
        a, fc_cache = Linear.forward(x, w, b)
        out, relu_cache = ReLU.forward(a)
        cache = (fc_cache, relu_cache)
        return out, cache

    @staticmethod
    def backward(dout, cache):
        """
        Backward pass for the linear-relu convenience layer: returns (dx, dw, db).
        """
        fc_cache, relu_cache = cache
        da = ReLU.backward(dout, relu_cache)
        dx, dw, db = Linear.backward(da, fc_cache)
        return dx, dw, db


class Dropout(object):

    @staticmethod
    def forward(x, dropout_param):
        """
        Forward pass of (inverted) dropout.

        Inputs:
        - x: Input data, a tensor of any shape
        - dropout_param: A dictionary with the following keys:
          - p: Dropout parameter. We *drop* each neuron output with probability p
            (0 <= p < 1; p = 0 keeps everything).
          - mode: 'test' or 'train'. In train mode, dropout is performed; in test mode the
            input is simply passed through.
          - seed: (optional) seed for the random number generator. Passing a seed makes this
            function deterministic, which is needed for gradient checking (it does not
            change the global random state).

        Inverted dropout: in train mode the kept units are scaled by 1 / (1 - p), so that
        the expected output equals the input and test mode needs no rescaling.
        The mask is generated on x's device with x's dtype.

        Returns a tuple of:
        - out: A tensor of the same shape as x.
        - cache: tuple (dropout_param, mask). In train mode, mask is the tensor (0 or
          1 / (1 - p)) that was multiplied with x; in test mode, mask is None.
        """
        p, mode = dropout_param["p"], dropout_param["mode"]
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p}")
        if mode not in ("train", "test"):
            raise ValueError(f"dropout mode must be 'train' or 'test', got {mode!r}")

        mask = None
        out = None
        if mode == "train":
            ### BEGIN SOLUTION
            ### HINT: draw uniform numbers shaped like x (on x.device; use a torch.Generator seeded with dropout_param['seed'] if given), keep those >= p, scale the kept ones by 1 / (1 - p).
            generator = None
            if dropout_param.get("seed") is not None:
                generator = torch.Generator(device=x.device)
                generator.manual_seed(int(dropout_param["seed"]))
            uniform = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            mask = (uniform >= p).to(x.dtype) / (1 - p)
            out = x * mask
            ### END SOLUTION
        elif mode == "test":
            ### BEGIN SOLUTION
            ### HINT: inverted dropout does nothing at test time.
            out = x
            ### END SOLUTION

        cache = (dropout_param, mask)
        return out, cache

    @staticmethod
    def backward(dout, cache):
        """
        Backward pass of (inverted) dropout.

        Inputs:
        - dout: Upstream derivatives, of any shape
        - cache: (dropout_param, mask) from Dropout.forward.

        Returns dx, the gradient with respect to the input of Dropout.forward.
        """
        dropout_param, mask = cache
        # The mode of the forward pass (a mask exists in train mode only), not dropout_param's
        # mode now: the caller may have switched the shared dict since.
        mode = "train" if mask is not None else "test"

        dx = None
        if mode == "train":
            ### BEGIN SOLUTION
            ### HINT: the forward pass multiplied by the mask.
            dx = dout * mask
            ### END SOLUTION
        elif mode == "test":
            dx = dout
        return dx


# ---------------------------------------------------------------------------------------------
# Loss functions (given by the course: reference implementations, used by every model)
# ---------------------------------------------------------------------------------------------
def svm_loss(x, y):
    """
    Loss and gradient for the multiclass SVM (hinge loss with margin 1), averaged over N.

    Inputs:
    - x: Input data, of shape (N, C) where x[i, j] is the score for the jth class for the
      ith input.
    - y: Vector of labels, of shape (N,) where y[i] is the label for x[i] and 0 <= y[i] < C

    Returns a tuple of:
    - loss: 0-dim tensor, mean over i of sum_{j != y[i]} max(0, x[i, j] - x[i, y[i]] + 1)
    - dx: Gradient of the loss with respect to x
    """
    N = x.shape[0]
    rows = torch.arange(N, device=x.device)
    correct_class_scores = x[rows, y]
    margins = (x - correct_class_scores[:, None] + 1.0).clamp(min=0)
    margins[rows, y] = 0.0
    loss = margins.sum() / N
    positive = (margins > 0).to(x.dtype)
    num_pos = positive.sum(dim=1)
    dx = positive
    dx[rows, y] -= num_pos
    dx /= N
    return loss, dx


def softmax_loss(x, y):
    """
    Loss and gradient for softmax classification (cross-entropy), averaged over N.
    Numerically stable: each row is shifted by its maximum before exponentiating.

    Inputs:
    - x: Input data, of shape (N, C) where x[i, j] is the score for the jth class for the
      ith input.
    - y: Vector of labels, of shape (N,) where y[i] is the label for x[i] and 0 <= y[i] < C

    Returns a tuple of:
    - loss: 0-dim tensor, mean over i of -log softmax(x[i])[y[i]]
    - dx: Gradient of the loss with respect to x
    """
    shifted_logits = x - x.max(dim=1, keepdim=True).values
    Z = shifted_logits.exp().sum(dim=1, keepdim=True)
    log_probs = shifted_logits - Z.log()
    probs = log_probs.exp()
    N = x.shape[0]
    rows = torch.arange(N, device=x.device)
    loss = (-1.0 / N) * log_probs[rows, y].sum()
    dx = probs.clone()
    dx[rows, y] -= 1
    dx /= N
    return loss, dx


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def _as_dtype(X, params):
    """Cast the input batch to the dtype of the model's parameters (a no-op when equal)."""
    dtype = next(iter(params.values())).dtype
    return X if X.dtype == dtype else X.to(dtype)


def save_model(model, path, fields):
    """Save the attributes `fields` of `model` (params, reg, ...) as a dict with torch.save."""
    torch.save({name: getattr(model, name) for name in fields}, path)
    print("Saved in {}".format(path))


def load_model(model, path, fields, dtype, device):
    """Restore the attributes `fields` of `model` saved by `save_model` and move its params to
    `dtype` / `device` (dtype None: the dtype the params were saved in); `model.dtype`, where
    the model has one, becomes that dtype. Returns the checkpoint dict.
    Checkpoints hold plain data only (dicts of tensors, numbers, strings, dtypes)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for name in fields:
        setattr(model, name, checkpoint[name])
    if dtype is None:
        dtype = next(iter(model.params.values())).dtype
    model.params = {k: v.to(device=device, dtype=dtype) for k, v in model.params.items()}
    if hasattr(model, "dtype"):
        model.dtype = dtype
    print("load checkpoint file: {}".format(path))
    return checkpoint


class TwoLayerNet(object):
    """
    A two-layer fully-connected neural network with ReLU nonlinearity and softmax loss that
    uses a modular layer design:  affine - relu - affine - softmax.
    Input dimension D, hidden dimension H, C classes.

    The learnable parameters of the model are stored in the dictionary self.params that maps
    parameter names (W1, b1, W2, b2) to tensors.
    """

    def __init__(self, input_dim=3 * 32 * 32, hidden_dim=100, num_classes=10,
                 weight_scale=1e-2, reg=0.0, dtype=torch.float32, device="cpu"):
        """
        Initialize a new network.

        Inputs:
        - input_dim: An integer giving the size of the input
        - hidden_dim: An integer giving the size of the hidden layer
        - num_classes: An integer giving the number of classes to classify
        - weight_scale: Scalar giving the standard deviation for random initialization of
          the weights (biases start at zero).
        - reg: Scalar giving L2 regularization strength.
        - dtype: A torch data type object; all computations will be performed using this
          datatype. float is faster but less accurate, so you should use double for numeric
          gradient checking.
        - device: device to use for computation. 'cpu' or 'cuda'
        """
        self.params = {}
        self.reg = reg
        ### BEGIN SOLUTION
        ### HINT: W1 (D, H) and W2 (H, C) ~ weight_scale * randn; b1 (H,), b2 (C,) zeros; all with the given dtype and device.
        self.params["W1"] = weight_scale * torch.randn(input_dim, hidden_dim, dtype=dtype, device=device)
        self.params["b1"] = torch.zeros(hidden_dim, dtype=dtype, device=device)
        self.params["W2"] = weight_scale * torch.randn(hidden_dim, num_classes, dtype=dtype, device=device)
        self.params["b2"] = torch.zeros(num_classes, dtype=dtype, device=device)
        ### END SOLUTION

    def save(self, path):
        save_model(self, path, ("reg", "params"))

    def load(self, path, dtype=None, device="cpu"):
        load_model(self, path, ("reg", "params"), dtype, device)

    def loss(self, X, y=None):
        """
        Compute loss and gradient for a minibatch of data.

        Inputs:
        - X: Tensor of input data of shape (N, d_1, ..., d_k)
        - y: int64 Tensor of labels, of shape (N,). y[i] gives the label for X[i].

        Returns:
        If y is None, then run a test-time forward pass of the model and return:
        - scores: Tensor of shape (N, C) giving classification scores, where
          scores[i, c] is the classification score for X[i] and class c.
        If y is not None, then run a training-time forward and backward pass and return a
        tuple of:
        - loss: Scalar value giving the loss (softmax loss + reg * sum of squared weights)
        - grads: Dictionary with the same keys as self.params, mapping parameter names to
          gradients of the loss with respect to those parameters.
        """
        X = _as_dtype(X, self.params)
        scores = None
        ### BEGIN SOLUTION
        ### HINT: Linear_ReLU.forward with W1, b1, then Linear.forward with W2, b2.
        hidden, cache1 = Linear_ReLU.forward(X, self.params["W1"], self.params["b1"])
        scores, cache2 = Linear.forward(hidden, self.params["W2"], self.params["b2"])
        ### END SOLUTION

        # If y is None then we are in test mode so just return scores
        if y is None:
            return scores

        loss, grads = 0, {}
        ### BEGIN SOLUTION
        ### HINT: softmax_loss on the scores, plus reg * (sum(W1^2) + sum(W2^2)); backpropagate through the two layers and add 2 * reg * W to each weight gradient.
        W1, W2 = self.params["W1"], self.params["W2"]
        loss, dscores = softmax_loss(scores, y)
        loss = loss + self.reg * ((W1 * W1).sum() + (W2 * W2).sum())
        dhidden, grads["W2"], grads["b2"] = Linear.backward(dscores, cache2)
        _, grads["W1"], grads["b1"] = Linear_ReLU.backward(dhidden, cache1)
        grads["W1"] = grads["W1"] + 2 * self.reg * W1
        grads["W2"] = grads["W2"] + 2 * self.reg * W2
        ### END SOLUTION
        return loss, grads


class FullyConnectedNet(object):
    """
    A fully-connected neural network with an arbitrary number of hidden layers, ReLU
    nonlinearities, and a softmax loss function. For a network with L layers, the
    architecture is:

    {linear - relu - [dropout]} x (L - 1) - linear - softmax

    where dropout is optional, and the {...} block is repeated L - 1 times.

    The learnable parameters are stored in self.params: W1, b1 for the first layer, ...,
    WL, bL for the last (scoring) layer.
    """

    def __init__(self, hidden_dims, input_dim=3 * 32 * 32, num_classes=10, dropout=0.0,
                 reg=0.0, weight_scale=1e-2, seed=None, dtype=torch.float, device="cpu"):
        """
        Initialize a new FullyConnectedNet.

        Inputs:
        - hidden_dims: A list of integers giving the size of each hidden layer.
        - input_dim: An integer giving the size of the input.
        - num_classes: An integer giving the number of classes to classify.
        - dropout: Scalar between 0 and 1 giving the drop probability for networks with
          dropout. If dropout=0 then the network does not use dropout.
        - reg: Scalar giving L2 regularization strength.
        - weight_scale: Scalar giving the standard deviation for random initialization of
          the weights (biases start at zero).
        - seed: If not None, then pass this random seed to the dropout layers. This makes
          the dropout layers deterministic so we can gradient check the model.
        - dtype: A torch data type object; all computations will be performed using this
          datatype. float is faster but less accurate, so you should use double for numeric
          gradient checking.
        - device: device to use for computation. 'cpu' or 'cuda'
        """
        self.use_dropout = dropout != 0
        self.reg = reg
        self.num_layers = 1 + len(hidden_dims)
        self.dtype = dtype
        self.params = {}

        ### BEGIN SOLUTION
        ### HINT: layer i (1..L) maps dims[i-1] -> dims[i] with dims = [input_dim, *hidden_dims, num_classes]; W{i} ~ weight_scale * randn, b{i} = zeros.
        dims = [input_dim, *hidden_dims, num_classes]
        for i in range(1, self.num_layers + 1):
            self.params[f"W{i}"] = weight_scale * torch.randn(dims[i - 1], dims[i], dtype=dtype, device=device)
            self.params[f"b{i}"] = torch.zeros(dims[i], dtype=dtype, device=device)
        ### END SOLUTION

        # When using dropout we need to pass a dropout_param dictionary to each dropout
        # layer so that the layer knows the dropout probability and the mode (train / test).
        # You can pass the same dropout_param to each dropout layer.
        self.dropout_param = {}
        if self.use_dropout:
            self.dropout_param = {"mode": "train", "p": dropout}
            if seed is not None:
                self.dropout_param["seed"] = seed

    _SAVED = ("reg", "dtype", "params", "num_layers", "use_dropout", "dropout_param")

    def save(self, path):
        save_model(self, path, self._SAVED)

    def load(self, path, dtype=None, device="cpu"):
        load_model(self, path, self._SAVED, dtype, device)

    def loss(self, X, y=None):
        """
        Compute loss and gradient for the fully-connected net.

        Input / output: Same as TwoLayerNet above. With labels (y given) the net runs in
        training mode, so dropout (if used) is applied; without labels it runs in test mode
        and dropout does nothing.
        """
        X = _as_dtype(X, self.params)
        mode = "test" if y is None else "train"

        # Set train/test mode for dropout param since it behaves differently during
        # training and testing.
        if self.use_dropout:
            self.dropout_param["mode"] = mode
        scores = None
        ### BEGIN SOLUTION
        ### HINT: for layers 1..L-1: Linear_ReLU.forward, then (if self.use_dropout) Dropout.forward with self.dropout_param; keep every cache. Layer L: Linear.forward gives the scores.
        caches = []
        hidden = X
        for i in range(1, self.num_layers):
            hidden, cache = Linear_ReLU.forward(hidden, self.params[f"W{i}"], self.params[f"b{i}"])
            drop_cache = None
            if self.use_dropout:
                hidden, drop_cache = Dropout.forward(hidden, self.dropout_param)
            caches.append((cache, drop_cache))
        L = self.num_layers
        scores, last_cache = Linear.forward(hidden, self.params[f"W{L}"], self.params[f"b{L}"])
        ### END SOLUTION

        # If test mode return early
        if mode == "test":
            return scores

        loss, grads = 0.0, {}
        ### BEGIN SOLUTION
        ### HINT: softmax_loss, plus reg * sum(W_i^2) over all layers; backpropagate in reverse order (Linear, then [Dropout], Linear_ReLU per hidden layer) and add 2 * reg * W_i to each dW_i.
        loss, dscores = softmax_loss(scores, y)
        for i in range(1, L + 1):
            W = self.params[f"W{i}"]
            loss = loss + self.reg * (W * W).sum()
        dhidden, grads[f"W{L}"], grads[f"b{L}"] = Linear.backward(dscores, last_cache)
        for i in range(L - 1, 0, -1):
            cache, drop_cache = caches[i - 1]
            if self.use_dropout:
                dhidden = Dropout.backward(dhidden, drop_cache)
            dhidden, grads[f"W{i}"], grads[f"b{i}"] = Linear_ReLU.backward(dhidden, cache)
        for i in range(1, L + 1):
            grads[f"W{i}"] = grads[f"W{i}"] + 2 * self.reg * self.params[f"W{i}"]
        ### END SOLUTION
        return loss, grads


def create_solver_instance(data_dict, dtype, device):
    """
    A TwoLayerNet (hidden size 200) and a Solver (plain SGD) that together reach more than
    50% validation accuracy on CIFAR-10 (full 40k training set, 10 epochs, batch 100).

    Inputs:
    - data_dict: dict with X_train, y_train, X_val, y_val (X flattened or not)
    - dtype, device: of the model; the Solver moves minibatches to `device`.

    Returns the Solver (not yet trained): call solver.train().
    """
    from eecs598.solver import Solver

    input_dim = int(torch.tensor(data_dict["X_train"].shape[1:]).prod())
    model = TwoLayerNet(input_dim=input_dim, hidden_dim=200, dtype=dtype, device=device)
    solver = None
    ### BEGIN SOLUTION
    ### HINT: Solver(model, data_dict, optim_config={'learning_rate': ...}, ...) with the course's defaults otherwise; only keys the update rule reads belong in optim_config.
    solver = Solver(model, data_dict,
                    optim_config={"learning_rate": 0.1},
                    lr_decay=0.95, num_epochs=10, batch_size=100,
                    print_every=1000, device=device)
    ### END SOLUTION
    return solver


def get_three_layer_network_params():
    """
    Weight scale and learning rate with which a three-layer net (hidden [100, 100]) trained
    by SGD overfits 50 training samples (100% train accuracy) within 20 epochs (batch 25).

    Returns (weight_scale, learning_rate).
    """
    weight_scale = 1e-2  # Experiment with this!
    learning_rate = 1e-4  # Experiment with this!
    ### BEGIN SOLUTION
    ### HINT: try weight scales between 1e-2 and 1 and learning rates between 1e-3 and 1.
    weight_scale = 2e-1
    learning_rate = 1e-1
    ### END SOLUTION
    return weight_scale, learning_rate


def get_five_layer_network_params():
    """
    Weight scale and learning rate with which a five-layer net (hidden [100] * 4) trained by
    SGD overfits 50 training samples (100% train accuracy) within 20 epochs (batch 25).

    Returns (weight_scale, learning_rate).
    """
    learning_rate = 2e-3  # Experiment with this!
    weight_scale = 1e-5  # Experiment with this!
    ### BEGIN SOLUTION
    ### HINT: deeper nets are more sensitive to the weight scale: too small and the signal vanishes, too large and the scores explode.
    weight_scale = 1.5e-1
    learning_rate = 1e-1
    ### END SOLUTION
    return weight_scale, learning_rate


# ---------------------------------------------------------------------------------------------
# Update rules: rule(w, dw, config=None) -> (next_w, config)
# ---------------------------------------------------------------------------------------------
def sgd(w, dw, config=None):
    """
    Performs vanilla stochastic gradient descent: next_w = w - learning_rate * dw.

    config format:
    - learning_rate: Scalar learning rate (default 1e-2).
    """
    if config is None:
        config = {}
    config.setdefault("learning_rate", 1e-2)
    next_w = None
    ### BEGIN SOLUTION
    ### HINT: one step against the gradient, scaled by the learning rate.
    next_w = w - config["learning_rate"] * dw
    ### END SOLUTION
    return next_w, config


def sgd_momentum(w, dw, config=None):
    """
    Performs stochastic gradient descent with momentum:
        v = momentum * v - learning_rate * dw;  next_w = w + v

    config format:
    - learning_rate: Scalar learning rate (default 1e-2).
    - momentum: Scalar between 0 and 1 giving the momentum value (default 0.9).
      Setting momentum = 0 reduces to sgd.
    - velocity: A tensor of the same shape as w and dw used to store a moving average of
      the gradients (zeros at the first step).
    """
    if config is None:
        config = {}
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("momentum", 0.9)
    v = config.get("velocity", None)
    if v is None:
        v = torch.zeros_like(w)

    next_w = None
    ### BEGIN SOLUTION
    ### HINT: update the velocity first, then step along it.
    v = config["momentum"] * v - config["learning_rate"] * dw
    next_w = w + v
    ### END SOLUTION
    config["velocity"] = v

    return next_w, config


def rmsprop(w, dw, config=None):
    """
    Uses the RMSProp update rule, which uses a moving average of squared gradient values to
    set adaptive per-parameter learning rates:
        cache = decay_rate * cache + (1 - decay_rate) * dw ** 2
        next_w = w - learning_rate * dw / (sqrt(cache) + epsilon)

    config format:
    - learning_rate: Scalar learning rate (default 1e-2).
    - decay_rate: Scalar between 0 and 1 giving the decay rate for the squared gradient
      cache (default 0.99).
    - epsilon: Small scalar used for smoothing to avoid dividing by zero (default 1e-8).
    - cache: Moving average of second moments of gradients (zeros at the first step).
    """
    if config is None:
        config = {}
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("decay_rate", 0.99)
    config.setdefault("epsilon", 1e-8)
    if "cache" not in config:  # (setdefault would allocate the zeros at every step)
        config["cache"] = torch.zeros_like(w)

    next_w = None
    ### BEGIN SOLUTION
    ### HINT: update the moving average of dw**2 in config["cache"], then step by dw / (sqrt(cache) + epsilon).
    cache = config["decay_rate"] * config["cache"] + (1 - config["decay_rate"]) * dw * dw
    next_w = w - config["learning_rate"] * dw / (cache.sqrt() + config["epsilon"])
    config["cache"] = cache
    ### END SOLUTION

    return next_w, config


def adam(w, dw, config=None):
    """
    Uses the Adam update rule, which incorporates moving averages of both the gradient and
    its square and a bias correction term:
        t += 1
        m = beta1 * m + (1 - beta1) * dw;   v = beta2 * v + (1 - beta2) * dw ** 2
        m_hat = m / (1 - beta1 ** t);       v_hat = v / (1 - beta2 ** t)
        next_w = w - learning_rate * m_hat / (sqrt(v_hat) + epsilon)

    config format:
    - learning_rate: Scalar learning rate (default 1e-3).
    - beta1: Decay rate for moving average of first moment of gradient (default 0.9).
    - beta2: Decay rate for moving average of second moment of gradient (default 0.999).
    - epsilon: Small scalar used for smoothing to avoid dividing by zero (default 1e-8).
    - m: Moving average of gradient (zeros at the first step).
    - v: Moving average of squared gradient (zeros at the first step).
    - t: Iteration number (0 before the first step; incremented BEFORE the bias correction).
    """
    if config is None:
        config = {}
    config.setdefault("learning_rate", 1e-3)
    config.setdefault("beta1", 0.9)
    config.setdefault("beta2", 0.999)
    config.setdefault("epsilon", 1e-8)
    if "m" not in config:  # (setdefault would allocate the zeros at every step)
        config["m"] = torch.zeros_like(w)
        config["v"] = torch.zeros_like(w)
    config.setdefault("t", 0)

    next_w = None
    ### BEGIN SOLUTION
    ### HINT: increment t first, then update m and v, bias-correct both with t, and step.
    beta1, beta2 = config["beta1"], config["beta2"]
    config["t"] += 1
    t = config["t"]
    config["m"] = beta1 * config["m"] + (1 - beta1) * dw
    config["v"] = beta2 * config["v"] + (1 - beta2) * dw * dw
    m_hat = config["m"] / (1 - beta1 ** t)
    v_hat = config["v"] / (1 - beta2 ** t)
    next_w = w - config["learning_rate"] * m_hat / (v_hat.sqrt() + config["epsilon"])
    ### END SOLUTION

    return next_w, config
