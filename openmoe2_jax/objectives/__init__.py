"""Training objectives: masked diffusion (default) and autoregressive, on the same network."""
import ml_collections

from openmoe2_jax.objectives import autoregressive, diffusion


def loss_fn(kind: str):
    """The loss function of `config.objective.kind`: (apply_fn, params, tokens, rng, cfg) -> (loss, metrics)."""
    return {"diffusion": diffusion.loss, "ar": autoregressive.loss}[kind]


def frozen_objective(objective_config, evaluation: bool = False) -> ml_collections.FrozenConfigDict:
    """A static, hashable view of config.objective for tracing (no random length in evaluation)."""
    d = objective_config.to_dict()
    if evaluation:
        d["random_length_prob"] = 0.0
    return ml_collections.FrozenConfigDict(d)
