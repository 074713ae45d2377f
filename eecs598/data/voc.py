"""PASCAL VOC 2007 detection in the course's format (``voc07_{train,val}.json`` + VOCdevkit images).

The JSON files list ``[image_path, [{"name": class, "xyxy": [x1, y1, x2, y2]}, ...]]`` with
paths relative to the dataset folder (``<root>/voc2007``). Images are resized so that the
shorter side is `image_size`, centre-cropped to a square, converted to [0, 1] tensors and
normalized with ImageNet statistics; boxes are transformed the same way, clipped, and padded
to `max_boxes` rows of -1.

The course JSON lists only the objects that VOC marks as not "difficult". For the official
evaluation protocol (difficult objects are ignored: detecting them is neither a true nor a
false positive), `VOC2007Detection.difficult_boxes(i)` reads the difficult objects of image i
from the VOCdevkit XML file (`VOCdevkit/VOC2007/Annotations/<id>.xml`) and maps them to the
crop the same way.
"""
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import torch

from . import store

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def extract_tar(tar_path, dest):
    """Extract the tar archive at `tar_path` into `dest`, all or nothing: the members go to a
    temporary folder inside `dest` and move into place (replacing what an earlier, interrupted
    extraction left under the same top-level names) only once the whole archive is out.
    DataError for a truncated or damaged archive, and for members that would land outside
    `dest` (links, devices, absolute or ../ paths)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=".extracting-"))
    try:
        try:
            with tarfile.open(tar_path) as tar:
                _extract_safely(tar, tar_path, staging)
        except (tarfile.TarError, EOFError, OSError) as err:
            raise store.DataError(f"{tar_path}: cannot extract it ({type(err).__name__}: {err}); the archive is "
                                  f"truncated, damaged or unsafe: delete it and fetch it again") from None
        for child in staging.iterdir():
            target = dest / child.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            child.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_safely(tar, tar_path, dest):
    if hasattr(tarfile, "data_filter"):  # Python >= 3.12, and 3.9.17+ / 3.10.12+ / 3.11.4+
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()  # older Pythons: check every member first
    for member in tar.getmembers():
        target = (dest / member.name).resolve()
        if (member.issym() or member.islnk() or member.isdev()
                or (target != root and root not in target.parents)):
            raise store.DataError(f"{tar_path}: unsafe member {member.name!r}; nothing extracted")
    tar.extractall(dest)


# The course's server JSON files write image paths as "./here/VOCdevkit/..." (the course's own
# loader strips the prefix too); paths are kept relative to the folder holding VOCdevkit.
_COURSE_PATH_PREFIX = "./here/"


def _relative_image_path(path: str) -> str:
    """An image path of the course JSON without the course server's "./here/" prefix."""
    return path[len(_COURSE_PATH_PREFIX):] if path.startswith(_COURSE_PATH_PREFIX) else path


def _images_root(json_path: Path, sample_rel_path: str) -> Path:
    """Folder against which the JSON's relative image paths resolve (data root or download cache)."""
    for base in (json_path.parent, store.dataset_dir("voc2007"),
                 store.cache_dir() / "downloads" / "voc2007"):
        if (base / sample_rel_path).is_file():
            return base
    if store.offline():
        raise store.DataError(
            f"voc2007: image {sample_rel_path} not found beside {json_path}.\n"
            f"  Put the VOCdevkit/VOC2007 tree under {store.dataset_dir('voc2007')}.\n"
            f"  Get it from: {store.REGISTRY['voc2007'].files['VOCtrainval_06-Nov-2007.tar'].urls[0]}")
    tar_path = store.fetch("voc2007", "VOCtrainval_06-Nov-2007.tar")
    dest = store.cache_dir() / "downloads" / "voc2007"
    extract_tar(tar_path, dest)
    if not (dest / sample_rel_path).is_file():
        raise store.DataError(f"{tar_path}: extracted, but {sample_rel_path} is not inside")
    return dest


class VOC2007Detection(torch.utils.data.Dataset):
    """VOC 2007 detection split ("train": 2,501 images, "val": 2,510) in the course's format.

    ``dataset[i]`` returns ``(image_path, image, gt_boxes)``: image (3, S, S) float32 normalized
    with ImageNet statistics (S = image_size); gt_boxes (max_boxes, 5) float32 rows
    (x1, y1, x2, y2, class_index) in crop pixels, padded with -1.
    """

    def __init__(self, split="train", image_size=224, max_boxes=40, num_images=None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        json_path = store.fetch("voc2007", f"voc07_{split}.json")
        try:
            instances = json.loads(json_path.read_text())
        except ValueError as e:
            raise store.DataError(f"{json_path}: not valid JSON ({e})") from e
        if not instances or not all(isinstance(i, list) and len(i) == 2 for i in instances):
            raise store.DataError(f"{json_path}: expected a list of [image_path, [boxes]] pairs")
        if num_images is not None:
            if not 1 <= num_images <= len(instances):
                raise ValueError(f"num_images must be in [1, {len(instances)}], got {num_images}")
            instances = instances[:num_images]
        self.instances = [[_relative_image_path(path), anns] for path, anns in instances]
        instances = self.instances
        self.root = _images_root(json_path, instances[0][0])
        self.image_size, self.max_boxes = image_size, max_boxes
        self.class_to_idx = {c: i for i, c in enumerate(VOC_CLASSES)}
        self.idx_to_class = dict(enumerate(VOC_CLASSES))

    def __len__(self):
        return len(self.instances)

    def _geometry(self, w, h):
        """(new_w, new_h, left, top): resize so the shorter side is image_size, centre crop."""
        scale = self.image_size / min(w, h)
        new_w, new_h = max(self.image_size, round(w * scale)), max(self.image_size, round(h * scale))
        return new_w, new_h, (new_w - self.image_size) // 2, (new_h - self.image_size) // 2

    def _to_crop(self, boxes, w, h):
        """Map (K, 4) original-image boxes to the crop, clip, and flag the non-empty ones."""
        new_w, new_h, left, top = self._geometry(w, h)
        boxes = boxes.clone()
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] * new_w / w - left).clamp(0, self.image_size)
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] * new_h / h - top).clamp(0, self.image_size)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return boxes, valid

    def annotation_path(self, index):
        """The VOCdevkit XML file of image `index` (it may be absent in a JSON-only copy)."""
        path = self.root / self.instances[index][0]
        return path.parent.parent / "Annotations" / (path.stem + ".xml")

    def difficult_boxes(self, index):
        """Objects marked difficult in the VOC XML of image `index`, in crop pixels.

        Returns a (D, 5) float32 tensor of rows (x1, y1, x2, y2, class_index) (boxes clipped to
        the crop; objects cropped away are dropped). The course JSON omits these objects; an
        evaluator should ignore detections matched to them. Returns (0, 5) when the XML file is
        absent (a copy with only the JSON files and images).
        """
        import xml.etree.ElementTree as ET
        from PIL import Image

        xml_path = self.annotation_path(index)
        if not xml_path.is_file():
            return torch.zeros(0, 5)
        rows = []
        for obj in ET.parse(xml_path).getroot().iter("object"):
            if int(float(obj.findtext("difficult", "0"))) != 1:
                continue
            bb = obj.find("bndbox")
            rows.append([float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
                        + [float(self.class_to_idx[obj.findtext("name").strip()])])
        if not rows:
            return torch.zeros(0, 5)
        with self._open_image(index) as img:
            w, h = img.size  # header only: no decoding
        out = torch.tensor(rows, dtype=torch.float32)
        boxes, valid = self._to_crop(out[:, :4], w, h)
        return torch.cat([boxes, out[:, 4:]], dim=1)[valid]

    def _open_image(self, index):
        """PIL image `index` (lazily decoded); DataError, with where to get the images, if the
        file is missing (a partial copy of the VOCdevkit tree)."""
        from PIL import Image

        path = self.root / self.instances[index][0]
        try:
            return Image.open(path)
        except FileNotFoundError as e:
            raise store.DataError(
                f"voc2007: image {path} is missing (the first image of the split was found, so the "
                f"copy under {self.root} is incomplete).\n"
                f"  Put the whole VOCdevkit/VOC2007 tree under {self.root}.\n"
                f"  Get it from: {store.REGISTRY['voc2007'].files['VOCtrainval_06-Nov-2007.tar'].urls[0]}"
            ) from e

    def __getitem__(self, index):
        from PIL import Image
        import numpy as np

        anns = self.instances[index][1]
        path = self.root / self.instances[index][0]
        with self._open_image(index) as img:
            img = img.convert("RGB")
            w, h = img.size
            new_w, new_h, left, top = self._geometry(w, h)
            img = img.resize((new_w, new_h), Image.BILINEAR)
            img = img.crop((left, top, left + self.image_size, top + self.image_size))
            image = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        image = (image - mean) / std

        boxes = torch.tensor([a["xyxy"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        classes = torch.tensor([self.class_to_idx[a["name"]] for a in anns], dtype=torch.float32)
        boxes, valid = self._to_crop(boxes, w, h)
        gt = torch.full((self.max_boxes, 5), -1.0)
        kept = torch.cat([boxes, classes[:, None]], dim=1)[valid][: self.max_boxes]
        gt[: len(kept)] = kept
        return str(path), image, gt
