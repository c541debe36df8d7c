"""Pure train and eval steps: (state, batch) -> (state, metrics). Jitted with shardings by the loop."""
from __future__ import annotations

import functools

import jax
import optax

from openmoe2_jax import objectives
from openmoe2_jax.models.transformer import apply_fn
from openmoe2_jax.runtime.state import TrainState


def train_step(state: TrainState, batch, *, model, tx, schedule, objective_cfg, mask_id):
    hidden = model.cfg.head_chunk > 0 or objective_cfg.masked_head > 0   # the loss makes the logits
    loss_fn = functools.partial(objectives.loss_fn(objective_cfg.kind), apply_fn(model, hidden=hidden),
                                cfg=objective_cfg, mask_id=mask_id)
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: loss_fn(p, batch, rng), has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   param_norm=optax.tree.norm(params), learning_rate=schedule(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
