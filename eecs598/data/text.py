"""Small text datasets: the Transformer's arithmetic set and image-caption collections."""
import csv
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


def coco_captions():
    """The course's COCO subset (`coco.pt`): a dict with train_images uint8 (10000,3,112,112),
    train_captions int64 (10000,17), val_images, val_captions and vocab {idx_to_token, token_to_idx}."""
    import torch

    path = store.fetch("coco_captions", "coco.pt")
    data = torch.load(path, weights_only=False)
    required = {"train_images", "train_captions", "val_images", "val_captions", "vocab"}
    if not required <= set(data):
        raise store.DataError(f"{path}: missing keys {sorted(required - set(data))}")
    return data
