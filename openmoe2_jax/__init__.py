"""openmoe2_jax: sparse diffusion language models (masked-diffusion MoE) in JAX/Flax."""

__version__ = "0.1.0"
