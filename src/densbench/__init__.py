"""densbench: benchmarks of neural networks that predict probability distributions."""

from densbench import numerics  # ATen's and MKL's kernels are chosen when torch loads: fix them first (densbench.numerics says why)
numerics.pin()
