"""Triton kernels of ecgfast (installed as ``ecgfast.kernels``).

Only ``@triton.jit`` functions and their launch-size helpers live here: no autograd, no ecgfast imports.
The fused VCG augmentation and multi-positive contrastive loss kernels arrive with their issues.
"""
