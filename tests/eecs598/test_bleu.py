"""eecs598.bleu against NLTK's corpus_bleu (no smoothing) on the same tokenized inputs.

Tolerance 1e-12 absolute: both compute the same pooled counts; NLTK's unsmoothed score for a
corpus with a zero n-gram precision is ~1e-77 (it substitutes the smallest float), ours is 0.
"""
import random

import pytest

from eecs598 import bleu

nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")

WORDS = "a dog man woman runs on the grass in red shirt ball plays with two people water".split()


def _nltk(refs, hyps, n):
    return nltk_bleu.corpus_bleu(refs, hyps, weights=tuple([1.0 / n] * n))


def _random_corpus(rng, num, num_refs, vocab=WORDS):
    refs = [[[rng.choice(vocab) for _ in range(rng.randint(3, 12))] for _ in range(num_refs)] for _ in range(num)]
    # hypotheses partly copied from a reference, so that higher-order n-grams match
    hyps = []
    for r in refs:
        h = list(rng.choice(r)[:rng.randint(1, 10)])
        h = [w if rng.random() < 0.7 else rng.choice(vocab) for w in h]
        hyps.append(h)
    return refs, hyps


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_corpus_bleu_matches_nltk(seed, n):
    rng = random.Random(seed)
    refs, hyps = _random_corpus(rng, num=30, num_refs=1 + seed % 5)
    ours = bleu.corpus_bleu(refs, hyps, max_n=n)
    ref = _nltk(refs, hyps, n)
    assert abs(ours - ref) < 1e-12, f"BLEU-{n}: ours {ours} vs nltk {ref}"


def test_bleu_scores_agree_with_corpus_bleu_and_nltk():
    rng = random.Random(7)
    refs, hyps = _random_corpus(rng, num=50, num_refs=5)
    scores = bleu.bleu_scores(refs, hyps)
    for n in range(1, 5):
        assert abs(scores[f"bleu{n}"] - _nltk(refs, hyps, n)) < 1e-12
        assert scores[f"bleu{n}"] == bleu.corpus_bleu(refs, hyps, max_n=n)


def test_brevity_penalty_and_clipping_against_nltk():
    refs = [[["the", "cat", "is", "on", "the", "mat"], ["there", "is", "a", "cat", "on", "the", "mat"]]]
    for hyp in (["the", "the", "the", "the"], ["the", "cat"], ["the", "cat", "is", "on", "the", "mat", "now"],
                ["a", "cat", "on", "the", "mat"]):
        for n in (1, 2, 4):
            ours, ref = bleu.corpus_bleu(refs, [hyp], max_n=n), _nltk(refs, [hyp], n)
            assert abs(ours - ref) < 1e-12, (hyp, n, ours, ref)
    # clipped unigram precision 2/4 for "the the the the", BP exp(1 - 6/4)
    import math
    assert abs(bleu.corpus_bleu(refs, [["the"] * 4], max_n=1) - 0.5 * math.exp(1 - 6 / 4)) < 1e-12


def test_zero_matches_and_empty_hypothesis():
    refs = [[["a", "dog"]], [["a", "cat"]]]
    assert bleu.corpus_bleu(refs, [["zebra"], ["lion"]], max_n=1) == 0.0
    assert bleu.corpus_bleu(refs, [[], []], max_n=1) == 0.0
    assert _nltk(refs, [["zebra"], ["lion"]], 1) == 0
    with pytest.raises(ValueError):
        bleu.corpus_bleu(refs, [["a"]])


def test_tokenize():
    assert bleu.tokenize("A dog, running!  On the GRASS .") == ["a", "dog", "running", "on", "the", "grass"]
    assert bleu.tokenize("a t-shirt's 2 dogs") == ["a", "t", "shirt", "s", "2", "dogs"]


def test_consensus_caption_is_the_brute_force_argmax():
    rng = random.Random(3)
    refs, _ = _random_corpus(rng, num=12, num_refs=5, vocab=WORDS[:8])
    candidates = [c for r in refs for c in r]
    best, score = bleu.consensus_caption(refs, candidates, max_n=4)
    brute = [_nltk(refs, [c] * len(refs), 4) for c in candidates]
    best_ref = max(brute)
    assert abs(score - best_ref) < 1e-12, (score, best_ref)
    assert abs(_nltk(refs, [best] * len(refs), 4) - best_ref) < 1e-12


@pytest.mark.parametrize("n", [1, 4])
def test_bootstrap_bleu_resamples_are_nltk_corpus_bleu_of_the_resampled_images(n):
    """Every bootstrap sample equals NLTK's corpus_bleu of the explicitly resampled lists (the same
    numpy draws), the paired difference uses the same images for both systems, and the interval
    is the percentile interval of those samples."""
    import numpy as np
    rng = random.Random(7)
    refs, hyps = _random_corpus(rng, num=25, num_refs=3)
    _, other = _random_corpus(random.Random(8), num=25, num_refs=3)
    out = bleu.bootstrap_bleu(refs, hyps, max_n=n, num_samples=40, seed=3, baseline_hypotheses=other)
    idx = np.random.default_rng(3).integers(0, 25, size=(40, 25))
    expected = [_nltk([refs[i] for i in row], [hyps[i] for i in row], n) for row in idx]
    expected_other = [_nltk([refs[i] for i in row], [other[i] for i in row], n) for row in idx]
    assert np.allclose(out["samples"], expected, atol=1e-12, rtol=0)
    assert np.allclose(out["diff_samples"], np.array(expected) - np.array(expected_other), atol=1e-12, rtol=0)
    assert abs(out["bleu"] - _nltk(refs, hyps, n)) < 1e-12
    assert out["low"] == pytest.approx(np.percentile(expected, 2.5)) and out["high"] == pytest.approx(
        np.percentile(expected, 97.5))
    assert out["p_not_better"] == pytest.approx(np.mean(np.array(expected) <= np.array(expected_other)))
    assert out["low"] < out["bleu"] < out["high"]


def test_bootstrap_counts_a_tie_as_not_better():
    """Identical systems: the difference is 0 in every resample, and 0 is 'not better'."""
    rng = random.Random(0)
    words = "a dog runs on the grass".split()
    refs = [[[rng.choice(words) for _ in range(6)] for _ in range(3)] for _ in range(10)]
    hyps = [list(r[0][:4]) for r in refs]
    out = bleu.bootstrap_bleu(refs, hyps, max_n=1, num_samples=50, seed=0,
                              baseline_hypotheses=[list(h) for h in hyps])
    assert out["diff"] == 0 and (out["diff_samples"] == 0).all() and out["p_not_better"] == 1.0
