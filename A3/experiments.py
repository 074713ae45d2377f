"""A3 headline experiments: fully connected nets (fc_experiments) and conv nets (conv_experiments).

`run(device)` is what `make reproduce` calls; the notebooks call the functions of the two
modules directly.
"""
import conv_experiments
import fc_experiments


def run(device=None):
    return fc_experiments.run(device) + conv_experiments.run(device)
