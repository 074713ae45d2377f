"""Corpus BLEU (Papineni et al., 2002) for captioning: BLEU-1 ... BLEU-4 over several references.

    from eecs598.bleu import corpus_bleu, tokenize
    refs = [[tokenize(c) for c in five_captions] for five_captions in references_per_image]
    hyps = [tokenize(c) for c in generated]
    corpus_bleu(refs, hyps, max_n=4)           # BLEU-4, uniform weights 1/4
    corpus_bleu(refs, hyps, max_n=1)           # BLEU-1

Definition (the same as ``nltk.translate.bleu_score.corpus_bleu`` without smoothing; the tests
cross-check the two on the same inputs):

* modified n-gram precision p_n, pooled over the corpus: for every hypothesis, each n-gram's count
  is clipped to the largest count of that n-gram in any one of its references; the clipped counts
  are summed over all hypotheses and divided by the total number of hypothesis n-grams;
* brevity penalty BP = 1 if c > r else exp(1 - r / c), where c is the total hypothesis length and
  r sums, per hypothesis, the reference length closest to the hypothesis length (ties -> the
  shorter reference); BP = 0 when c = 0;
* BLEU-N = BP * exp(sum_n w_n log p_n) with w_n = 1/N; it is 0 when any p_n (n <= N) is 0
  (NLTK's unsmoothed score is then a tiny positive number, e.g. 1e-154 to 1e-231, or exactly 0).

Tokenization (``tokenize``): lower-case, every character other than the ASCII letters a-z,
digits and spaces becomes a space (so punctuation is dropped, "t-shirt" -> "t shirt", and an
accented letter splits a word), split on whitespace.
The captioning data (`eecs598.data.text`) uses the same function to build its vocabulary, so
hypotheses decoded from word indices and references read from captions.txt are tokenized alike.
"""
import math
import re
from collections import Counter

_NON_WORD = re.compile(r"[^a-z0-9 ]+")


def tokenize(text):
    """'A dog, running!' -> ['a', 'dog', 'running'] (lower-case, punctuation removed, split)."""
    return _NON_WORD.sub(" ", text.lower()).split()


def ngram_counts(tokens, n):
    """Counter of the n-grams (tuples) of a token list."""
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def closest_ref_length(references, hyp_len):
    """Length of the reference closest to `hyp_len` (ties -> the shorter one)."""
    return min((len(r) for r in references), key=lambda r: (abs(r - hyp_len), r))


def sentence_statistics(references, hyp, max_n=4):
    """One hypothesis' counts: (matches[n-1], totals[n-1] for n = 1..max_n, its length, the closest
    reference length). Summed over a corpus they give `corpus_statistics`."""
    if not references:
        raise ValueError("every hypothesis needs at least one reference")
    matches, totals = [0] * max_n, [0] * max_n
    for n in range(1, max_n + 1):
        hyp_counts = ngram_counts(hyp, n)
        max_ref = Counter()
        for ref in references:
            for gram, k in ngram_counts(ref, n).items():
                if k > max_ref[gram]:
                    max_ref[gram] = k
        matches[n - 1] = sum(min(k, max_ref[g]) for g, k in hyp_counts.items())
        totals[n - 1] = max(len(hyp) - n + 1, 1)  # NLTK: max(1, number of n-grams)
    return matches, totals, len(hyp), closest_ref_length(references, len(hyp))


def corpus_statistics(list_of_references, hypotheses, max_n=4):
    """Pooled counts: (matches[n-1], totals[n-1] for n = 1..max_n, hyp_length c, ref_length r)."""
    if len(list_of_references) != len(hypotheses):
        raise ValueError(f"{len(list_of_references)} reference lists but {len(hypotheses)} hypotheses")
    matches, totals = [0] * max_n, [0] * max_n
    c = r = 0
    for references, hyp in zip(list_of_references, hypotheses):
        m, t, hyp_len, ref_len = sentence_statistics(references, hyp, max_n)
        matches = [a + b for a, b in zip(matches, m)]
        totals = [a + b for a, b in zip(totals, t)]
        c += hyp_len
        r += ref_len
    return matches, totals, c, r


def brevity_penalty(c, r):
    """1 if c > r, 0 if c == 0, else exp(1 - r/c)."""
    if c > r:
        return 1.0
    if c == 0:
        return 0.0
    return math.exp(1.0 - r / c)


def bleu_from_statistics(matches, totals, c, r, max_n):
    if any(m == 0 for m in matches[:max_n]):
        return 0.0
    log_p = sum(math.log(matches[n] / totals[n]) for n in range(max_n)) / max_n
    return brevity_penalty(c, r) * math.exp(log_p)


def corpus_bleu(list_of_references, hypotheses, max_n=4):
    """Corpus BLEU-`max_n` with uniform weights.

    list_of_references: one list of reference token lists per hypothesis (any number >= 1).
    hypotheses: token lists. Returns a float in [0, 1].
    """
    matches, totals, c, r = corpus_statistics(list_of_references, hypotheses, max_n)
    return bleu_from_statistics(matches, totals, c, r, max_n)


def bleu_scores(list_of_references, hypotheses):
    """{'bleu1': ..., 'bleu2': ..., 'bleu3': ..., 'bleu4': ...} from one pass over the corpus."""
    matches, totals, c, r = corpus_statistics(list_of_references, hypotheses, 4)
    return {f"bleu{n}": bleu_from_statistics(matches, totals, c, r, n) for n in range(1, 5)}


def consensus_caption(list_of_references, candidates, max_n=4):
    """The trivial baseline's caption: the candidate (a token list) whose corpus BLEU-`max_n` is
    highest when the SAME candidate is the hypothesis for every entry of `list_of_references`.

    Use the training images' references and the training captions as candidates; the winner is
    then scored on held-out images. Vectorized over images: each n-gram keeps an array of its
    largest reference count in every image where it occurs (only those images, so memory grows
    with the references' n-grams, not n-grams x images). Returns (best candidate tokens, its
    BLEU on these references).
    """
    import numpy as np

    num = len(list_of_references)
    per_image = {}  # n-gram -> {image index: the largest count in any of its references}
    for i, refs in enumerate(list_of_references):
        for ref in refs:
            for n in range(1, max_n + 1):
                for gram, k in ngram_counts(ref, n).items():
                    counts = per_image.setdefault(gram, {})
                    counts[i] = max(counts.get(i, 0), k)
    # Clipped matches of a candidate n-gram seen k times: sum over images of min(count, k);
    # which image holds which count does not matter, so the counts alone are kept.
    max_count = {gram: np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
                 for gram, counts in per_image.items()}
    del per_image
    ref_lengths = [sorted({len(r) for r in refs}) for refs in list_of_references]
    r_cache = {}
    best, best_score = None, -1.0
    for cand in candidates:
        cand = list(cand)
        length = len(cand)
        if length not in r_cache:
            r_cache[length] = sum(min(lens, key=lambda x: (abs(x - length), x)) for lens in ref_lengths)
        matches, totals = [], []
        for n in range(1, max_n + 1):
            total = 0
            for gram, k in ngram_counts(cand, n).items():
                arr = max_count.get(gram)
                if arr is not None:
                    total += int(np.minimum(arr, k).sum())
            matches.append(total)
            totals.append(max(length - n + 1, 1) * num)
        score = bleu_from_statistics(matches, totals, length * num, r_cache[length], max_n)
        if score > best_score:
            best, best_score = cand, score
    return best, best_score


def bootstrap_bleu(list_of_references, hypotheses, max_n=4, num_samples=1000, seed=0, baseline_hypotheses=None,
                   confidence=0.95):
    """How much corpus BLEU-`max_n` depends on WHICH images were held out: the percentile bootstrap
    over images (Koehn, 2004). Each of `num_samples` resamples draws len(hypotheses) images with
    replacement (numpy default_rng(seed).integers, one (num_samples, S) draw) and recomputes corpus
    BLEU from the pooled per-image counts.

    With `baseline_hypotheses` (another system's captions of the same images) the resamples are
    paired: the same images for both, giving the difference BLEU(hypotheses) - BLEU(baseline).
    Returns dict(bleu, low, high, samples (num_samples,) numpy array) and, when paired,
    diff, diff_low, diff_high, diff_samples, p_not_better (fraction of resamples in which the
    hypotheses do not score above the baseline)."""
    import numpy as np

    def stats(hyps):
        rows = [sentence_statistics(refs, h, max_n) for refs, h in zip(list_of_references, hyps)]
        return np.array([[*m, *t, c, r] for m, t, c, r in rows], dtype=np.float64)  # (S, 2 max_n + 2)

    def bleu_of(sums):  # pooled counts (B, 2 max_n + 2) -> (B,) BLEU
        return np.array([bleu_from_statistics(row[:max_n], row[max_n:2 * max_n], row[-2], row[-1], max_n)
                         for row in sums.tolist()])

    if len(list_of_references) != len(hypotheses):
        raise ValueError(f"{len(list_of_references)} reference lists but {len(hypotheses)} hypotheses")
    S = len(hypotheses)
    idx = np.random.default_rng(seed).integers(0, S, size=(num_samples, S))
    tail = (1.0 - confidence) / 2 * 100
    a = stats(hypotheses)
    samples = bleu_of(a[idx].sum(axis=1))
    out = {"bleu": float(bleu_of(a.sum(axis=0, keepdims=True))[0]), "samples": samples,
           "low": float(np.percentile(samples, tail)), "high": float(np.percentile(samples, 100 - tail))}
    if baseline_hypotheses is not None:
        b = stats(baseline_hypotheses)
        diff = samples - bleu_of(b[idx].sum(axis=1))
        out.update(diff=out["bleu"] - float(bleu_of(b.sum(axis=0, keepdims=True))[0]), diff_samples=diff,
                   diff_low=float(np.percentile(diff, tail)), diff_high=float(np.percentile(diff, 100 - tail)),
                   p_not_better=float((diff <= 0).mean()))
    return out
