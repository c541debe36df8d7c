#!/usr/bin/env bash
# The GPU check (about 8 minutes on one GPU; no network): run it the day a CUDA machine with JAX is at
# hand, from the repository's root, and commit the JSON it writes.
#   tools/gpu_check.sh OUT_DIR
# 1. the attention implementations on the GPU: cuDNN's fused attention equals the XLA reference
#    (values and gradients; tests/test_attention.py, which skips it on a machine without a GPU);
# 2. the training-speed benchmark on the CUDA backend, bfloat16: the `small` and `peer` shapes,
#    every FFN variant, with the bf16 matmul ceiling and MFU (python -m openmoe2_jax.bench).
set -euo pipefail
out=${1:?usage: tools/gpu_check.sh OUT_DIR}
mkdir -p "$out"
JAX_PLATFORMS=cuda python -c "import jax; assert jax.default_backend() == 'gpu', jax.devices(); print(jax.devices())"
export JAX_PLATFORMS=cuda   # the tests default to the CPU (tests/conftest.py)
python -m pytest -q -p no:cacheprovider tests/test_attention.py 2>&1 | tee "$out/attention_tests.txt"
python -m openmoe2_jax.bench --shapes=small,peer --dtype=bfloat16 --repeats=3 --remat_shape= \
  --output="$out/gpu_bench.json" 2>&1 | tee "$out/gpu_bench.txt"
