"""A5 headline experiments: FCOS (fcos_experiments) and Faster R-CNN (rcnn_experiments) on
PASCAL VOC 2007, evaluated by the project's own VOC mAP (eecs598.detection_eval).

`run(device)` is what `make reproduce` calls; the notebooks call the functions of the two
modules directly.
"""
import fcos_experiments
import rcnn_experiments


def run(device=None, figures_dir=None):
    """Both detectors' records; with `figures_dir`, also their PR curves and drawn detections."""
    return (fcos_experiments.run(device, figures_dir=figures_dir)
            + rcnn_experiments.run(device, figures_dir=figures_dir))
