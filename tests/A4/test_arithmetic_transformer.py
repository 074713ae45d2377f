"""Unit tests for A4/arithmetic_transformer.py (and the data split of transformer_experiments.py).

References: torch.nn.functional.scaled_dot_product_attention, torch.nn.MultiheadAttention,
torch.nn.LayerNorm, torch.nn.TransformerEncoderLayer / TransformerDecoderLayer /
torch.nn.Transformer with copied weights (float64), torch.nn.functional.cross_entropy,
and brute-force Python (positional-encoding formulas, greedy decoding by re-running the
model on every prefix). Tolerances are stated per check; failures print ours vs reference
(eecs598.testing.assert_close).
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import arithmetic_transformer as at
import transformer_experiments as tx
from eecs598.testing import assert_close, shared_data_available

DT = torch.float64
TOL = 1e-10  # float64 comparisons against torch references
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
requires_arithmetic = pytest.mark.skipif(not shared_data_available("arithmetic", "two_digit_op.json"),
                                         reason="arithmetic/two_digit_op.json not in $EECS598_DATA")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: run single-threaded (much faster on a busy shared CPU); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randn(*shape, seed=0, device="cpu"):
    torch.manual_seed(seed)
    return torch.randn(*shape, dtype=DT, device=device)


def test_hello(capsys):
    at.hello_transformers()
    assert capsys.readouterr().out.strip() == "Hello from arithmetic_transformer.py!"


# ---------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------
def test_generate_token_dict():
    vocab = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "POSITIVE", "NEGATIVE", "add", "subtract",
             "BOS", "EOS"]
    d = at.generate_token_dict(vocab)
    assert d == {w: i for i, w in enumerate(vocab)}
    assert d["BOS"] == 14 and d["EOS"] == 15 and at.BOS == 14 and at.EOS == 15


def test_prepocess_input_sequence():
    d = at.generate_token_dict(at.VOCAB)
    # written out by hand from the vocabulary: digits are their own ids
    assert at.prepocess_input_sequence("BOS POSITIVE 0333 add POSITIVE 0696 EOS", d, at.SPECIAL_TOKENS) == \
        [14, 10, 0, 3, 3, 3, 12, 10, 0, 6, 9, 6, 15]
    assert at.prepocess_input_sequence("BOS NEGATIVE 30 subtract NEGATIVE 34 EOS", d, at.SPECIAL_TOKENS) == \
        [14, 11, 3, 0, 13, 11, 3, 4, 15]
    # the course's docstring example with a custom dictionary
    d2 = {"BOS": 1, "POSITIVE": 2, "add": 3, "EOS": 4, "0": 5, "3": 6, "6": 7, "9": 8}
    assert at.prepocess_input_sequence("BOS POSITIVE 0333 add POSITIVE 0696 EOS", d2,
                                       ["BOS", "POSITIVE", "add", "EOS"]) == [1, 2, 5, 6, 6, 6, 3, 2, 5, 7, 8, 7, 4]


def test_decode_tokens_round_trip():
    d = at.generate_token_dict(at.VOCAB)
    s = "BOS NEGATIVE 49 EOS"
    assert at.decode_tokens(at.prepocess_input_sequence(s, d, at.SPECIAL_TOKENS)) == s


# ---------------------------------------------------------------------------------------
# Attention vs torch.nn.functional.scaled_dot_product_attention (float64, tol 1e-10)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("Kq,Kk,M", [(5, 5, 8), (3, 7, 4), (1, 6, 16)])
def test_two_loop_single_vs_sdpa(Kq, Kk, M):
    q, k, v = _randn(Kq, M, seed=1), _randn(Kk, M, seed=2), _randn(Kk, M, seed=3)
    ref = F.scaled_dot_product_attention(q[None], k[None], v[None])[0]
    assert_close(at.scaled_dot_product_two_loop_single(q, k, v), ref, TOL, "two_loop_single")


@pytest.mark.parametrize("N,Kq,Kk,M", [(2, 5, 5, 8), (3, 4, 6, 4)])
def test_two_loop_batch_and_no_loop_vs_sdpa(N, Kq, Kk, M):
    q, k, v = _randn(N, Kq, M, seed=1), _randn(N, Kk, M, seed=2), _randn(N, Kk, M, seed=3)
    ref = F.scaled_dot_product_attention(q, k, v)
    assert_close(at.scaled_dot_product_two_loop_batch(q, k, v), ref, TOL, "two_loop_batch")
    y, w = at.scaled_dot_product_no_loop_batch(q, k, v)
    assert_close(y, ref, TOL, "no_loop_batch")
    # weights: softmax of the scaled scores, written out with einsum
    ref_w = torch.softmax(torch.einsum("nim,njm->nij", q, k) / math.sqrt(M), dim=-1)
    assert w.shape == (N, Kq, Kk)
    assert_close(w, ref_w, TOL, "weights_softmax")
    # the three variants agree with each other
    for n in range(N):
        assert_close(at.scaled_dot_product_two_loop_single(q[n], k[n], v[n]), y[n], TOL, "single vs no-loop")


@pytest.mark.parametrize("device", DEVICES)
def test_no_loop_mask_vs_sdpa(device):
    N, K, M = 3, 6, 8
    q, k, v = (_randn(N, K, M, seed=s, device=device) for s in (1, 2, 3))
    torch.manual_seed(4)
    mask = torch.rand(N, K, K, device=device) < 0.4
    mask[:, :, 0] = False  # keep at least one key per query
    y, w = at.scaled_dot_product_no_loop_batch(q, k, v, mask)
    # course: True = masked out;  SDPA's boolean attn_mask: True = keep
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=~mask)
    assert_close(y, ref, TOL, "masked no_loop vs SDPA")
    assert torch.all(w[mask] == 0)
    causal = at.get_subsequent_mask(torch.zeros(N, K, dtype=torch.long, device=device))
    y, _ = at.scaled_dot_product_no_loop_batch(q, k, v, causal)
    assert_close(y, F.scaled_dot_product_attention(q, k, v, is_causal=True), TOL, "causal vs SDPA is_causal")


def test_get_subsequent_mask():
    seq = torch.zeros(2, 5, dtype=torch.long)
    mask = at.get_subsequent_mask(seq)
    ref = torch.isinf(nn.Transformer.generate_square_subsequent_mask(5, dtype=DT))  # -inf above the diagonal
    assert mask.shape == (2, 5, 5) and mask.dtype == torch.bool
    assert torch.equal(mask[0], ref) and torch.equal(mask[1], ref)


def test_self_attention_vs_sdpa():
    N, K, D, dq, dv = 2, 5, 6, 4, 3
    torch.manual_seed(0)
    sa = at.SelfAttention(D, dq, dv).to(DT)
    x, kv = _randn(N, K, D, seed=1), _randn(N, 7, D, seed=2)
    y = sa(x, kv, kv)
    ref = F.scaled_dot_product_attention(F.linear(x, sa.q.weight, sa.q.bias), F.linear(kv, sa.k.weight, sa.k.bias),
                                         F.linear(kv, sa.v.weight, sa.v.bias))
    assert y.shape == (N, K, dv) and sa.weights_softmax.shape == (N, K, 7)
    assert_close(y, ref, TOL, "SelfAttention")
    bound = math.sqrt(6 / (D + dq))  # the course's Xavier-uniform init
    assert sa.q.weight.abs().max() <= bound and torch.all(sa.q.bias == 0)


def _load_mha(ref, ours):
    """Copy our MultiHeadAttention's weights into a torch.nn.MultiheadAttention (head h of
    nn.MultiheadAttention = rows h*d:(h+1)*d of each projection)."""
    with torch.no_grad():
        for i, name in enumerate("qkv"):
            E = ref.embed_dim
            ref.in_proj_weight[i * E:(i + 1) * E] = torch.cat([getattr(h, name).weight for h in ours.heads])
            ref.in_proj_bias[i * E:(i + 1) * E] = torch.cat([getattr(h, name).bias for h in ours.heads])
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)


@pytest.mark.parametrize("masked", [False, True])
def test_multi_head_attention_vs_torch(masked):
    N, Kq, Kk, E, H = 2, 4, 6, 12, 3
    torch.manual_seed(0)
    mha = at.MultiHeadAttention(H, E, E // H).to(DT)
    ref = nn.MultiheadAttention(E, H, batch_first=True, dtype=DT)
    _load_mha(ref, mha)
    q, kv = _randn(N, Kq, E, seed=1), _randn(N, Kk, E, seed=2)
    mask = None
    if masked:
        torch.manual_seed(3)
        mask = torch.rand(N, Kq, Kk) < 0.4
        mask[:, :, 0] = False
    y = mha(q, kv, kv, mask)
    ref_y, ref_w = ref(q, kv, kv, attn_mask=None if mask is None else mask.repeat_interleave(H, dim=0),
                       need_weights=True, average_attn_weights=False)
    assert_close(y, ref_y, TOL, "MultiHeadAttention vs nn.MultiheadAttention")
    assert_close(mha.weights_softmax, ref_w, TOL, "attention weights")
    # every head's own weights, and the loop-over-heads definition of the course
    loop = torch.cat([head(q, kv, kv, mask) for head in mha.heads], dim=-1)
    assert_close(mha.proj(loop), ref_y, TOL, "loop over heads")


def test_multi_head_attention_2d_mask_broadcasts_over_batch():
    """A (K_q, K_k) mask is the same mask for every sample (as nn.MultiheadAttention's 2-D
    attn_mask). K_q == num_heads (the headline's answer length 4 with 4 heads), where a mask
    broadcast over the head axis instead of the batch would pass unnoticed by shape checks."""
    N, K, E, H = 3, 4, 16, 4
    torch.manual_seed(0)
    mha = at.MultiHeadAttention(H, E, E // H).to(DT)
    ref = nn.MultiheadAttention(E, H, batch_first=True, dtype=DT)
    _load_mha(ref, mha)
    x = _randn(N, K, E, seed=1)
    causal = torch.triu(torch.ones(K, K, dtype=torch.bool), diagonal=1)  # True = not allowed
    y2 = mha(x, x, x, causal)
    w2 = mha.weights_softmax.clone()
    y3 = mha(x, x, x, causal.expand(N, K, K))
    assert_close(y2, y3, TOL, "2-D mask vs the same mask expanded to (N, K_q, K_k)")
    assert_close(w2, mha.weights_softmax, TOL, "attention weights, 2-D vs 3-D mask")
    assert torch.all(w2[:, :, causal] == 0)
    ref_y, _ = ref(x, x, x, attn_mask=causal)
    assert_close(y2, ref_y, TOL, "2-D mask vs nn.MultiheadAttention")


@pytest.mark.parametrize("batch, shape", [(3, (4,)), (3, (1, 3, 4, 4)), (1, (3, 4, 4)), (3, (2, 4, 4)),
                                          (3, (3, 4, 5)), (3, (5, 4))])
def test_multi_head_attention_rejects_masks_that_do_not_fit_the_inputs(batch, shape):
    """Other ranks, another batch size (a batch of 1 would silently take the mask's), other
    lengths: each a ValueError, not a broadcast."""
    mha = at.MultiHeadAttention(4, 16, 4)
    x = torch.randn(batch, 4, 16)
    with pytest.raises(ValueError, match="attention mask"):
        mha(x, x, x, torch.zeros(shape, dtype=torch.bool))


def test_per_head_width_in_encoder_and_decoder():
    enc, dec = at.EncoderBlock(4, 64, 32, 0.0), at.DecoderBlock(4, 64, 32, 0.0)
    for mha in (enc.attention, dec.attention_self, dec.attention_cross):
        assert len(mha.heads) == 4
        for head in mha.heads:
            assert head.q.weight.shape == (16, 64) and head.v.weight.shape == (16, 64)
        assert mha.proj.weight.shape == (64, 64)
    with pytest.raises(ValueError):
        at.EncoderBlock(3, 64, 32, 0.0)


# ---------------------------------------------------------------------------------------
# Layer norm, feed-forward
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 5, 8), (4, 7)])
@pytest.mark.parametrize("eps", [1e-5, 1e-10])
def test_layer_norm_vs_torch(shape, eps):
    M = shape[-1]
    ln = at.LayerNormalization(M, epsilon=eps).to(DT)
    ref = nn.LayerNorm(M, eps=eps, dtype=DT)
    with torch.no_grad():
        ln.scale.copy_(_randn(M, seed=5))
        ln.shift.copy_(_randn(M, seed=6))
        ref.weight.copy_(ln.scale)
        ref.bias.copy_(ln.shift)
    x = (3 * _randn(*shape, seed=7) + 2).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ln(x), ref(x_ref)
    assert_close(y, y_ref, TOL, "LayerNormalization vs nn.LayerNorm")
    g = _randn(*shape, seed=8)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    assert_close(x.grad, x_ref.grad, 1e-9, "dx")
    assert_close(ln.scale.grad, ref.weight.grad, 1e-9, "dscale")
    assert_close(ln.shift.grad, ref.bias.grad, 1e-9, "dshift")


def test_feed_forward():
    torch.manual_seed(0)
    ff = at.FeedForwardBlock(6, 10).to(DT)
    x = _randn(2, 3, 6, seed=1)
    ref = F.linear(torch.relu(F.linear(x, ff.linear1.weight, ff.linear1.bias)), ff.linear2.weight, ff.linear2.bias)
    assert_close(ff(x), ref, TOL, "FeedForwardBlock")


# ---------------------------------------------------------------------------------------
# Blocks and the model vs torch.nn.Transformer* with copied weights (float64, eval mode)
# ---------------------------------------------------------------------------------------
def _copy_ln(ref, ours):
    ours.epsilon = ref.eps
    with torch.no_grad():
        ref.weight.copy_(_randn(*ref.weight.shape, seed=11) * 0.3 + 1)
        ref.bias.copy_(_randn(*ref.bias.shape, seed=12) * 0.3)
        ours.scale.copy_(ref.weight)
        ours.shift.copy_(ref.bias)


def _copy_ff(ref, ours):
    with torch.no_grad():
        ref.linear1.weight.copy_(ours.feed_forward.linear1.weight)
        ref.linear1.bias.copy_(ours.feed_forward.linear1.bias)
        ref.linear2.weight.copy_(ours.feed_forward.linear2.weight)
        ref.linear2.bias.copy_(ours.feed_forward.linear2.bias)


def _copy_encoder_block(ref, ours):
    _load_mha(ref.self_attn, ours.attention)
    _copy_ff(ref, ours)
    _copy_ln(ref.norm1, ours.norm1)
    _copy_ln(ref.norm2, ours.norm2)


def _copy_decoder_block(ref, ours):
    _load_mha(ref.self_attn, ours.attention_self)
    _load_mha(ref.multihead_attn, ours.attention_cross)
    _copy_ff(ref, ours)
    for i in (1, 2, 3):
        _copy_ln(getattr(ref, f"norm{i}"), getattr(ours, f"norm{i}"))


def _randomize_biases(module, seed=20):
    """The course init zeroes biases; give them random values so the comparison covers them."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_block_vs_torch(norm_first):
    E, H, FF = 16, 4, 24
    torch.manual_seed(0)
    ours = at.EncoderBlock(H, E, FF, dropout=0.1, norm_first=norm_first).to(DT).eval()
    _randomize_biases(ours)
    ref = nn.TransformerEncoderLayer(E, H, FF, dropout=0.1, batch_first=True, norm_first=norm_first,
                                     dtype=DT).eval()
    _copy_encoder_block(ref, ours)
    x = _randn(3, 7, E, seed=1)
    assert_close(ours(x), ref(x), TOL, "EncoderBlock vs nn.TransformerEncoderLayer")


def test_encoder_block_has_two_separate_norms():
    block = at.EncoderBlock(2, 8, 16, 0.0)
    assert block.norm1 is not block.norm2
    norms = [m for m in block.modules() if isinstance(m, at.LayerNormalization)]
    assert len(norms) == 2 and len({id(m.scale) for m in norms}) == 2


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_block_vs_torch(norm_first):
    E, H, FF = 16, 4, 24
    torch.manual_seed(0)
    ours = at.DecoderBlock(H, E, FF, dropout=0.1, norm_first=norm_first).to(DT).eval()
    _randomize_biases(ours)
    ref = nn.TransformerDecoderLayer(E, H, FF, dropout=0.1, batch_first=True, norm_first=norm_first,
                                     dtype=DT).eval()
    _copy_decoder_block(ref, ours)
    tgt, mem = _randn(3, 5, E, seed=1), _randn(3, 7, E, seed=2)
    mask = at.get_subsequent_mask(torch.zeros(3, 5, dtype=torch.long))
    ref_y = ref(tgt, mem, tgt_mask=mask[0])  # bool mask: True = not allowed (same convention)
    assert_close(ours(tgt, mem, mask), ref_y, TOL, "DecoderBlock vs nn.TransformerDecoderLayer")
    norms = [m for m in ours.modules() if isinstance(m, at.LayerNormalization)]
    assert len(norms) == 3


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
def test_transformer_vs_torch_transformer():
    """Pre-norm Transformer (final norms after both stacks, as nn.Transformer has) with its
    embedding and output projection, vs nn.Transformer with copied weights."""
    E, H, FF, V, L = 16, 4, 24, 16, 2
    torch.manual_seed(0)
    ours = at.Transformer(H, E, FF, 0.1, L, L, V, norm_first=True).to(DT).eval()
    _randomize_biases(ours)
    ref = nn.Transformer(E, H, L, L, FF, dropout=0.1, batch_first=True, norm_first=True, dtype=DT).eval()
    for i in range(L):
        _copy_encoder_block(ref.encoder.layers[i], ours.encoder.layers[i])
        _copy_decoder_block(ref.decoder.layers[i], ours.decoder.layers[i])
    _copy_ln(ref.encoder.norm, ours.encoder.norm)
    _copy_ln(ref.decoder.norm, ours.decoder.norm)
    torch.manual_seed(1)
    ques, ans = torch.randint(0, V, (3, 9)), torch.randint(0, V, (3, 5))
    ques_pos = at.position_encoding_sinusoid(9, E).to(DT).expand(3, -1, -1)
    ans_pos = at.position_encoding_sinusoid(5, E).to(DT).expand(3, -1, -1)
    logits = ours(ques, ques_pos, ans, ans_pos)
    src = ours.emb_layer(ques) + ques_pos
    tgt = ours.emb_layer(ans[:, :-1]) + ans_pos[:, :-1]
    out = ref(src, tgt, tgt_mask=nn.Transformer.generate_square_subsequent_mask(4, dtype=DT))
    ref_logits = F.linear(out, ours.decoder.proj_to_vocab.weight, ours.decoder.proj_to_vocab.bias)
    assert logits.shape == (3 * 4, V)
    assert_close(logits, ref_logits.reshape(-1, V), 1e-9, "Transformer vs nn.Transformer")


def test_transformer_is_causal():
    """Changing answer token t must not change the logits of earlier positions (post-norm)."""
    torch.manual_seed(0)
    model = at.Transformer(2, 8, 16, 0.0, 1, 2, 16).to(DT).eval()
    ques = torch.randint(0, 16, (2, 9))
    ans = torch.randint(0, 16, (2, 5))
    pos_q = at.position_encoding_sinusoid(9, 8).to(DT)
    pos_a = at.position_encoding_sinusoid(5, 8).to(DT)
    a = model(ques, pos_q, ans, pos_a).view(2, 4, 16)
    ans2 = ans.clone()
    ans2[:, 2] = (ans2[:, 2] + 1) % 16
    b = model(ques, pos_q, ans2, pos_a).view(2, 4, 16)
    assert_close(a[:, :2], b[:, :2], TOL, "logits before the changed token")
    assert (a[:, 2:] - b[:, 2:]).abs().max() > 1e-6


# ---------------------------------------------------------------------------------------
# Positional encodings: brute-force formulas
# ---------------------------------------------------------------------------------------
def test_position_encoding_simple():
    K, M = 5, 3
    y = at.position_encoding_simple(K, M)
    ref = torch.tensor([[[k / K] * M for k in range(K)]])
    assert y.shape == (1, K, M)
    assert_close(y, ref, 1e-7, "simple encoding")


@pytest.mark.parametrize("K,M", [(9, 64), (5, 7), (12, 2)])
def test_position_encoding_sinusoid_formula(K, M):
    y = at.position_encoding_sinusoid(K, M)
    ref = torch.zeros(1, K, M, dtype=DT)
    for p in range(K):
        for j in range(M):
            i = j // 2  # columns 2i (sine) and 2i + 1 (cosine)
            angle = p / 10000 ** (2 * i / M)
            ref[0, p, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    assert y.shape == (1, K, M)
    assert_close(y.to(DT), ref, 1e-6, "sinusoidal encoding (float32)")
    if M >= 4 and K >= 2:  # the exponent depends on the column (the reference's did not)
        assert not torch.allclose(y[0, 1, 0], y[0, 1, 2])


# ---------------------------------------------------------------------------------------
# Losses vs torch.nn.functional.cross_entropy
# ---------------------------------------------------------------------------------------
def test_losses_vs_torch():
    torch.manual_seed(0)
    pred = torch.randn(12, 16, dtype=DT)
    ground = torch.randint(0, 5, (3, 4))  # not every class present (the reference's one_hot broke here)
    assert_close(at.CrossEntropyLoss(pred, ground), F.cross_entropy(pred, ground.view(-1), reduction="sum"),
                 TOL, "CrossEntropyLoss")
    # course: 1 - eps on the truth, eps / (V - 1) elsewhere == torch's label_smoothing = eps * V / (V - 1)
    eps, V = 0.1, 16
    ref = F.cross_entropy(pred, ground.view(-1), reduction="sum", label_smoothing=eps * V / (V - 1))
    assert_close(at.LabelSmoothingLoss(pred, ground), ref, TOL, "LabelSmoothingLoss")


# ---------------------------------------------------------------------------------------
# Training helpers: val over all batches, greedy inference
# ---------------------------------------------------------------------------------------
def _toy_dataset(n=10, M=8):
    d = at.generate_token_dict(at.VOCAB)
    rng = np.random.RandomState(0)
    inputs, outputs = [], []
    for _ in range(n):
        a, b = rng.randint(0, 50, size=2)
        inputs.append(f"BOS POSITIVE {a:02d} add POSITIVE {b:02d} EOS")
        outputs.append(f"BOS POSITIVE {(a + b) % 100:02d} EOS")
    return at.AddSubDataset(inputs, outputs, d, at.SPECIAL_TOKENS, M, at.position_encoding_sinusoid)


def test_dataset_items():
    ds = _toy_dataset()
    inp, inp_pos, out, out_pos = ds[0]
    assert inp.shape == (9,) and inp_pos.shape == (9, 8) and out.shape == (5,) and out_pos.shape == (5, 8)
    assert inp.dtype == torch.int64 and int(out[0]) == at.BOS and int(out[-1]) == at.EOS
    stacked = ds.tensors()
    assert stacked[0].shape == (10, 9) and stacked[3].shape == (10, 5, 8)
    assert torch.equal(stacked[0][3], ds[3][0])


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return at.Transformer(2, 8, 16, 0.0, 1, 1, len(at.VOCAB))


def test_val_counts_every_batch():
    ds = _toy_dataset(10)
    model = _tiny_model()
    loss, acc = at.val(model, at.TensorBatches(ds, 3), at.CrossEntropyLoss)
    q, qp, a, ap = ds.tensors()
    with torch.no_grad():
        logits = model(q, qp, a, ap)
    target = a[:, 1:].reshape(-1)
    assert acc == pytest.approx(float((logits.argmax(-1) == target).double().mean()), abs=1e-12)
    assert loss == pytest.approx(float(F.cross_entropy(logits, target)), rel=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_inference_matches_brute_force(device):
    """`inference` (batched, incremental) == greedy decoding re-run sample by sample with the
    full forward pass on each prefix; and teacher forcing on the model's own output gives
    back the same tokens."""
    ds = _toy_dataset(6)
    torch.manual_seed(0)
    model = at.Transformer(2, 8, 16, 0.0, 1, 2, len(at.VOCAB)).to(device).eval()
    q, qp, a, ap = (t.to(device) for t in ds.tensors())
    tokens, _ = at.inference(model, q, qp[:1], ap[:1], 5)
    assert tokens.shape == (6, 5) and tokens.device.type == torch.device(device).type
    assert torch.all(tokens[:, 0] == at.BOS)
    with torch.no_grad():
        for n in range(6):
            seq = [at.BOS]
            for _ in range(4):
                cur = torch.tensor([seq + [0]], device=device)  # forward drops the last (dummy) token
                logits = model(q[n:n + 1], qp[n:n + 1], cur, ap[n:n + 1, :len(seq) + 1])
                seq.append(int(logits[-1].argmax()))
            assert tokens[n].tolist() == seq
        tf = model(q, qp, tokens, ap).view(6, 4, -1).argmax(-1)
    assert torch.equal(tf, tokens[:, 1:])


def test_train_moves_loss_and_lr_schedule():
    ds = _toy_dataset(8)
    model = _tiny_model()
    loader = at.TensorBatches(ds, 4, shuffle=True)
    _, hist = at.train(model, loader, loader, at.LabelSmoothingLoss, 15, warmup_lr=1e-3, warmup_interval=2,
                       lr=1e-2, weight_decay=0.01, schedule="cosine", verbose=False, return_history=True)
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    assert len(hist["val_accuracy"]) == 15
    assert at.lr_at(0, 100, 1.0, 0.0, 10, "cosine") == 0.0
    assert at.lr_at(10, 100, 1.0, 0.0, 10, "cosine") == pytest.approx(1.0)
    assert at.lr_at(100, 100, 1.0, 0.0, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert at.lr_at(5, 100, 1.0, 0.1, 10, "step") == 0.1 and at.lr_at(10, 100, 1.0, 0.1, 10, "step") == 1.0


def test_cosine_schedule_at_every_step():
    """lr_at("cosine") at every step of a 100-step run against the formula written out: linear
    warmup from warmup_lr to lr over 10 steps, then lr * (1 + cos(pi * progress)) / 2."""
    for step in range(101):
        if step < 10:
            expected = 0.2 + (2.0 - 0.2) * step / 10
        else:
            expected = 2.0 * (1 + math.cos(math.pi * (step - 10) / 90)) / 2
        assert at.lr_at(step, 100, 2.0, 0.2, 10, "cosine") == pytest.approx(expected, abs=1e-12), step


def test_train_scores_the_loss_against_the_next_tokens():
    """train's loss_func gets the logits of the decoder reading ans[:, :-1] and the targets ans[:, 1:]."""
    ds = _toy_dataset(6)
    model = _tiny_model()
    loader = at.TensorBatches(ds, 4)
    seen = []

    def spy(pred, ground):
        seen.append(ground.detach().clone())
        return at.CrossEntropyLoss(pred, ground)
    at.train(model, loader, None, spy, 1, verbose=False)
    expected = [ans[:, 1:] for _, _, ans, _ in loader]
    assert len(seen) == len(expected) == 2
    for got, ref in zip(seen, expected):
        assert torch.equal(got.reshape(ref.shape), ref)


def test_train_clips_the_global_gradient_norm(monkeypatch):
    """grad_clip: at every optimizer step the gradients' global L2 norm is at most grad_clip (and the clip binds)."""
    ds = _toy_dataset(8)
    model = _tiny_model()
    grad_clip = 1e-3
    norms = []
    make_adam = at._adam

    def spying_adam(params, lr, weight_decay):
        opt = make_adam(params, lr, weight_decay)
        step = opt.step

        def recording_step(*a, **k):
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            norms.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))))
            return step(*a, **k)
        opt.step = recording_step
        return opt

    monkeypatch.setattr(at, "_adam", spying_adam)
    at.train(model, at.TensorBatches(ds, 4), None, at.CrossEntropyLoss, 2, warmup_interval=0, lr=1e-3,
             grad_clip=grad_clip, verbose=False)
    assert len(norms) == 4
    assert max(norms) <= grad_clip * (1 + 1e-5), norms
    assert min(norms) > 0.5 * grad_clip, norms  # the unclipped gradients are far larger: the clip binds


def test_train_loss_history_is_the_mean_per_token():
    """With lr 0 (no update) and no dropout, history train_loss = the teacher-forced mean loss per
    target token over the whole set (F.cross_entropy on all rows; batches of unequal size)."""
    ds = _toy_dataset(10)
    model = _tiny_model()
    loader = at.TensorBatches(ds, 4)  # batches of 4, 4, 2
    _, hist = at.train(model, loader, loader, at.CrossEntropyLoss, 1, warmup_lr=0.0, warmup_interval=1, lr=0.0,
                       verbose=False, return_history=True)
    q, qp, a, ap = ds.tensors()
    with torch.no_grad():
        ref = float(F.cross_entropy(model.eval()(q, qp, a, ap), a[:, 1:].reshape(-1)))
    assert hist["train_loss"][0] == pytest.approx(ref, rel=1e-5)
    assert hist["train_loss"][0] == pytest.approx(hist["val_loss"][0], rel=1e-5)


@pytest.mark.parametrize("with_val", [True, False])
def test_train_validates_every_val_every_epochs_and_after_the_last(with_val):
    """5 epochs with val_every=2: validation and the callback run after epochs 2, 4 and 5 (the last)."""
    ds = _toy_dataset(4)
    model = _tiny_model()
    loader = at.TensorBatches(ds, 4)
    called = []
    _, hist = at.train(model, loader, loader if with_val else None, at.CrossEntropyLoss, 5, val_every=2,
                       callback=lambda epoch, m: called.append(epoch), verbose=False, return_history=True)
    assert called == [2, 4, 5]
    assert hist["epoch"] == [1, 2, 3, 4, 5]
    assert hist["val_epoch"] == ([2, 4, 5] if with_val else [])
    assert len(hist["val_loss"]) == len(hist["val_accuracy"]) == (3 if with_val else 0)


def test_exact_match_counts_only_answers_right_in_every_token(monkeypatch):
    """exact_match with a stubbed greedy decoder: rows 0 and 2 exact, row 1 one digit off, row 3 all
    tokens off but BOS -> 0.5, and the stub's predictions are returned in order (batches of 3 + 1)."""
    ds = _toy_dataset(4)
    _, _, a, _ = ds.tensors()
    pred = a.clone()
    pred[1, 2] = (pred[1, 2] + 1) % 10  # one wrong digit
    pred[3, 1:] = (pred[3, 1:] + 1) % len(at.VOCAB)  # everything after BOS wrong
    served = []

    def fake_inference(model, ques, ques_pos, ans_pos, out_seq_len):
        start = sum(served)
        served.append(len(ques))
        assert out_seq_len == a.shape[1]
        return pred[start:start + len(ques)].clone(), None
    monkeypatch.setattr(at, "inference", fake_inference)
    score, predictions = at.exact_match(_tiny_model(), at.TensorBatches(ds, 3))
    assert served == [3, 1]
    assert score == pytest.approx(0.5, abs=1e-12)
    assert torch.equal(predictions, pred)


# ---------------------------------------------------------------------------------------
# The course split
# ---------------------------------------------------------------------------------------
def test_course_split_properties():
    train_idx, test_idx = tx.course_split(5000)
    assert len(train_idx) == 4500 and len(test_idx) == 500
    assert len(set(train_idx) | set(test_idx)) == 5000
    again = tx.course_split(5000)
    assert np.array_equal(again[0], train_idx) and np.array_equal(again[1], test_idx)
    fit, val = tx.selection_split(train_idx)
    assert len(fit) == 4000 and len(val) == 500 and not set(val) & set(test_idx)
    assert not set(fit) & set(val) and set(fit) | set(val) == set(train_idx)
    assert np.array_equal(val, train_idx[-500:]) and np.array_equal(fit, train_idx[:4000])  # as documented


def test_course_split_matches_sklearn():
    """course_split reproduces scikit-learn's train_test_split(test_size=0.1, random_state=0)
    (scikit-learn is a test dependency; skipped where it is missing)."""
    sklearn_ms = pytest.importorskip("sklearn.model_selection")
    X = np.arange(5000)
    X_train, X_test = sklearn_ms.train_test_split(X, test_size=0.1, random_state=0)
    train_idx, test_idx = tx.course_split(5000)
    assert np.array_equal(X_train, train_idx) and np.array_equal(X_test, test_idx)


@requires_arithmetic
def test_load_splits_real_data():
    splits = tx.load_splits()
    assert len(splits["train"][0]) == 4500 and len(splits["test"][0]) == 500
    assert len(splits["fit"][0]) == 4000 and len(splits["val"][0]) == 500
    ds = tx.make_dataset(splits["test"], tx.config())
    q, _, a, _ = ds.tensors()
    assert q.shape == (500, 9) and a.shape == (500, 5)
    assert torch.all(a[:, 0] == at.BOS) and torch.all(a[:, -1] == at.EOS)


# --- gaps found by mutation testing: key != value, per-head weights, the encoder mask, dropout
# in training mode, inference / val in eval mode ------------------------------------------

def test_attention_with_distinct_keys_and_values_and_per_head_weights():
    """key != value (every other test passes the same tensor twice): SelfAttention vs SDPA,
    MultiHeadAttention vs nn.MultiheadAttention; and each head's weights_softmax, as set by the
    MultiHeadAttention forward (before any head is called on its own), is that head's slice."""
    N, Kq, Kk, E, H = 2, 3, 5, 8, 2
    q, k, v = _randn(N, Kq, E, seed=1), _randn(N, Kk, E, seed=2), _randn(N, Kk, E, seed=3)
    torch.manual_seed(0)
    sa = at.SelfAttention(E, 4, 6).to(DT)
    ref = F.scaled_dot_product_attention(F.linear(q, sa.q.weight, sa.q.bias), F.linear(k, sa.k.weight, sa.k.bias),
                                         F.linear(v, sa.v.weight, sa.v.bias))
    assert_close(sa(q, k, v), ref, 1e-10, "SelfAttention, key != value")
    mha = at.MultiHeadAttention(H, E, E // H).to(DT)
    torch_mha = nn.MultiheadAttention(E, H, batch_first=True, dtype=DT)
    _load_mha(torch_mha, mha)
    ref_y, ref_w = torch_mha(q, k, v, need_weights=True, average_attn_weights=False)
    assert_close(mha(q, k, v), ref_y, 1e-10, "MultiHeadAttention, key != value")
    for h, head in enumerate(mha.heads):
        assert_close(head.weights_softmax, ref_w[:, h], 1e-10, f"head {h} weights_softmax")


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_block_applies_its_mask(norm_first):
    """EncoderBlock.forward(x, mask) vs nn.TransformerEncoderLayer(src_mask=mask) (True = not allowed)."""
    E, H, FF, N, K = 16, 4, 24, 3, 6
    torch.manual_seed(0)
    ours = at.EncoderBlock(H, E, FF, 0.0, norm_first=norm_first).to(DT).eval()
    ref = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, batch_first=True, norm_first=norm_first,
                                     dtype=DT).eval()
    _load_mha(ref.self_attn, ours.attention)
    with torch.no_grad():
        for a, b in ((ref.linear1, ours.feed_forward.linear1), (ref.linear2, ours.feed_forward.linear2)):
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
    ours.norm1.epsilon = ours.norm2.epsilon = ref.norm1.eps
    x = _randn(N, K, E, seed=1)
    torch.manual_seed(2)
    mask = torch.rand(N, K, K) < 0.5
    mask[:, :, 0] = False
    y_ref = ref(x, src_mask=mask.repeat_interleave(H, dim=0))
    assert_close(ours(x, mask), y_ref, 1e-10, "masked EncoderBlock")
    assert (ours(x, mask) - ours(x)).abs().max() > 1e-6  # the mask matters here


def _ln(x, norm):
    return F.layer_norm(x, x.shape[-1:], norm.scale, norm.shift, norm.epsilon)


@pytest.mark.parametrize("norm_first", [False, True])
def test_blocks_drop_each_sublayer_output_before_the_residual_sum(norm_first):
    """Training mode with dropout p = 1 zeroes every sublayer's output (the paper's placement,
    as documented): post-norm blocks reduce to their norms in sequence, pre-norm blocks to the
    identity. (Reference: F.layer_norm with the blocks' own scale/shift.)"""
    E, H, FF = 8, 2, 12
    torch.manual_seed(0)
    enc = at.EncoderBlock(H, E, FF, 1.0, norm_first=norm_first).to(DT).train()
    dec = at.DecoderBlock(H, E, FF, 1.0, norm_first=norm_first).to(DT).train()
    with torch.no_grad():
        for p in list(enc.parameters()) + list(dec.parameters()):
            if p.dim() == 1:
                p.copy_(torch.randn_like(p))  # random norm scales/shifts
    x, mem = _randn(2, 5, E, seed=1), _randn(2, 4, E, seed=2)
    mask = at.get_subsequent_mask(torch.zeros(2, 5, dtype=torch.long))
    if norm_first:
        assert_close(enc(x), x, 1e-12, "pre-norm encoder block, all dropped")
        assert_close(dec(x, mem, mask), x, 1e-12, "pre-norm decoder block, all dropped")
    else:
        assert_close(enc(x), _ln(_ln(x, enc.norm1), enc.norm2), 1e-10, "post-norm encoder block, all dropped")
        assert_close(dec(x, mem, mask), _ln(_ln(_ln(x, dec.norm1), dec.norm2), dec.norm3), 1e-10,
                     "post-norm decoder block, all dropped")


def test_inference_and_val_run_in_eval_mode_and_restore_the_mode():
    """A model with dropout left in training mode: `inference` and `val` give the eval-mode
    results (no dropout) and leave the model in training mode."""
    d = at.generate_token_dict(at.VOCAB)
    inputs = [f"BOS POSITIVE {a:02d} add POSITIVE {b:02d} EOS" for a, b in [(12, 30), (45, 7), (3, 3), (20, 11)]]
    outputs = [f"BOS POSITIVE {a + b:02d} EOS" for a, b in [(12, 30), (45, 7), (3, 3), (20, 11)]]
    ds = at.AddSubDataset(inputs, outputs, d, at.SPECIAL_TOKENS, 8, at.position_encoding_sinusoid)
    torch.manual_seed(0)
    model = at.Transformer(2, 8, 16, 0.5, 1, 1, len(at.VOCAB))
    q, qp, a, ap = ds.tensors()
    model.eval()
    tok_eval, logits_eval = at.inference(model, q, qp[:1], ap[:1], 5)
    val_eval = at.val(model, at.TensorBatches(ds, 2), at.CrossEntropyLoss)
    model.train()
    torch.manual_seed(1)
    tok, logits = at.inference(model, q, qp[:1], ap[:1], 5)
    assert model.training
    assert torch.equal(tok, tok_eval)
    assert_close(logits, logits_eval, 1e-6, "inference logits in training mode")
    assert at.val(model, at.TensorBatches(ds, 2), at.CrossEntropyLoss) == pytest.approx(val_eval, rel=1e-6)
    assert model.training


# --- gaps found by mutation testing (each test fails on a one-line bug the others let through)

def _fake_splits():
    mk = lambda tag, n: ([f"{tag}{i}" for i in range(n)], [f"o{tag}{i}" for i in range(n)])
    return {"train": mk("tr", 6), "test": mk("te", 3), "fit": mk("fi", 4), "val": mk("va", 2),
            "overlap": [False] * 3, "source": "fake"}


class _Seen(Exception):
    pass


@pytest.mark.parametrize("fn, train_key, eval_key", [("headline", "train", "test"), ("selection_run", "fit", "val")])
def test_experiment_split_selection(monkeypatch, fn, train_key, eval_key):
    """headline trains on train / measures on test; selection_run trains on fit / measures on val
    (kills: headline on splits["val"] -- test never measured; selection_run on splits["test"] -- leakage)."""
    splits = _fake_splits()

    def fake(train_pair, eval_pair, *a, **k):
        raise _Seen(train_pair, eval_pair)

    monkeypatch.setattr(tx, "train_and_evaluate", fake)
    with pytest.raises(_Seen) as e:
        getattr(tx, fn)("cpu", splits=splits)
    train_pair, eval_pair = e.value.args
    assert set(train_pair[0]) <= set(splits[train_key][0])
    assert list(eval_pair[0]) == splits[eval_key][0]


def test_train_loader_shuffles(monkeypatch):
    """train_and_evaluate's training loader shuffles (kills shuffle=False)."""
    calls = []
    real = tx.loader
    monkeypatch.setattr(tx, "loader", lambda pair, cfg, shuffle=False, batch_size=None:
                        calls.append((pair, shuffle)) or (_ for _ in ()).throw(_Seen()))
    with pytest.raises(_Seen):
        tx.train_and_evaluate((["1+1"], ["2"]), (["1+1"], ["2"]), "cpu")
    assert calls[0][1] is True


@requires_arithmetic
def test_load_splits_counts_overlap_against_all_training_expressions():
    """"overlap" marks the test expressions that occur among all 4,500 training expressions
    (the validation slice included): some occur only in that slice, so counting against the
    fit part alone would differ."""
    splits = tx.load_splits()
    train, fit, val = set(splits["train"][0]), set(splits["fit"][0]), set(splits["val"][0])
    assert (len(splits["train"][0]), len(splits["test"][0]), len(splits["val"][0])) == (4500, 500, 500)
    assert splits["overlap"] == [x in train for x in splits["test"][0]]
    assert any(x in val and x not in fit for x in splits["test"][0])
