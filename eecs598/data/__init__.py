"""Datasets: one registry, one data root ($EECS598_DATA), one writable cache ($EECS598_CACHE)."""
from .store import (REGISTRY, DataError, cache_dir, data_root, dataset_dir, fetch,  # noqa: F401
                    verify_file)
from .cifar import CLASSES as CIFAR10_CLASSES, cifar10, load_cifar10_uint8, preprocess_cifar10  # noqa: F401
from .mnist import mnist, read_idx  # noqa: F401
from .text import arithmetic_expressions, caption_dataset, caption_folder, coco_captions  # noqa: F401
from .voc import VOC_CLASSES, VOC2007Detection  # noqa: F401
