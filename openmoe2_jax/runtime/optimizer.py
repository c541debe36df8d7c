"""AdamW with linear warm-up + cosine decay, global-norm clipping, no weight decay on norm scales."""
from __future__ import annotations

import jax
import optax


def schedule(train_config) -> optax.Schedule:
    """0 -> peak over warmup_steps, cosine down to min_lr_ratio * peak at `steps`."""
    t = train_config
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=t.learning_rate, warmup_steps=t.warmup_steps,
        # (optax needs a decay phase: warmup_steps = steps leaves one step of it, never taken)
        decay_steps=max(t.steps, t.warmup_steps + 1), end_value=t.learning_rate * t.min_lr_ratio)


def decay_mask(params):
    """True for matrices (decayed), False for vectors (norm scales). Under model.scan_layers a
    parameter of the stacked `layers` tree has one more (leading) axis than the layer's own."""
    def per_layer_ndim(path, p):
        stacked = any(getattr(k, "key", None) == "layers" for k in path)
        return p.ndim - 1 if stacked else p.ndim
    return jax.tree_util.tree_map_with_path(lambda path, p: per_layer_ndim(path, p) >= 2, params)


def make(train_config) -> optax.GradientTransformation:
    t = train_config
    return optax.chain(
        optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity(),
        optax.adamw(schedule(t), b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
                    mask=decay_mask),
    )
