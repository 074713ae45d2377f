"""
Headline experiments of A4's arithmetic Transformer: the notebook (Transformers.ipynb) and
`make reproduce` (through A4/experiments.py, which calls `run`) use the same functions.

No solution code here: everything trains through arithmetic_transformer.py.

Data: `eecs598.data.arithmetic_expressions()`, the course's 5,000 expressions
(`arithmetic/two_digit_op.json` in the data root), split as the course notebook did with
scikit-learn's `train_test_split(X, y, test_size=0.1, random_state=0)`: reproduced here with
numpy (`course_split`), 4,500 training and 500 held-out expressions. Hyperparameters were
chosen on a validation slice carved from the 4,500 (`selection_split`: the last 500 of them
in split order), never on the 500 held-out expressions.

    load_splits              the course split (+ the validation slice) as lists of strings
    make_dataset / loader    AddSubDataset / TensorBatches for a list of expressions
    build_model              the headline Transformer (HEADLINE config)
    train_and_evaluate       train a config, return greedy exact match + token accuracy
    overfit_small            the course's sanity check: overfit 4 expressions
    headline                 HEADLINE config on all 4,500, measured on the 500 held-out
    selection_run            HEADLINE config on 4,000, its curve on the validation slice (the
                             run the configuration was chosen by)
    run(device)              the above as result records
"""
import math

import numpy as np
import torch

import arithmetic_transformer as at
import eecs598
from eecs598.results import make_record
from eecs598.utils import device_name, in_eval_mode, timer

ASSIGNMENT = "A4"
DATA = "arithmetic/two_digit_op.json (the course's 5,000 two-digit add/subtract expressions)"

# Figures of the reference solutions (../shared/COURSE_API.md, section 4) and of an independent
# library reference (torch.nn.Transformer, emb 64, 4 heads, 2+2 layers, AdamW, 168 epochs, same split).
REFERENCE = {
    "token_accuracy": 73.83,          # reference solution, teacher forced, 256 of the 500
    "library_exact_match": 82.8,      # torch.nn.Transformer, greedy, all 500
    "library_token_accuracy": 95.7,
}

# The headline configuration (chosen on the validation slice, see the README).
HEADLINE = {
    "num_heads": 4, "emb_dim": 64, "feedforward_dim": 256, "dropout": 0.1,
    "num_enc_layers": 2, "num_dec_layers": 2, "norm_first": True, "pos_encode": "sinusoid",
    "loss": "label_smoothing", "batch_size": 128, "lr": 1e-3, "warmup_lr": 1e-5,
    "warmup_interval": 200, "schedule": "cosine", "weight_decay": 0.1, "grad_clip": 1.0,
    "num_epochs": 150, "seed": 0,
}
QUICK = {"emb_dim": 32, "feedforward_dim": 64, "num_enc_layers": 1, "num_dec_layers": 1,
         "num_epochs": 3, "warmup_interval": 10}
QUICK_NUM_TRAIN = 500
POS_ENCODINGS = {"sinusoid": at.position_encoding_sinusoid, "simple": at.position_encoding_simple}
LOSSES = {"label_smoothing": at.LabelSmoothingLoss, "cross_entropy": at.CrossEntropyLoss}


def config(**overrides):
    """HEADLINE (shrunk to QUICK sizes in quick mode) with `overrides` applied."""
    cfg = dict(HEADLINE)
    if eecs598.quick_mode():
        cfg.update(QUICK)
    cfg.update(overrides)
    return cfg


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def course_split(n, test_size=0.1, seed=0):
    """The index split of scikit-learn's train_test_split(..., test_size, random_state=seed)
    (its ShuffleSplit): n_test = ceil(test_size * n), n_train = n - n_test,
    permutation = np.random.RandomState(seed).permutation(n), test = permutation[:n_test],
    train = permutation[n_test:n_test + n_train]. Returns (train_idx, test_idx) in that order."""
    n_test = math.ceil(test_size * n)
    n_train = n - n_test
    permutation = np.random.RandomState(seed).permutation(n)
    return permutation[n_test:n_test + n_train], permutation[:n_test]


def selection_split(train_idx, num_val=500):
    """The validation slice for choosing hyperparameters: the last `num_val` of the training
    indices (in split order); returns (fit_idx, val_idx)."""
    return train_idx[:-num_val], train_idx[-num_val:]


def load_splits():
    """The course split as lists of strings: a dict with "train", "test", "fit", "val", each a
    pair (inputs, outputs), plus "source" (where the data came from) and "overlap" (how many of
    the held-out expressions also occur, verbatim, among the 4,500 training expressions: the
    file holds repeats)."""
    data = eecs598.data.arithmetic_expressions()
    X, y = data["inp_expression"], data["out_expression"]
    train_idx, test_idx = course_split(len(X))
    fit_idx, val_idx = selection_split(train_idx)

    def take(idx):
        return [X[i] for i in idx], [y[i] for i in idx]

    splits = {"train": take(train_idx), "test": take(test_idx), "fit": take(fit_idx), "val": take(val_idx)}
    seen = set(splits["train"][0])
    splits["overlap"] = [x in seen for x in splits["test"][0]]
    splits["source"] = f"{DATA}; {len(X)} expressions"
    return splits


def make_dataset(pair, cfg):
    """AddSubDataset for (inputs, outputs) with the config's width and positional encoding."""
    token_dict = at.generate_token_dict(at.VOCAB)
    return at.AddSubDataset(pair[0], pair[1], token_dict, at.SPECIAL_TOKENS, cfg["emb_dim"],
                            POS_ENCODINGS[cfg["pos_encode"]])


def loader(pair, cfg, shuffle=False, batch_size=None):
    return at.TensorBatches(make_dataset(pair, cfg), batch_size or cfg["batch_size"], shuffle=shuffle,
                            seed=cfg["seed"])


def build_model(cfg):
    eecs598.reset_seed(cfg["seed"])
    return at.Transformer(cfg["num_heads"], cfg["emb_dim"], cfg["feedforward_dim"], cfg["dropout"],
                          cfg["num_enc_layers"], cfg["num_dec_layers"], len(at.VOCAB),
                          norm_first=cfg["norm_first"])


# ---------------------------------------------------------------------------------------------
# Experiments
# ---------------------------------------------------------------------------------------------
def train_and_evaluate(train_pair, eval_pair, device, cfg=None, eval_every=None, verbose=False):
    """Train a model of config `cfg` on `train_pair`, measure it on ALL of `eval_pair`.

    Returns a dict: model, history (train loss per epoch; teacher-forced loss/accuracy on
    eval_pair; greedy exact match every `eval_every` epochs if given), exact_match (greedy,
    from BOS), token_accuracy (teacher forced), predictions (N, O), seconds (training).
    """
    cfg = cfg or config()
    device = eecs598.get_device(device)
    train_loader = loader(train_pair, cfg, shuffle=True)
    eval_loader = loader(eval_pair, cfg, batch_size=500)
    model = build_model(cfg).to(device)
    exact_curve = {"epoch": [], "exact_match": []}

    def callback(epoch, m):
        if eval_every and (epoch % eval_every == 0 or epoch == cfg["num_epochs"]):
            exact_curve["epoch"].append(epoch)
            exact_curve["exact_match"].append(at.exact_match(m, eval_loader, device)[0])
            if verbose:
                print(f"   epoch {epoch}: greedy exact match {exact_curve['exact_match'][-1]:.4f}")

    with timer() as t:
        model, history = at.train(
            model, train_loader, eval_loader, LOSSES[cfg["loss"]], cfg["num_epochs"],
            batch_size=cfg["batch_size"], warmup_lr=cfg["warmup_lr"], warmup_interval=cfg["warmup_interval"],
            lr=cfg["lr"], device=device, weight_decay=cfg["weight_decay"], schedule=cfg["schedule"],
            grad_clip=cfg["grad_clip"], val_every=eval_every or cfg["num_epochs"], callback=callback,
            verbose=verbose, return_history=True)
    history["exact_epoch"], history["exact_match"] = exact_curve["epoch"], exact_curve["exact_match"]
    exact, predictions = at.exact_match(model, eval_loader, device)
    _, token_acc = at.val(model, eval_loader, LOSSES[cfg["loss"]], device=device)
    return {"model": model, "history": history, "exact_match": exact, "token_accuracy": token_acc,
            "predictions": predictions, "seconds": t.seconds, "config": cfg}


def overfit_small(device, num_samples=4, num_epochs=None):
    """The course's sanity check: a 1+1-layer model (emb 32, 4 heads, ff 32, dropout 0.2,
    simple positional encoding, cross-entropy, lr 1e-3, no warmup) fits 4 expressions.
    Returns the train_and_evaluate dict (evaluated on the same 4)."""
    splits = load_splits()
    pair = tuple(s[:num_samples] for s in splits["train"])
    cfg = config(emb_dim=32, feedforward_dim=32, dropout=0.2, num_enc_layers=1, num_dec_layers=1,
                 norm_first=False, pos_encode="simple", loss="cross_entropy", batch_size=num_samples,
                 lr=1e-3, warmup_lr=1e-3, warmup_interval=0, schedule="step", weight_decay=0.0,
                 grad_clip=None, num_epochs=num_epochs or eecs598.pick(full=200, quick=60))
    return train_and_evaluate(pair, pair, device, cfg)


def headline(device, cfg=None, eval_every=None, verbose=False, splits=None):
    """The headline model: config `cfg` (default HEADLINE) trained on the 4,500 training
    expressions (quick mode: the first 500 of them), measured on all 500 held-out ones (the last checkpoint; nothing is selected
    on them). Adds "exact_match_unseen" (on the held-out expressions that do not occur among
    the training expressions) and "num_unseen" to the train_and_evaluate dict."""
    splits = splits or load_splits()
    num_train = eecs598.pick(full=None, quick=QUICK_NUM_TRAIN)  # quick mode: a smoke run on a subset
    train_pair = tuple(s[:num_train] for s in splits["train"])
    res = train_and_evaluate(train_pair, splits["test"], device, cfg, eval_every, verbose)
    res["num_train"] = len(train_pair[0])
    test = make_dataset(splits["test"], res["config"])
    truth = test.tensors()[2]
    right = (res["predictions"] == truth).all(dim=1)
    unseen = ~torch.tensor(splits["overlap"])
    res["num_unseen"] = int(unseen.sum())
    res["exact_match_unseen"] = float(right[unseen].float().mean())
    return res


def selection_run(device, cfg=None, eval_every=20, verbose=False, splits=None):
    """The configuration's check on the validation slice: `cfg` (default HEADLINE) trained on the
    4,000 expressions of `selection_split` and measured every `eval_every` epochs on the other
    500 (quick mode: trained on the first QUICK_NUM_TRAIN). Returns the train_and_evaluate dict;
    history["exact_epoch"] / ["exact_match"] hold the curve."""
    splits = splits or load_splits()
    num_train = eecs598.pick(full=None, quick=QUICK_NUM_TRAIN)
    fit = tuple(s[:num_train] for s in splits["fit"])
    res = train_and_evaluate(fit, splits["val"], device, cfg, eval_every, verbose)
    res["num_train"] = len(fit[0])
    return res


@in_eval_mode
def attention_maps(model, pair, index, cfg, device=None):
    """Greedy-decode expression `index` of `pair` and collect the attention weights of that
    last decoding step: a dict with "question" / "answer" token strings (the answer as
    decoded, BOS first) and "encoder" (per layer: (H, K_in, K_in) self-attention),
    "decoder_self" (per layer: (H, O-1, O-1)), "decoder_cross" (per layer: (H, O-1, K_in))."""
    device = eecs598.get_device(device)
    q, qp, a, ap = (t[index:index + 1].to(device) for t in make_dataset(pair, cfg).tensors())
    tokens, _ = at.inference(model, q, qp, ap, a.shape[1])
    model.decode(model.encode(q, qp), tokens[:, :-1], ap)  # refresh the weights on the decoded prefix
    return {"question": [at.VOCAB[int(t)] for t in q[0]],
            "answer": [at.VOCAB[int(t)] for t in tokens[0]],
            "encoder": [layer.attention.weights_softmax[0].cpu() for layer in model.encoder.layers],
            "decoder_self": [layer.attention_self.weights_softmax[0].cpu() for layer in model.decoder.layers],
            "decoder_cross": [layer.attention_cross.weights_softmax[0].cpu() for layer in model.decoder.layers]}


def decoded_examples(res, pair, count=8):
    """(question, true answer, greedy answer) strings for the first `count` expressions of `pair`."""
    return [(pair[0][i], pair[1][i], at.decode_tokens(res["predictions"][i])) for i in range(count)]


# ---------------------------------------------------------------------------------------------
def run(device=None, selection=True):
    """The headline figures as result records (accuracies in %); with `selection`, also the
    validation-slice run the configuration was checked by (`selection_run`)."""
    device = eecs598.get_device(device)
    where = device_name(device)
    splits = load_splits()
    res = headline(device, splits=splits)
    cfg = res["config"]
    details = {**{k: v for k, v in cfg.items()}, "num_train": res["num_train"],
               "num_test": len(splits["test"][0]),
               "split": "sklearn train_test_split(test_size=0.1, random_state=0), reproduced with numpy",
               "checkpoint": "last epoch (hyperparameters chosen on a 4,000/500 slice of the 4,500)",
               "num_test_also_in_train": len(splits["test"][0]) - res["num_unseen"],
               "exact_match_on_unseen_test": 100 * res["exact_match_unseen"],
               "final_train_loss": res["history"]["train_loss"][-1], "threads": torch.get_num_threads(),
               "implementation": "arithmetic_transformer.py (own attention/norm/blocks on nn.Linear/nn.Embedding)"}
    records = [
        make_record(ASSIGNMENT, "transformer_exact_match", 100 * res["exact_match"], "%", splits["source"], where,
                    res["seconds"], reference=REFERENCE["library_exact_match"],
                    details={**details, "protocol": "greedy decoding from BOS, whole answer (sign, digits, EOS) "
                             "right, all 500 held-out expressions",
                             "reference_is": "torch.nn.Transformer library reference (the course reference "
                             "solution's greedy decoding produced garbage)"}),
        make_record(ASSIGNMENT, "transformer_token_accuracy", 100 * res["token_accuracy"], "%", splits["source"],
                    where, res["seconds"], reference=REFERENCE["token_accuracy"],
                    details={**details, "protocol": "teacher forced, arg-max of each target token (sign, 2 digits, "
                             "EOS), all 500 held-out expressions",
                             "reference_is": "course reference solution (256 of the 500); library reference "
                             f"{REFERENCE['library_token_accuracy']}"}),
    ]
    if selection:
        sel = selection_run(device, splits=splits)
        curve = dict(zip(sel["history"]["exact_epoch"], (round(100 * v, 2) for v in sel["history"]["exact_match"])))
        records.append(make_record(
            ASSIGNMENT, "transformer_selection_exact_match", 100 * sel["exact_match"], "%", splits["source"],
            where, sel["seconds"],
            details={**{k: v for k, v in sel["config"].items()}, "num_train": sel["num_train"],
                     "num_val": len(splits["val"][0]),
                     "protocol": "the configuration's check: trained on 4,000 of the 4,500 training expressions "
                                 "(selection_split), greedy exact match on the other 500 (the validation slice); "
                                 "the held-out 500 are not used",
                     "exact_match_by_epoch": curve, "threads": torch.get_num_threads()}))
    return records
