"""Training objectives: masked diffusion (default) and autoregressive, on the same network."""
from openmoe2_jax.objectives import autoregressive, diffusion


def loss_fn(kind: str):
    """The loss function of `config.objective.kind`: (apply_fn, params, tokens, rng, cfg) -> (loss, metrics)."""
    return {"diffusion": diffusion.loss, "ar": autoregressive.loss}[kind]
