"""Triton kernels of ecgfast (installed as ``ecgfast.kernels``).

Only ``@triton.jit`` functions and their launch-size helpers live here: no autograd, no ecgfast imports.
``vcg_augment``: the fused VCG augmentation; ``contrastive_loss``: the multi-positive contrastive loss
(online log-sum-exp forward, recomputing backward). Their launchers and autograd live in ``ecgfast.ops``.
"""
