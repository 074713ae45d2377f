"""
Decoding a CaptioningRNN from precomputed encoder features, for any cell type: greedy captions,
beam search, greedy ensembles, and their corpus BLEU. The greedy decoder students write is
`CaptioningRNN.sample_features`; `decoder_start` / `decoder_step` repeat its arithmetic one step
at a time, so that beam search and ensembles can drive it (in the student copy they are stubs
too: fill them in once `sample_features` works, from the same steps).

    greedy_captions           greedy captions (lists of words), batched; attention weights for attn
    decoder_start/_step       the decoder state before the first word; one step (log-probabilities, new state)
    beam_search               beam-search captions (width 1 is greedy decoding)
    ensemble_greedy           greedy captions of several models (the word of highest mean probability)
    evaluate_bleu             greedy captions and corpus BLEU-1..4 against the references
    evaluate_beam             the same for beam search
    evaluate_ensemble         the same for an ensemble
"""
import math

import torch

import rnn_lstm_captioning as rlc
from eecs598.bleu import bleu_scores
from eecs598.utils import in_eval_mode


@in_eval_mode
def greedy_captions(model, feats, idx_to_word, max_length, batch_size=200):
    """Greedy captions (lists of words) and, for attn, attention weights (N, T, Hf, Wf)."""
    words, weights = [], []
    device = next(model.parameters()).device
    for i in range(0, len(feats), batch_size):
        out = model.sample_features(feats[i:i + batch_size].to(device), max_length)
        if isinstance(out, tuple):
            out, w = out
            weights.append(w.cpu())
        words += [c.split() for c in rlc.decode_captions(out.cpu(), idx_to_word)]
    return words, (torch.cat(weights) if weights else None)


def decoder_start(model, features):
    """The decoder state of a CaptioningRNN before its first word, from encoder features
    (N, C, Hf, Wf): a dict with h (N, H), c (N, H; zeros for rnn/lstm, unused by rnn) and A (the
    attention memory (N, H, Hf, Wf) for attn, else None), as in `sample_features`."""
    ### BEGIN SOLUTION
    ### HINT: the state your sample_features starts from, as a dict with keys h, c and A.
    init = model._initial(features)
    if model.cell_type == "attn":
        h = init.mean(dim=(2, 3))
        return {"h": h, "c": h, "A": init}
    return {"h": init, "c": torch.zeros_like(init), "A": None}
    ### END SOLUTION


def decoder_step(model, state, word):
    """One decoding step: the previous words (N,) int64 and the state -> (log-probabilities of the
    next word (N, V) float32, the new state). The same arithmetic as `sample_features`."""
    ### BEGIN SOLUTION
    ### HINT: one iteration of your sample_features' loop; return log-probabilities, not the argmax.
    x = model.word_embed(word)
    h, c, A = state["h"], state["c"], state["A"]
    if model.cell_type == "rnn":
        h = model.core.step_forward(x, h)
    elif model.cell_type == "lstm":
        h, c = model.core.step_forward(x, h, c)
    else:
        attn, _ = rlc.dot_product_attention(h, A)
        h, c = model.core.step_forward(x, h, c, attn)
    scores = model.output_scores(h, dropout=False)
    return torch.log_softmax(scores.float(), dim=1), {"h": h, "c": c, "A": A}
    ### END SOLUTION


def _select(state, rows):
    """The state of the decoder rows `rows` (beam reordering)."""
    return {k: (None if v is None else v[rows]) for k, v in state.items()}


def _ban(logp, banned):
    """Log-probabilities with the `banned` token indices set to -inf (e.g. <UNK>: a word that
    never matches a reference)."""
    if banned:
        logp[:, list(banned)] = float("-inf")
    return logp


@in_eval_mode
def beam_search(model, features, beam_size=3, max_length=16, banned=()):
    """Beam-search captions from encoder features (N, C, Hf, Wf) for a CaptioningRNN of any
    cell type: keeps the `beam_size` partial captions with the highest summed log-probability;
    a caption that emitted <END> keeps its score and is padded with <NULL>. `banned`: token
    indices never emitted. Returns word indices (N, max_length) of the best beam (beam_size=1 is
    greedy decoding)."""
    N, B = features.shape[0], beam_size
    state = _select(decoder_start(model, features), torch.arange(N, device=features.device).repeat_interleave(B))
    word = torch.full((N * B,), model._start, dtype=torch.long, device=features.device)
    scores = features.new_full((N, B), float("-inf"), dtype=torch.float32)
    scores[:, 0] = 0.0
    done = torch.zeros(N * B, dtype=torch.bool, device=features.device)
    seqs = torch.full((N * B, 0), model._null, dtype=torch.long, device=features.device)
    for _ in range(max_length):
        logp, state = decoder_step(model, state, word)
        logp = _ban(logp, banned)
        logp[done] = float("-inf")
        logp[done, model._null] = 0.0
        V = logp.shape[1]
        cand = (scores.reshape(N * B, 1) + logp).reshape(N, B * V)
        scores, flat = cand.topk(B, dim=1)
        beam = (flat // V + torch.arange(N, device=flat.device)[:, None] * B).reshape(-1)
        word = (flat % V).reshape(-1)
        state, seqs = _select(state, beam), torch.cat([seqs[beam], word[:, None]], dim=1)
        done = done[beam] | (word == model._end)
        if bool(done.all()):
            break
    best = scores.argmax(dim=1) + torch.arange(N, device=scores.device) * B
    out = torch.full((N, max_length), model._null, dtype=torch.long, device=features.device)
    out[:, :seqs.shape[1]] = seqs[best]
    return out


@in_eval_mode
def ensemble_greedy(models, features, max_length=16, banned=()):
    """Greedy captions of an ensemble: at every step each CaptioningRNN (any mix of cell types,
    one vocabulary) gives its next-word distribution for the words chosen so far, and the word
    with the highest AVERAGE probability is taken (<NULL> after <END>). `features`: encoder
    features (N, C, Hf, Wf) shared by all models, or a list of them, one per model (e.g. one
    model twice, given the photos and their mirror images: test-time flip averaging).
    `banned`: token indices never emitted. One model and no ban: the captions of
    `sample_features`. Returns (N, max_length) int64."""
    first = models[0]
    views = list(features) if isinstance(features, (list, tuple)) else [features] * len(models)
    if len(views) != len(models):
        raise ValueError(f"{len(views)} feature tensors for {len(models)} models")
    N, device = views[0].shape[0], views[0].device
    states = [decoder_start(m, f) for m, f in zip(models, views)]
    captions = torch.full((N, max_length), first._null, dtype=torch.long, device=device)
    word = torch.full((N,), first._start, dtype=torch.long, device=device)
    done = torch.zeros(N, dtype=torch.bool, device=device)
    for t in range(max_length):
        logps = []
        for k, m in enumerate(models):
            logp, states[k] = decoder_step(m, states[k], word)
            logps.append(logp)
        mean_logp = torch.logsumexp(torch.stack(logps), dim=0) - math.log(len(logps))  # log of the mean probability
        word = _ban(mean_logp, banned).argmax(dim=1)
        captions[:, t] = torch.where(done, torch.full_like(word, first._null), word)
        done = done | (word == first._end)
        if bool(done.all()):
            break
    return captions


def _decode_and_score(decode, device, feats, references, idx_to_word, batch_size):
    """Captions of `feats` from `decode(features) -> word indices`, in batches, and their corpus
    BLEU-1..4 against `references`. Returns (scores, hypotheses)."""
    hyps = []
    for i in range(0, len(feats), batch_size):
        hyps += [c.split() for c in rlc.decode_captions(decode(feats[i:i + batch_size].to(device)).cpu(), idx_to_word)]
    return bleu_scores(references, hyps), hyps


def evaluate_ensemble(models, feats, references, idx_to_word, max_length=16, banned=(), batch_size=200):
    """Ensemble greedy captions of `feats` and their corpus BLEU-1..4. Returns (scores, hypotheses)."""
    return _decode_and_score(lambda f: ensemble_greedy(models, f, max_length, banned),
                             next(models[0].parameters()).device, feats, references, idx_to_word, batch_size)


def evaluate_beam(model, feats, references, idx_to_word, beam_size=3, max_length=16, batch_size=100, banned=()):
    """Beam-search captions of `feats` and their corpus BLEU-1..4. Returns (scores, hypotheses)."""
    return _decode_and_score(lambda f: beam_search(model, f, beam_size, max_length, banned),
                             next(model.parameters()).device, feats, references, idx_to_word, batch_size)


def evaluate_bleu(model, feats, references, idx_to_word, max_length):
    """Greedy captions of `feats` and corpus BLEU-1..4 against `references` (per image, a list of
    token lists). Returns (scores dict, hypotheses, attention weights or None)."""
    hyps, weights = greedy_captions(model, feats, idx_to_word, max_length)
    return bleu_scores(references, hyps), hyps, weights
