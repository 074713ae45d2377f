"""Small text datasets: the Transformer's arithmetic set and image-caption collections."""
import csv
import io
import json
from pathlib import Path

from . import store


def arithmetic_expressions():
    """The course's two-digit add/subtract set.

    Returns a dict with "inp_expression" and "out_expression": two lists of 5,000 strings such
    as "BOS NEGATIVE 30 subtract NEGATIVE 34 EOS" -> "BOS POSITIVE 04 EOS".
    """
    path = store.fetch("arithmetic", "two_digit_op.json")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise store.DataError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not {"inp_expression", "out_expression"} <= set(data):
        raise store.DataError(f"{path}: expected keys inp_expression and out_expression")
    if len(data["inp_expression"]) != len(data["out_expression"]):
        raise store.DataError(f"{path}: {len(data['inp_expression'])} inputs but "
                              f"{len(data['out_expression'])} outputs")
    return {"inp_expression": data["inp_expression"], "out_expression": data["out_expression"]}


def caption_folder(name="flickr8k-1k"):
    """An image-folder caption set: ``<root>/<name>/Images/*.jpg`` + ``captions.txt`` (CSV image,caption).

    Returns a list of (image_path, [caption, ...]) sorted by image file name. Raises DataError
    for a missing CSV, a wrong header, or captions that name images not in Images/.
    """
    folder = store.dataset_dir(name)
    csv_path = store.fetch(name, "captions.txt") if name in store.REGISTRY else folder / "captions.txt"
    if not Path(csv_path).is_file():
        raise store.DataError(f"{name}: {csv_path} is missing (expected Images/*.jpg and captions.txt "
                              f"in {folder})")
    images = Path(csv_path).parent / "Images"
    if not images.is_dir():
        raise store.DataError(f"{name}: image folder {images} is missing (expected Images/*.jpg beside captions.txt)")
    captions = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["image", "caption"]:
            raise store.DataError(f"{csv_path}: expected the header 'image,caption', found {header}")
        for row in reader:
            if len(row) < 2:
                continue
            captions.setdefault(row[0], []).append(",".join(row[1:]).strip())
    missing = sorted(n for n in captions if not (images / n).is_file())
    if missing:
        raise store.DataError(f"{name}: {len(missing)} captioned images are missing from {images}, "
                              f"e.g. {missing[:3]}")
    return [(images / n, caps) for n, caps in sorted(captions.items())]


def caption_folder_files(items):
    """The files whose content an image-folder caption set's caches depend on: its captions.txt
    and every image of `items` (what `caption_folder` returned), as `store.cached_tensors` sources."""
    paths = [Path(p) for p, _ in items]
    return [paths[0].parent.parent / "captions.txt", *paths]


TRUST_PICKLES_ENV = "EECS598_TRUST_PICKLES"


def coco_captions():
    """The course's COCO subset (`coco.pt`): a dict with train_images uint8 (10000,3,112,112),
    train_captions int64 (10000,17), val_images, val_captions and vocab {idx_to_token, token_to_idx}."""
    import pickle

    import torch

    from ..utils import env_flag

    path = store.fetch("coco_captions", "coco.pt")
    try:  # tensors, lists, dicts and strings only: no code runs while loading
        data = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        if not env_flag(TRUST_PICKLES_ENV):
            raise store.DataError(
                f"{path} holds objects other than tensors, lists, dicts and strings, which the course's "
                f"coco.pt does not ({e.__class__.__name__}: {str(e).splitlines()[0]}). The download "
                f"(plain http, checked by size only) may have been replaced. If you trust the file, set "
                f"{TRUST_PICKLES_ENV}=1 to load it as a full pickle; otherwise delete it and fetch it again.") from None
        data = torch.load(path, weights_only=False)
    required = {"train_images", "train_captions", "val_images", "val_captions", "vocab"}
    if not required <= set(data):
        raise store.DataError(f"{path}: missing keys {sorted(required - set(data))}")
    return data


# ------------------------------------------------------------------------------------------
# Captioning data as tensors: vocabulary, fixed-length encoded captions, resized images.
SPECIAL_TOKENS = ("<NULL>", "<START>", "<END>", "<UNK>")  # indices 0, 1, 2, 3 (as in coco.pt)


def build_vocab(token_lists, min_count=2):
    """Vocabulary {"idx_to_token": [...], "token_to_idx": {...}} from tokenized captions.

    Indices 0-3 are <NULL>, <START>, <END>, <UNK>; then every word seen at least `min_count`
    times, most frequent first (ties alphabetical). Rarer words map to <UNK> when encoding.
    """
    from collections import Counter

    counts = Counter(t for tokens in token_lists for t in tokens)
    words = sorted((w for w, k in counts.items() if k >= min_count), key=lambda w: (-counts[w], w))
    idx_to_token = list(SPECIAL_TOKENS) + words
    return {"idx_to_token": idx_to_token, "token_to_idx": {t: i for i, t in enumerate(idx_to_token)}}


def encode_captions(token_lists, token_to_idx, length=17):
    """int64 (N, length): <START> w1 ... wk <END> <NULL> ...; captions longer than length - 2
    words are cut to length - 2 words (the <END> is always kept). Unknown words -> <UNK>."""
    import torch

    null, start, end, unk = (token_to_idx[t] for t in SPECIAL_TOKENS)
    out = torch.full((len(token_lists), length), null, dtype=torch.int64)
    for i, tokens in enumerate(token_lists):
        ids = [start] + [token_to_idx.get(t, unk) for t in tokens[:length - 2]] + [end]
        out[i, :len(ids)] = torch.tensor(ids)
    return out


# A photo shrunk by `load_images_uint8(max_side=...)` is saved and decoded again as JPEG of this
# quality, as the shared Flickr8k copy's downscaled photos were (their quantization tables are
# the IJG tables of quality 75), so that it reaches the encoder as they do.
SHRINK_JPEG_QUALITY = 75


def load_images_uint8(paths, size=112, max_side=None):
    """uint8 (N, 3, size, size): each image converted to RGB and resized (bicubic, whole image
    squashed to a square, no crop: captions describe the whole picture).

    max_side: if given, an image whose longer side exceeds it is first shrunk (aspect kept,
    PIL's thumbnail, bicubic) to that longer side and re-encoded as JPEG (SHRINK_JPEG_QUALITY),
    so that every image reaches the final resize as the copy's downscaled photos do."""
    import numpy as np
    import torch
    from PIL import Image

    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if max_side is not None and max(im.size) > max_side:
                    im.thumbnail((max_side, max_side), Image.BICUBIC)
                    buffer = io.BytesIO()
                    im.save(buffer, format="JPEG", quality=SHRINK_JPEG_QUALITY)
                    im = Image.open(buffer).convert("RGB")
                im = im.resize((size, size), Image.BICUBIC)
        except OSError as err:  # PIL's UnidentifiedImageError and "image file is truncated" included
            raise store.DataError(f"{p}: cannot decode this image ({err}); replace the file or remove "
                                  f"it and its captions") from None
        out[i] = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
    return out


def caption_dataset(name="flickr8k-1k", image_size=112, length=18, min_count=2, num_heldout=100,
                    max_side=None):
    """An image-folder caption set as tensors, with a held-out split of images.

    The images sorted by file name (as `caption_folder` returns them): the FIRST `num_heldout`
    are held out ("test_*"), the rest train. The vocabulary is built from the training captions
    only (tokenized with `eecs598.bleu.tokenize`: lower-case, punctuation removed; words seen
    fewer than `min_count` times -> <UNK>). Captions are padded/cut to `length` tokens
    (default 18 = <START> + at most 16 words + <END>; the course's coco.pt uses 17).
    max_side: shrink larger photos to this longer side (and re-encode them as JPEG) before
    resizing (`load_images_uint8`).
    Resized images are cached in $EECS598_CACHE.

    Returns a dict:
      train_images uint8 (Ni, 3, S, S), train_captions int64 (Nc, length), train_image_idxs
      int64 (Nc,) (which image each caption describes), train_references (per image, the list of
      its tokenized captions), train_names; the same with the prefix test_; vocab
      {idx_to_token, token_to_idx}; source (a description of the copy used); max_side; shrink
      (None, or a tag of the shrinking, e.g. "max200q75", for cache keys of derived tensors).
    """
    import torch

    from ..bleu import tokenize

    items = caption_folder(name)
    if len(items) <= num_heldout:
        raise store.DataError(f"{name}: {len(items)} images, cannot hold out {num_heldout}")
    paths = [p for p, _ in items]
    # ALL images in sorted-name order, whatever the split: the split below only indexes this
    # tensor, so the key needs no num_heldout (a cache of per-split tensors would, see A4's
    # captioning_experiments.feature_cache_key).
    shrink = None if max_side is None else f"max{max_side}q{SHRINK_JPEG_QUALITY}"
    suffix = "" if shrink is None else f"_{shrink}"
    images = store.cached_tensors(f"{name}_images_{image_size}{suffix}",
                                  lambda: load_images_uint8(paths, image_size, max_side),
                                  *caption_folder_files(items))
    refs = [[tokenize(c) for c in caps] for _, caps in items]
    split = {"test": range(num_heldout), "train": range(num_heldout, len(items))}
    vocab = build_vocab([t for i in split["train"] for t in refs[i]], min_count=min_count)
    shrunk = "" if max_side is None else (f", photos first shrunk to a longer side of at most {max_side} px "
                                          f"(JPEG quality {SHRINK_JPEG_QUALITY})")
    data = {"vocab": vocab, "max_side": max_side, "shrink": shrink,
            "source": f"{name} ({len(items)} Flickr8k images, {sum(len(r) for r in refs)} captions; "
                      f"first {num_heldout} image names held out; images {image_size}x{image_size}{shrunk})"}
    for key, idx in split.items():
        idx = list(idx)
        caps, owner = [], []
        for j, i in enumerate(idx):
            caps += refs[i]
            owner += [j] * len(refs[i])
        data[f"{key}_images"] = images[idx]
        data[f"{key}_captions"] = encode_captions(caps, vocab["token_to_idx"], length)
        data[f"{key}_image_idxs"] = torch.tensor(owner, dtype=torch.int64)
        data[f"{key}_references"] = [refs[i] for i in idx]
        data[f"{key}_names"] = [Path(paths[i]).name for i in idx]
    return data
