"""Kernels: the expert-choice top-k (the hot spot of batch-level EC), behind an `impl` switch."""
