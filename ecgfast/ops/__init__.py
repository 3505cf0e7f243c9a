"""ecgfast's fused ops, one module per op: launcher, ``torch.library`` custom op, autograd and one functional.

Each op is usable as a function (here) and as a module (:mod:`ecgfast.nn`), with one frozen config dataclass for
its hyperparameters (:mod:`ecgfast.ops.configs`). Backends (:mod:`ecgfast.ops.backends`): Triton kernels
(``ecgfast.kernels``), the C++/CUDA extension ``ecgfast._C`` (csrc/), and the plain-torch reference
(:mod:`ecgfast.reference`), which is the fallback and the oracle of the tests. The VCG augmentation's random
parameters: :mod:`ecgfast.ops.vcg_params`.

The names below are imported on first use, so that ``ecgfast.ops.configs`` loads without torch (fast CLI help).
"""

from ..lazy import lazy_exports

_EXPORTS = {"ContrastiveLossConfig": "configs", "VCGAugmentConfig": "configs",
            "multi_positive_contrastive_loss": "contrastive_loss", "vcg_augment": "vcg_op",
            "VCGAugmentParams": "vcg_params", "sample_vcg_params": "vcg_params"}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
