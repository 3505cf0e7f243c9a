"""ecgfast's fused ops, one module per op: autograd Function, torch.library registration, backend choice.

Each op is usable as a function (here) and as a module (:mod:`ecgfast.nn`). Backends: Triton kernels
(``ecgfast.kernels``), the C++/CUDA extension ``ecgfast._C`` (csrc/), and the plain-torch reference
(:mod:`ecgfast.reference`), which is the fallback and the oracle of the tests.
"""
from .contrastive_loss import multi_positive_contrastive_loss
from .vcg_augment import vcg_augment

__all__ = ["multi_positive_contrastive_loss", "vcg_augment"]
