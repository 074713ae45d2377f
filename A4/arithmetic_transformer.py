"""A4 part 2: a Transformer (encoder-decoder) that learns two-digit addition and subtraction.

The course named this file `transformers.py`; that name collides with the Hugging Face
package `transformers` (an `import transformers` can pick up either one), so it is
`arithmetic_transformer.py` here. The notebook keeps the course's name, `Transformers.ipynb`.

Course API (names and signatures kept): `hello_transformers`, `generate_token_dict`,
`prepocess_input_sequence` (sic), `scaled_dot_product_two_loop_single`,
`scaled_dot_product_two_loop_batch`, `scaled_dot_product_no_loop_batch`, `SelfAttention`,
`MultiHeadAttention`, `LayerNormalization`, `FeedForwardBlock`, `EncoderBlock`,
`DecoderBlock`, `Encoder`, `Decoder`, `get_subsequent_mask`, `position_encoding_simple`,
`position_encoding_sinusoid`, `Transformer`, `AddSubDataset`, `LabelSmoothingLoss`,
`CrossEntropyLoss`, and the helpers the course kept in `a5_helper.py`: `train`, `val`,
`inference`. Models are built from `torch.nn.Linear` / `torch.nn.Embedding` as in the
course; attention, layer norm and the blocks are written here (no `nn.MultiheadAttention`,
`nn.LayerNorm` or `nn.Transformer`).

Shapes: N batch, K sequence length (K_q queries, K_k keys), M embedding width, H heads,
V vocabulary size, O target length (with BOS).

Masks follow the course: a boolean mask is True where attention is NOT allowed (masked
out). (`torch.nn.functional.scaled_dot_product_attention` uses the opposite convention:
True = keep.)

Differences from the reference solutions (on purpose):
* `DecoderBlock` uses per-head width emb_dim // num_heads in both attentions (the reference
  used emb_dim per head in the decoder self-attention);
* `EncoderBlock` has two separate layer norms (the reference reused one for both sublayers);
* `position_encoding_sinusoid` follows the paper, PE[p, 2i] = sin(p / 10000^(2i/M)),
  PE[p, 2i+1] = cos(p / 10000^(2i/M)) (the reference's exponent was always 0);
* `LayerNormalization` computes (x - mean) / sqrt(var + eps) with the biased variance, as
  `torch.nn.LayerNorm` does (the course's (x - mean) / (std + eps) differs from it only by
  terms of order eps);
* dropout is applied to each sublayer's output before the residual sum (the paper's
  placement; the reference applied it after the norm), and the blocks optionally use
  pre-norm (`norm_first=True`) with a final norm after the stack;
* `val` counts correct tokens over every batch (the reference counted the last batch only);
* `inference` decodes greedily token by token from BOS with the causal mask, picking the
  arg-max over the vocabulary at the last position, on the device of its inputs (the
  reference took the max over the wrong axis, ran without the mask and hard-coded CUDA).
"""
import math
from functools import lru_cache

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# The course's vocabulary: digits, signs, operators, BOS/EOS (BOS = 14, EOS = 15).
SPECIAL_TOKENS = ["POSITIVE", "NEGATIVE", "add", "subtract", "BOS", "EOS"]
VOCAB = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"] + SPECIAL_TOKENS
BOS, EOS = VOCAB.index("BOS"), VOCAB.index("EOS")


def hello_transformers():
    """Smoke test: check that this file is importable from the notebook."""
    print("Hello from arithmetic_transformer.py!")


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------
def generate_token_dict(vocab):
    """Map each item of the list `vocab` to its position: {vocab[0]: 0, vocab[1]: 1, ...}."""
    token_dict = {}
    ### BEGIN SOLUTION
    ### HINT: enumerate the vocabulary.
    token_dict = {token: i for i, token in enumerate(vocab)}
    ### END SOLUTION
    return token_dict


def prepocess_input_sequence(input_str: str, token_dict: dict, spc_tokens: list) -> list:
    """Turn a string such as "BOS POSITIVE 0333 add POSITIVE 0696 EOS" into token ids.

    Words are separated by spaces; a word in `spc_tokens` is one token, any other word
    (a number) is split into its digits, one token per digit.
    Returns a list of ints (here [14, 10, 0, 3, 3, 3, 12, 10, 0, 6, 9, 6, 15] for the
    course's vocabulary).
    """
    out = []
    ### BEGIN SOLUTION
    ### HINT: split on spaces; special tokens map directly, numbers digit by digit.
    for word in input_str.split():
        if word in spc_tokens:
            out.append(token_dict[word])
        else:
            out.extend(token_dict[ch] for ch in word)
    ### END SOLUTION
    return out


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention
# ---------------------------------------------------------------------------------------------
def scaled_dot_product_two_loop_single(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """softmax(Q K^T / sqrt(M)) V for one sequence, with explicit loops over query and key.

    query (K_q, M), key (K_k, M), value (K_k, M) -> out (K_q, M).
    """
    out = None
    ### BEGIN SOLUTION
    ### HINT: loop over query rows i and key rows j for the scores, then softmax each row.
    K_q, M = query.shape
    K_k = key.shape[0]
    scores = torch.zeros(K_q, K_k, dtype=query.dtype, device=query.device)
    for i in range(K_q):
        for j in range(K_k):
            scores[i, j] = torch.dot(query[i], key[j]) / math.sqrt(M)
    out = torch.softmax(scores, dim=-1) @ value
    ### END SOLUTION
    return out


def scaled_dot_product_two_loop_batch(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """Batched version: query (N, K_q, M), key (N, K_k, M), value (N, K_k, M) -> (N, K_q, M),
    still with loops over query and key positions (vectorized over the batch)."""
    out = None
    ### BEGIN SOLUTION
    ### HINT: as the single version, each score now a length-N vector (sum over M).
    N, K_q, M = query.shape
    K_k = key.shape[1]
    scores = torch.zeros(N, K_q, K_k, dtype=query.dtype, device=query.device)
    for i in range(K_q):
        for j in range(K_k):
            scores[:, i, j] = (query[:, i] * key[:, j]).sum(dim=-1) / math.sqrt(M)
    out = torch.bmm(torch.softmax(scores, dim=-1), value)
    ### END SOLUTION
    return out


def scaled_dot_product_no_loop_batch(query: Tensor, key: Tensor, value: Tensor, mask: Tensor = None):
    """Vectorized attention: query (N, K_q, M), key (N, K_k, M), value (N, K_k, M_v).

    `mask` (N, K_q, K_k) bool (or anything broadcastable to the scores), True where
    attention is NOT allowed: those scores are set to a very large negative number
    (`masked_fill`) before the softmax. Scores are scaled by 1/sqrt(M).
    Extra leading dimensions (e.g. (N, H, K, M) for several heads) work the same way.

    Returns (y (N, K_q, M_v), weights_softmax (N, K_q, K_k)).
    """
    y, weights_softmax = None, None
    ### BEGIN SOLUTION
    ### HINT: scores = Q @ K^T / sqrt(M); masked_fill(mask, large negative); softmax over keys; @ V.
    M = query.shape[-1]
    scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(M)
    if mask is not None:
        scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
    weights_softmax = torch.softmax(scores, dim=-1)
    y = torch.matmul(weights_softmax, value)
    ### END SOLUTION
    return y, weights_softmax


def _xavier_(layer: nn.Linear):
    """The course's init: weights uniform in +-sqrt(6 / (fan_in + fan_out)), zero bias."""
    bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
    nn.init.uniform_(layer.weight, -bound, bound)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class SelfAttention(nn.Module):
    """One attention head: q = Linear(dim_in, dim_q), k = Linear(dim_in, dim_q),
    v = Linear(dim_in, dim_v) (Xavier-uniform init, zero bias), then scaled dot product.

    After a forward pass, `self.weights_softmax` holds the (N, K_q, K_k) attention weights.
    """

    def __init__(self, dim_in: int, dim_q: int, dim_v: int):
        super().__init__()
        self.q = self.k = self.v = None
        self.weights_softmax = None
        ### BEGIN SOLUTION
        ### HINT: three nn.Linear layers, each initialized with _xavier_.
        self.q = nn.Linear(dim_in, dim_q)
        self.k = nn.Linear(dim_in, dim_q)
        self.v = nn.Linear(dim_in, dim_v)
        for layer in (self.q, self.k, self.v):
            _xavier_(layer)
        ### END SOLUTION

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor = None) -> Tensor:
        """query (N, K_q, dim_in), key/value (N, K_k, dim_in), mask (N, K_q, K_k) -> (N, K_q, dim_v)."""
        y = None
        ### BEGIN SOLUTION
        ### HINT: project with q/k/v, then scaled_dot_product_no_loop_batch; keep the weights.
        y, self.weights_softmax = scaled_dot_product_no_loop_batch(
            self.q(query), self.k(key), self.v(value), mask)
        ### END SOLUTION
        return y


def _batch_mask(mask, query, key):
    """An attention mask for query (N, K_q, .) and key (N, K_k, .) as (N, K_q, K_k) or
    (1, K_q, K_k): a 2-D (K_q, K_k) mask gets a leading batch axis of 1 (it then broadcasts over
    the samples, and over the heads after the head axis is inserted at dim 1). Any other shape
    raises ValueError: a mask that only broadcasts would otherwise be matched against the wrong
    axes (e.g. the heads), or turn a batch of 1 into the mask's batch."""
    if mask is None:
        return None
    if mask.dim() == 2:
        mask = mask[None]
    (N, K_q), K_k = query.shape[:2], key.shape[1]
    if mask.dim() != 3 or mask.shape[0] not in (1, N) or mask.shape[1:] != (K_q, K_k):
        raise ValueError(f"attention mask must be ({N} or 1, {K_q}, {K_k}) or ({K_q}, {K_k}) for these "
                         f"queries and keys, got shape {tuple(mask.shape)}")
    return mask


class MultiHeadAttention(nn.Module):
    """`num_heads` SelfAttention heads SelfAttention(dim_in, dim_out, dim_out) side by side,
    concatenated to num_heads * dim_out features and projected back to dim_in by
    `self.proj` = Linear(num_heads * dim_out, dim_in). `dim_out` is the width of ONE head
    (the blocks below use dim_out = emb_dim // num_heads).

    The forward pass is mathematically the loop "for each head: head(query, key, value)",
    but computes all heads with one matrix product (the heads' weights are concatenated),
    which is several times faster for small models. After a forward pass every head's
    `weights_softmax` is set, and `self.weights_softmax` holds all of them (N, H, K_q, K_k).
    """

    def __init__(self, num_heads: int, dim_in: int, dim_out: int):
        super().__init__()
        self.num_heads, self.dim_out = num_heads, dim_out
        self.heads = None
        self.proj = None
        self.weights_softmax = None
        ### BEGIN SOLUTION
        ### HINT: nn.ModuleList of SelfAttention heads, and one nn.Linear (Xavier init) on the concatenation.
        self.heads = nn.ModuleList([SelfAttention(dim_in, dim_out, dim_out) for _ in range(num_heads)])
        self.proj = nn.Linear(num_heads * dim_out, dim_in)
        _xavier_(self.proj)
        ### END SOLUTION

    def _project(self, x, name):
        """Apply the linear map `name` ("q", "k" or "v") of every head at once: (N, K, D) -> (N, H, K, dim_out)."""
        layers = [getattr(h, name) for h in self.heads]
        weight = torch.cat([layer.weight for layer in layers], dim=0)
        bias = torch.cat([layer.bias for layer in layers], dim=0)
        N, K, _ = x.shape
        return F.linear(x, weight, bias).view(N, K, self.num_heads, -1).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor = None) -> Tensor:
        """query (N, K_q, dim_in), key/value (N, K_k, dim_in), mask (N, K_q, K_k) or (K_q, K_k)
        (the same mask for every sample, as torch.nn.MultiheadAttention accepts) -> (N, K_q, dim_in)."""
        y = None
        mask = _batch_mask(mask, query, key)  # None or (N or 1, K_q, K_k)
        ### BEGIN SOLUTION
        ### HINT: run every head (or all at once), concatenate along the last dimension, then self.proj.
        q, k, v = self._project(query, "q"), self._project(key, "k"), self._project(value, "v")
        if mask is not None:
            mask = mask.unsqueeze(1)  # (N, 1, K_q, K_k): the same mask for every head
        heads, self.weights_softmax = scaled_dot_product_no_loop_batch(q, k, v, mask)
        for h, head in enumerate(self.heads):
            head.weights_softmax = self.weights_softmax[:, h]
        N, _, K_q, _ = heads.shape
        y = self.proj(heads.transpose(1, 2).reshape(N, K_q, self.num_heads * self.dim_out))
        ### END SOLUTION
        return y


class LayerNormalization(nn.Module):
    """Layer norm over the last dimension: y = scale * (x - mean) / sqrt(var + epsilon) + shift,
    with the biased variance (as torch.nn.LayerNorm; the course wrote (x - mean)/(std + eps),
    which differs only by terms of order eps). `scale` starts at 1, `shift` at 0 (shape (emb_dim,)).
    Works for x of shape (N, K, M) or (N, M).
    """

    def __init__(self, emb_dim: int, epsilon: float = 1e-10):
        super().__init__()
        self.epsilon = epsilon
        self.scale = None
        self.shift = None
        ### BEGIN SOLUTION
        ### HINT: two nn.Parameter vectors of length emb_dim (ones and zeros).
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))
        ### END SOLUTION

    def forward(self, x: Tensor) -> Tensor:
        y = None
        ### BEGIN SOLUTION
        ### HINT: mean and biased variance over dim=-1 (keepdim=True); no torch.nn.functional.layer_norm.
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
        y = self.scale * (x - mean) / torch.sqrt(var + self.epsilon) + self.shift
        ### END SOLUTION
        return y


class FeedForwardBlock(nn.Module):
    """Linear(inp_dim, hidden_dim_feedforward) - ReLU - Linear(hidden_dim_feedforward, inp_dim),
    Xavier-uniform init. (N, K, inp_dim) -> (N, K, inp_dim)."""

    def __init__(self, inp_dim: int, hidden_dim_feedforward: int):
        super().__init__()
        self.linear1 = self.linear2 = None
        ### BEGIN SOLUTION
        ### HINT: two nn.Linear layers, each initialized with _xavier_.
        self.linear1 = nn.Linear(inp_dim, hidden_dim_feedforward)
        self.linear2 = nn.Linear(hidden_dim_feedforward, inp_dim)
        _xavier_(self.linear1)
        _xavier_(self.linear2)
        ### END SOLUTION

    def forward(self, x):
        y = None
        ### BEGIN SOLUTION
        ### HINT: the first linear layer, a ReLU, the second linear layer.
        y = self.linear2(F.relu(self.linear1(x)))
        ### END SOLUTION
        return y


def _check_heads(emb_dim, num_heads):
    if emb_dim % num_heads != 0:
        raise ValueError(f"emb_dim = {emb_dim} is not divisible by num_heads = {num_heads}")


class EncoderBlock(nn.Module):
    """Self-attention and feed-forward sublayers, each with a residual connection and its
    OWN layer norm (`norm1`, `norm2`). Head width emb_dim // num_heads.

    Post-norm (course and paper, `norm_first=False`):
        out2 = norm1(x + dropout(MHA(x, x, x)));  out = norm2(out2 + dropout(FF(out2)))
    Pre-norm (`norm_first=True`):
        out2 = x + dropout(MHA(n, n, n)) with n = norm1(x);  out = out2 + dropout(FF(norm2(out2)))
    """

    def __init__(self, num_heads: int, emb_dim: int, feedforward_dim: int, dropout: float,
                 norm_first: bool = False):
        super().__init__()
        _check_heads(emb_dim, num_heads)
        self.norm_first = norm_first
        self.attention = self.norm1 = self.norm2 = self.feed_forward = self.dropout = None
        ### BEGIN SOLUTION
        ### HINT: MultiHeadAttention(num_heads, emb_dim, emb_dim // num_heads), two LayerNormalization, FeedForwardBlock, nn.Dropout.
        self.attention = MultiHeadAttention(num_heads, emb_dim, emb_dim // num_heads)
        self.norm1 = LayerNormalization(emb_dim)
        self.norm2 = LayerNormalization(emb_dim)
        self.feed_forward = FeedForwardBlock(emb_dim, feedforward_dim)
        self.dropout = nn.Dropout(dropout)
        ### END SOLUTION

    def forward(self, x, mask=None):
        """x (N, K, M), optional mask (N, K, K) -> (N, K, M)."""
        y = None
        ### BEGIN SOLUTION
        ### HINT: the two formulas of the class docstring (branch on self.norm_first); self-attention is self.attention(q, k, v, mask) with q = k = v.
        if self.norm_first:
            n = self.norm1(x)
            x = x + self.dropout(self.attention(n, n, n, mask))
            y = x + self.dropout(self.feed_forward(self.norm2(x)))
        else:
            x = self.norm1(x + self.dropout(self.attention(x, x, x, mask)))
            y = self.norm2(x + self.dropout(self.feed_forward(x)))
        ### END SOLUTION
        return y


def get_subsequent_mask(seq):
    """Causal mask for a batch of target sequences seq (N, K): a bool tensor (N, K, K) that is
    True above the diagonal (position i may not attend to positions j > i)."""
    mask = None
    ### BEGIN SOLUTION
    ### HINT: torch.triu of a (K, K) bool ones matrix with diagonal=1, expanded to (N, K, K).
    N, K = seq.shape[:2]
    mask = torch.triu(torch.ones(K, K, dtype=torch.bool, device=seq.device), diagonal=1)
    mask = mask.unsqueeze(0).expand(N, K, K)
    ### END SOLUTION
    return mask


class DecoderBlock(nn.Module):
    """Masked self-attention, cross-attention over the encoder output, feed-forward; each with
    a residual connection and its own layer norm (`norm1`, `norm2`, `norm3`). Both attentions
    use head width emb_dim // num_heads.

    Post-norm (`norm_first=False`):
        a = norm1(x + dropout(self_attention(x, x, x, mask)))
        b = norm2(a + dropout(cross_attention(a, enc, enc)))
        out = norm3(b + dropout(FF(b)))
    Pre-norm (`norm_first=True`): the same with each norm applied to the sublayer's input.
    """

    def __init__(self, num_heads: int, emb_dim: int, feedforward_dim: int, dropout: float,
                 norm_first: bool = False):
        super().__init__()
        _check_heads(emb_dim, num_heads)
        self.norm_first = norm_first
        self.attention_self = self.attention_cross = self.feed_forward = None
        self.norm1 = self.norm2 = self.norm3 = self.dropout = None
        ### BEGIN SOLUTION
        ### HINT: two MultiHeadAttention(num_heads, emb_dim, emb_dim // num_heads), three LayerNormalization, FeedForwardBlock, nn.Dropout.
        self.attention_self = MultiHeadAttention(num_heads, emb_dim, emb_dim // num_heads)
        self.attention_cross = MultiHeadAttention(num_heads, emb_dim, emb_dim // num_heads)
        self.feed_forward = FeedForwardBlock(emb_dim, feedforward_dim)
        self.norm1 = LayerNormalization(emb_dim)
        self.norm2 = LayerNormalization(emb_dim)
        self.norm3 = LayerNormalization(emb_dim)
        self.dropout = nn.Dropout(dropout)
        ### END SOLUTION

    def forward(self, dec_inp: Tensor, enc_inp: Tensor, mask: Tensor = None) -> Tensor:
        """dec_inp (N, K_out, M), enc_inp (N, K_in, M) (the encoder output), mask (N, K_out, K_out)
        -> (N, K_out, M)."""
        y = None
        ### BEGIN SOLUTION
        ### HINT: the class docstring's three sublayers (branch on self.norm_first): masked self-attention, cross-attention with keys and values from enc_inp, feed-forward.
        x = dec_inp
        if self.norm_first:
            n = self.norm1(x)
            x = x + self.dropout(self.attention_self(n, n, n, mask))
            x = x + self.dropout(self.attention_cross(self.norm2(x), enc_inp, enc_inp))
            y = x + self.dropout(self.feed_forward(self.norm3(x)))
        else:
            x = self.norm1(x + self.dropout(self.attention_self(x, x, x, mask)))
            x = self.norm2(x + self.dropout(self.attention_cross(x, enc_inp, enc_inp)))
            y = self.norm3(x + self.dropout(self.feed_forward(x)))
        ### END SOLUTION
        return y


class Encoder(nn.Module):
    """`num_layers` EncoderBlocks in sequence (plus a final LayerNormalization when norm_first)."""

    def __init__(self, num_heads: int, emb_dim: int, feedforward_dim: int, num_layers: int,
                 dropout: float, norm_first: bool = False):
        super().__init__()
        self.layers = nn.ModuleList([EncoderBlock(num_heads, emb_dim, feedforward_dim, dropout, norm_first)
                                     for _ in range(num_layers)])
        self.norm = LayerNormalization(emb_dim) if norm_first else None

    def forward(self, src_seq: Tensor):
        """src_seq (N, K_in, M) -> (N, K_in, M)."""
        for layer in self.layers:
            src_seq = layer(src_seq)
        return self.norm(src_seq) if self.norm is not None else src_seq


class Decoder(nn.Module):
    """`num_layers` DecoderBlocks, (a final norm when norm_first), then `proj_to_vocab` =
    Linear(emb_dim, vocab_len) (Xavier-uniform init)."""

    def __init__(self, num_heads: int, emb_dim: int, feedforward_dim: int, num_layers: int,
                 dropout: float, vocab_len: int, norm_first: bool = False):
        super().__init__()
        self.layers = nn.ModuleList([DecoderBlock(num_heads, emb_dim, feedforward_dim, dropout, norm_first)
                                     for _ in range(num_layers)])
        self.norm = LayerNormalization(emb_dim) if norm_first else None
        self.proj_to_vocab = nn.Linear(emb_dim, vocab_len)
        _xavier_(self.proj_to_vocab)

    def forward(self, target_seq: Tensor, enc_out: Tensor, mask: Tensor):
        """target_seq (N, K_out, M) (embedded), enc_out (N, K_in, M), mask (N, K_out, K_out)
        -> logits (N, K_out, vocab_len)."""
        out = target_seq
        for layer in self.layers:
            out = layer(out, enc_out, mask)
        if self.norm is not None:
            out = self.norm(out)
        return self.proj_to_vocab(out)


# ---------------------------------------------------------------------------------------------
# Positional encodings
# ---------------------------------------------------------------------------------------------
def position_encoding_simple(K: int, M: int) -> Tensor:
    """The course's simple encoding: a (1, K, M) tensor whose row k is filled with k / K."""
    y = None
    ### BEGIN SOLUTION
    ### HINT: torch.arange(K) / K, repeated across the M columns.
    y = (torch.arange(K, dtype=torch.float32) / K).view(1, K, 1).repeat(1, 1, M)
    ### END SOLUTION
    return y


def position_encoding_sinusoid(K: int, M: int) -> Tensor:
    """The paper's sinusoidal encoding, (1, K, M):
    PE[p, 2i] = sin(p / 10000^(2i / M)),  PE[p, 2i + 1] = cos(p / 10000^(2i / M))
    for positions p = 0..K-1 (M may be odd: the last column is then a sine)."""
    y = None
    ### BEGIN SOLUTION
    ### HINT: angle[p, i] = p / 10000 ** (2i / M) for i = 0 .. ceil(M/2) - 1; sines in even columns, cosines in odd.
    p = torch.arange(K, dtype=torch.float64).unsqueeze(1)                   # (K, 1)
    two_i = torch.arange(0, M, 2, dtype=torch.float64)                      # 2i
    angle = p / (10000.0 ** (two_i / M))                                    # (K, ceil(M/2))
    y = torch.zeros(K, M, dtype=torch.float64)
    y[:, 0::2] = torch.sin(angle)
    y[:, 1::2] = torch.cos(angle[:, : M // 2])
    y = y.to(torch.float32).unsqueeze(0)
    ### END SOLUTION
    return y


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
class Transformer(nn.Module):
    """Encoder-decoder Transformer with one shared `emb_layer` = nn.Embedding(vocab_len, emb_dim)
    for the question and the answer tokens; positional encodings are given as inputs.

    forward(ques_b (N, K_in), ques_pos (N, K_in, M), ans_b (N, O), ans_pos (N, O, M))
    -> logits (N * (O - 1), vocab_len): the decoder reads ans_b[:, :-1] (teacher forcing) with
    the causal mask, and row n * (O - 1) + t predicts ans_b[n, t + 1].
    `norm_first` selects pre-norm blocks (default: the course's post-norm).
    """

    def __init__(self, num_heads: int, emb_dim: int, feedforward_dim: int, dropout: float,
                 num_enc_layers: int, num_dec_layers: int, vocab_len: int, norm_first: bool = False):
        super().__init__()
        self.emb_layer = None
        ### BEGIN SOLUTION
        ### HINT: one nn.Embedding(vocab_len, emb_dim).
        self.emb_layer = nn.Embedding(vocab_len, emb_dim)
        ### END SOLUTION
        self.encoder = Encoder(num_heads, emb_dim, feedforward_dim, num_enc_layers, dropout, norm_first)
        self.decoder = Decoder(num_heads, emb_dim, feedforward_dim, num_dec_layers, dropout, vocab_len,
                               norm_first)

    def encode(self, ques_b: Tensor, ques_pos: Tensor) -> Tensor:
        """Embed the question, add its positions, run the encoder: -> (N, K_in, M)."""
        enc_out = None
        ### BEGIN SOLUTION
        ### HINT: embed the question tokens (self.emb_layer), add the positional encodings, run self.encoder.
        enc_out = self.encoder(self.emb_layer(ques_b) + ques_pos)
        ### END SOLUTION
        return enc_out

    def decode(self, enc_out: Tensor, ans_b: Tensor, ans_pos: Tensor) -> Tensor:
        """Embed ALL of ans_b (N, T), add ans_pos[:, :T], run the decoder with the causal mask:
        -> logits (N, T, vocab_len); position t predicts the token after ans_b[:, t]."""
        logits = None
        ### BEGIN SOLUTION
        ### HINT: emb_layer(ans_b) + ans_pos[:, :T]; mask from get_subsequent_mask(ans_b); self.decoder.
        T = ans_b.shape[1]
        logits = self.decoder(self.emb_layer(ans_b) + ans_pos[:, :T], enc_out, get_subsequent_mask(ans_b))
        ### END SOLUTION
        return logits

    def forward(self, ques_b: Tensor, ques_pos: Tensor, ans_b: Tensor, ans_pos: Tensor) -> Tensor:
        dec_out = None
        ### BEGIN SOLUTION
        ### HINT: encode, then decode ans_b[:, :-1], then flatten to (N * (O - 1), V).
        logits = self.decode(self.encode(ques_b, ques_pos), ans_b[:, :-1], ans_pos)
        dec_out = logits.reshape(-1, logits.shape[-1])
        ### END SOLUTION
        return dec_out


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _cached_encoding(pos_encode, K, M):
    return pos_encode(K, M)


class AddSubDataset(torch.utils.data.Dataset):
    """The arithmetic expressions as token tensors.

    args: input_seqs / target_seqs (lists of strings), convert_str_to_tokens (token dict),
    special_tokens (list), emb_dim (M), pos_encode (a function (K, M) -> (1, K, M)).
    `dataset[i]` = (inp_tokens (K_in,) int64, inp_pos (K_in, M), out_tokens (O,), out_pos (O, M)).
    Tokens are computed once; encodings are cached per length.
    """

    def __init__(self, input_seqs, target_seqs, convert_str_to_tokens, special_tokens, emb_dim, pos_encode):
        self.input_seqs = list(input_seqs)
        self.target_seqs = list(target_seqs)
        self.convert_str_to_tokens = convert_str_to_tokens
        self.special_tokens = special_tokens
        self.emb_dim = emb_dim
        self.pos_encode = pos_encode
        self._inp = [torch.tensor(self.preprocess(s)) for s in self.input_seqs]
        self._out = [torch.tensor(self.preprocess(s)) for s in self.target_seqs]

    def preprocess(self, inp):
        return prepocess_input_sequence(inp, self.convert_str_to_tokens, self.special_tokens)

    def __getitem__(self, idx):
        inp, out = self._inp[idx], self._out[idx]
        inp_pos = _cached_encoding(self.pos_encode, len(inp), self.emb_dim)[0]
        out_pos = _cached_encoding(self.pos_encode, len(out), self.emb_dim)[0]
        return inp, inp_pos, out, out_pos

    def __len__(self):
        return len(self.input_seqs)

    def tensors(self):
        """All items stacked (every expression here has the same lengths):
        (inp (N, K_in), inp_pos (N, K_in, M), out (N, O), out_pos (N, O, M)); the encodings
        are expanded views (no copies)."""
        inp, out = torch.stack(self._inp), torch.stack(self._out)
        N = len(self)
        inp_pos = _cached_encoding(self.pos_encode, inp.shape[1], self.emb_dim).expand(N, -1, -1)
        out_pos = _cached_encoding(self.pos_encode, out.shape[1], self.emb_dim).expand(N, -1, -1)
        return inp, inp_pos, out, out_pos


class TensorBatches:
    """A fast stand-in for DataLoader(AddSubDataset) on small data: yields batches
    (inp, inp_pos, out, out_pos) from the stacked tensors, reshuffled every pass when
    `shuffle` (with its own torch.Generator seeded by `seed`, so runs are reproducible)."""

    def __init__(self, dataset, batch_size, shuffle=False, seed=0, drop_last=False):
        self.data = dataset.tensors() if isinstance(dataset, AddSubDataset) else tuple(dataset)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        n = self.data[0].shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = self.data[0].shape[0]
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield tuple(t[idx] for t in self.data)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def LabelSmoothingLoss(pred, ground, eps=0.1):
    """Cross-entropy with label smoothing, SUMMED over rows: the target distribution puts
    1 - eps on the true class and eps / (V - 1) on each other class.
    pred (R, V) logits; ground (N, O) or (R,) class ids with R = N * O."""
    loss = None
    ### BEGIN SOLUTION
    ### HINT: build the smoothed one-hot targets (F.one_hot with num_classes=V) and sum -target * log_softmax.
    ground = ground.contiguous().view(-1)
    V = pred.shape[1]
    one_hot = F.one_hot(ground, num_classes=V).to(pred.dtype)
    target = one_hot * (1 - eps) + (1 - one_hot) * eps / (V - 1)
    loss = -(target * F.log_softmax(pred, dim=1)).sum()
    ### END SOLUTION
    return loss


def CrossEntropyLoss(pred, ground):
    """Cross-entropy summed over rows: pred (R, V), ground (N, O) or (R,)."""
    loss = None
    ### BEGIN SOLUTION
    ### HINT: F.cross_entropy summed over rows (reduction="sum"), with the targets flattened to (R,).
    loss = F.cross_entropy(pred, ground.contiguous().view(-1), reduction="sum")
    ### END SOLUTION
    return loss


# ---------------------------------------------------------------------------------------------
# Training, validation, greedy inference (the course's a5_helper functions, fixed)
# ---------------------------------------------------------------------------------------------
def _to(batch, device):
    return tuple(t.to(device) for t in batch)


def lr_at(step, total_steps, lr, warmup_lr, warmup_interval, schedule="step"):
    """Learning rate at optimizer step `step` (0-based).

    "step" (the course): warmup_lr for the first warmup_interval steps, then lr.
    "cosine": linear warmup from warmup_lr to lr over warmup_interval steps, then cosine
    decay to 0 at total_steps.
    """
    if schedule == "step":
        return warmup_lr if step < warmup_interval else lr
    if schedule == "cosine":
        if step < warmup_interval:
            return warmup_lr + (lr - warmup_lr) * step / warmup_interval
        progress = (step - warmup_interval) / max(1, total_steps - warmup_interval)
        return 0.5 * lr * (1 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown schedule {schedule!r}")


def _adam(params, lr, weight_decay):
    """The course's Adam (betas (0.9, 0.995), eps 1e-9), AdamW when weight_decay > 0; the fused
    kernel when this torch build has it (same update, fewer small ops), else the default."""
    cls = torch.optim.AdamW if weight_decay > 0 else torch.optim.Adam
    kwargs = {"lr": lr, "betas": (0.9, 0.995), "eps": 1e-9, "weight_decay": weight_decay}
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, **kwargs)


def train(model, train_dataloader, val_dataloader, loss_func, num_epochs, batch_size=32,
          warmup_lr=6e-6, warmup_interval=1000, lr=6e-4, device=torch.device("cpu"), *,
          weight_decay=0.0, schedule="step", grad_clip=None, val_every=1, callback=None,
          verbose=True, return_history=False):
    """Train `model` with teacher forcing: inputs ans[:, :-1], targets ans[:, 1:].

    The course's protocol: Adam(betas (0.9, 0.995), eps 1e-9) with `warmup_lr` for the first
    `warmup_interval` iterations, then `lr` (schedule "step"). Extras: `weight_decay` > 0
    switches to AdamW (decoupled weight decay); schedule "cosine" = linear warmup then cosine
    decay; `grad_clip` clips the global gradient norm. The loss is `loss_func` (summed) divided
    by the number of target tokens. Every `val_every` epochs (and after the last), `val` runs on
    `val_dataloader` (skipped if None) and `callback(epoch, model)` is called if given.
    `batch_size` is kept for the course's signature (batches come from the loaders).

    Returns the model, or (model, history) with `return_history`: history has lists
    "epoch", "train_loss" (mean per token, each epoch), and "val_epoch", "val_loss",
    "val_accuracy" (teacher-forced token accuracy).
    """
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _adam(params, lr, weight_decay)
    total_steps = num_epochs * len(train_dataloader)
    history = {"epoch": [], "train_loss": [], "val_epoch": [], "val_loss": [], "val_accuracy": []}
    step = 0
    for epoch in range(1, num_epochs + 1):
        model.train()
        loss_sum, tokens = 0.0, 0
        for batch in train_dataloader:
            ques, ques_pos, ans, ans_pos = _to(batch, device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, lr, warmup_lr, warmup_interval, schedule)
            target = ans[:, 1:]
            loss = loss_func(model(ques, ques_pos, ans, ans_pos), target) / target.numel()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            step += 1
            loss_sum += loss.item() * target.numel()
            tokens += target.numel()
        history["epoch"].append(epoch)
        history["train_loss"].append(loss_sum / max(tokens, 1))
        if epoch % val_every == 0 or epoch == num_epochs:
            msg = f"epoch {epoch:4d}  train loss {history['train_loss'][-1]:.4f}"
            if val_dataloader is not None:
                v_loss, v_acc = val(model, val_dataloader, loss_func, batch_size, device)
                history["val_epoch"].append(epoch)
                history["val_loss"].append(v_loss)
                history["val_accuracy"].append(v_acc)
                msg += f"  val loss {v_loss:.4f}  val token accuracy {v_acc:.4f}"
            if callback is not None:
                callback(epoch, model)
            if verbose:
                print(msg)
    return (model, history) if return_history else model


@torch.no_grad()
def val(model, dataloader, loss_func, batch_size=None, device=torch.device("cpu")):
    """Teacher-forced evaluation over EVERY batch of `dataloader`.

    Returns (mean loss per target token, token accuracy): the fraction of target tokens
    ans[:, 1:] (sign, digits, EOS) whose arg-max prediction is right when the decoder reads
    the true previous tokens. (The reference counted the correct tokens of the last batch
    only.) `batch_size` is kept for the course's signature and not needed.
    """
    was_training = model.training
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    for batch in dataloader:
        ques, ques_pos, ans, ans_pos = _to(batch, device)
        logits = model(ques, ques_pos, ans, ans_pos)
        target = ans[:, 1:].reshape(-1)
        loss_sum += float(loss_func(logits, target))
        correct += int((logits.argmax(dim=-1) == target).sum())
        total += target.numel()
    model.train(was_training)
    return loss_sum / max(total, 1), correct / max(total, 1)


@torch.no_grad()
def inference(model, inp_exp, inp_exp_pos, out_pos_exp, out_seq_len):
    """Greedy autoregressive decoding, token by token, starting from BOS.

    inp_exp (N, K_in) or (K_in,) tokens, inp_exp_pos (N or 1, K_in, M), out_pos_exp
    (N or 1, >= out_seq_len, M). At step t the decoder reads the t tokens decoded so far (with
    the causal mask) and the arg-max over the vocabulary at the LAST position is appended.
    Runs on the device of `inp_exp`.

    Returns (tokens (N, out_seq_len) int64 starting with BOS, logits (N, out_seq_len - 1, V)
    of the last step: row t scores the token at position t + 1).
    """
    was_training = model.training
    model.eval()
    if inp_exp.dim() == 1:
        inp_exp = inp_exp.unsqueeze(0)
    N = inp_exp.shape[0]
    device = inp_exp.device
    inp_exp_pos = inp_exp_pos.to(device).expand(N, -1, -1)
    out_pos_exp = out_pos_exp.to(device).expand(N, -1, -1)
    enc_out = model.encode(inp_exp, inp_exp_pos)
    tokens = torch.full((N, 1), BOS, dtype=torch.long, device=device)
    logits = None
    for _ in range(out_seq_len - 1):
        logits = model.decode(enc_out, tokens, out_pos_exp)
        next_token = logits[:, -1].argmax(dim=-1, keepdim=True)
        tokens = torch.cat([tokens, next_token], dim=1)
    model.train(was_training)
    return tokens, logits


@torch.no_grad()
def exact_match(model, dataloader, device=torch.device("cpu")):
    """Greedy-decode every question of `dataloader` (from BOS, `inference`) and compare the
    whole decoded answer (sign, digits, EOS) with the true one.

    Returns (fraction of answers exactly right, predicted tokens (N, O) on the CPU)."""
    right, total, predictions = 0, 0, []
    for batch in dataloader:
        ques, ques_pos, ans, ans_pos = _to(batch, device)
        pred, _ = inference(model, ques, ques_pos, ans_pos, ans.shape[1])
        right += int((pred == ans).all(dim=1).sum())
        total += ans.shape[0]
        predictions.append(pred.cpu())
    return right / max(total, 1), torch.cat(predictions)


def decode_tokens(tokens, vocab=VOCAB):
    """Token ids (O,) -> the course's string form, e.g. [14, 11, 4, 9, 15] -> "BOS NEGATIVE 49 EOS"
    (consecutive digits are joined into one number)."""
    words = []
    for t in (int(t) for t in tokens):
        w = vocab[t]
        if w.isdigit() and words and words[-1].isdigit():
            words[-1] += w
        else:
            words.append(w)
    return " ".join(words)
