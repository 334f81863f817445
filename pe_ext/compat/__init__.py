"""Drop-in layers for the sinusoidal encodings of the code people run: one module per project, each with the
project's constructor, forward signature, state_dict and values (its float32 evaluation order included, to the
sin/cos rounding: see tests/compat), computed by pe_ext's kernels; and the patchers behind pe_ext.patch(model).

The table of what is identical to each project and what differs: docs/compat.md.
"""

from . import detr, diffusers, espnet, fairseq, hf, mae, patchers, t2t, tutorial, xtransformers

__all__ = ["detr", "diffusers", "espnet", "fairseq", "hf", "mae", "patchers", "t2t", "tutorial", "xtransformers"]
