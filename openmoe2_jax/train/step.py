"""Pure train and eval steps: (state, batch) -> (state, metrics). Jitted with shardings by the loop."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from openmoe2_jax import objectives
from openmoe2_jax.train.state import TrainState


def apply_fn(model: nn.Module):
    """(params, tokens, valid) -> (logits, aux).

    aux["aux_loss"] is the sum of the MoE layers' weighted auxiliary losses (z-loss, load balance);
    aux["moe/<layer>/<stat>"] and aux["moe/<stat>"] (mean over MoE layers) are routing statistics.
    """
    def apply(params, tokens, valid):
        logits, sown = model.apply({"params": params}, tokens, valid,
                                   mutable=["moe_stats", "moe_losses"])
        aux = {}
        losses = jax.tree.leaves(sown.get("moe_losses", {}))
        if losses:
            aux["aux_loss"] = sum(losses)
        per_stat = {}
        for layer, stats in sown.get("moe_stats", {}).items():
            for name, (value,) in stats["moe"].items():
                aux[f"moe/{layer}/{name}"] = value
                per_stat.setdefault(name, []).append(value)
        aux.update({f"moe/{name}": jnp.mean(jnp.stack(v)) for name, v in per_stat.items()})
        return logits, aux
    return apply


def train_step(state: TrainState, batch, *, model, tx, schedule, objective_cfg, mask_id):
    loss_fn = functools.partial(objectives.loss_fn(objective_cfg.kind), apply_fn(model),
                                cfg=objective_cfg, mask_id=mask_id)
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: loss_fn(p, batch, rng), has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   param_norm=optax.tree.norm(params), learning_rate=schedule(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def frozen_objective(objective_config, evaluation: bool = False) -> ml_collections.FrozenConfigDict:
    """A static, hashable view of config.objective for tracing (no random length in evaluation)."""
    d = objective_config.to_dict()
    if evaluation:
        d["random_length_prob"] = 0.0
    return ml_collections.FrozenConfigDict(d)
