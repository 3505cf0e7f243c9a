"""Thin ``nn.Module`` wrappers of the fused ops of :mod:`ecgfast.ops`: they only hold hyperparameters."""
