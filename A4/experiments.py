"""A4 headline experiments: image captioning (captioning_experiments) and the arithmetic
Transformer (transformer_experiments).

`run(device)` is what `make reproduce` calls; the notebooks call the functions of the two
modules directly.
"""
import captioning_experiments
import transformer_experiments


def run(device=None):
    # The Transformer first: its minutes fail fast, before the hours of captioning (whose rows a
    # later failure in the same call would lose, since `make reproduce` merges what `run` returns).
    transformer = transformer_experiments.run(device)
    return captioning_experiments.run(device) + transformer
