"""Plain-PyTorch reference versions of ecgfast's fused ops, written for clarity.

Tests and benchmarks compare the fused kernels (``ecgfast.kernels``, ``ecgfast._C``) with these, and
``ecgfast.ops`` falls back to them where no kernel is built. They are never copied elsewhere.

Modules (import them directly; this package imports nothing so that importing one costs nothing else):

- :mod:`ecgfast.reference.vcg_augment`: the 3KG spatial (VCG) augmentation and ZeroMask, given their
  parameters: Dower / Kors matrices, rotation and scale matrices, the per-view 8x8 lead transform,
  the circular zero mask and the composed op ``vcg_augment_reference``.
- :mod:`ecgfast.reference.contrastive_loss`: the multi-positive contrastive loss.
"""
