"""densbench: benchmarks of neural networks that predict probability distributions."""

import os

# MKL picks its matrix-product kernels by how many products a batched call holds, so without its
# conditional-reproducibility mode a model's float32 rounding would depend on how many models share
# its stack. AUTO keeps the fastest kernels for this CPU and the same ones for every batch size. It
# must be set before MKL's first product; a value the user set wins.
os.environ.setdefault("MKL_CBWR", "AUTO")
