"""A4 headline experiments: image captioning (captioning_experiments) and the arithmetic
Transformer (transformer_experiments).

`run(device)` is what `make reproduce` calls; the notebooks call the functions of the two
modules directly.
"""
import captioning_experiments
import transformer_experiments


def run(device=None):
    return captioning_experiments.run(device) + transformer_experiments.run(device)
