"""A5 headline experiments: FCOS (fcos_experiments) and Faster R-CNN (rcnn_experiments) on
PASCAL VOC 2007, evaluated by the project's own VOC mAP (eecs598.detection_eval).

`run(device)` is what `make reproduce` calls; the notebooks call the functions of the two
modules directly.
"""
import fcos_experiments
import rcnn_experiments


def run(device=None):
    return fcos_experiments.run(device) + rcnn_experiments.run(device)
