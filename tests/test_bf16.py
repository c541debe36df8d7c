"""bfloat16 compute (the paper's `model.dtype`): what stays float32, and a bfloat16 run that tracks
the float32 one."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from openmoe2_jax.data.tokenizer import get_tokenizer
from openmoe2_jax.models import layers, routing
from openmoe2_jax.parallel import sharding
from openmoe2_jax.runtime import build, state as state_lib
from openmoe2_jax.train import loop


def test_bf16_compute_keeps_parameters_optimizer_router_scores_and_loss_in_float32(config, monkeypatch):
    """With model.dtype = bfloat16, activations (q, k, v) are bfloat16, while the parameters, AdamW's
    moments, the router logits, the attention scores' softmax, the logits and the loss are float32."""
    config.model.dtype = "bfloat16"
    seen = {}
    route, scores, attention = routing.route, layers._scores, layers.dot_product_attention

    def spy_route(cfg, logits, selectable=None):
        seen["router_logits"] = logits.dtype
        return route(cfg, logits, selectable)

    def spy_scores(q, k, valid, causal):
        out = scores(q, k, valid, causal)
        seen["attention_scores"] = out.dtype
        return out

    def spy_attention(q, k, v, *args):
        seen["q"] = q.dtype
        return attention(q, k, v, *args)

    monkeypatch.setattr(routing, "route", spy_route)
    monkeypatch.setattr(layers, "_scores", spy_scores)
    monkeypatch.setattr(layers, "dot_product_attention", spy_attention)
    tok = get_tokenizer()
    built = build.build(config, tok.num_ids)
    batch = np.asarray(jax.random.randint(jax.random.key(0), (8, 32), 0, 1000), np.int32)
    with jax.sharding.set_mesh(built.mesh), nn.logical_axis_rules(sharding.RULES):
        state = state_lib.create(built.init, built.state_shardings)
        step = loop.jit_train_step(config, built.model, built.tx, built.mesh, built.state_shardings, tok.mask_id)
        state, metrics = step(state, jax.device_put(batch, built.batch_sharding))
    floats = [x.dtype for x in jax.tree.leaves((state.params, state.opt_state))
              if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and set(floats) == {jnp.dtype(jnp.float32)}
    assert seen == dict(q=jnp.bfloat16, router_logits=jnp.float32, attention_scores=jnp.float32)
    assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
    logits = built.model.apply({"params": state.params}, batch)
    assert logits.dtype == jnp.float32


def test_a_bf16_run_tracks_the_float32_run(config, tmp_path):
    """The same 30 steps (same init, data and masks) in bfloat16 and float32 compute: every step's
    training loss within 0.02 nats/token and the final validation loss within 0.01 (measured: see
    the README, "bfloat16")."""
    config.train.steps = 30
    config.eval.update(every_steps=30, num_batches=2)
    config.checkpoint.every_steps = 30
    quiet = lambda *_: None
    runs = {}
    for dtype in ("float32", "bfloat16"):
        c = config.copy_and_resolve_references()
        c.model.dtype = dtype
        runs[dtype] = loop.train(c, str(tmp_path / dtype), log=quiet)
    f32, bf16 = runs["float32"], runs["bfloat16"]
    gaps = [abs(bf16.train_losses[s] - f32.train_losses[s]) for s in f32.train_losses]
    assert max(gaps) < 0.02, max(gaps)
    assert abs(bf16.final_validation_loss - f32.final_validation_loss) < 0.01
    assert f32.train_losses[30] < f32.train_losses[1] - 0.5      # both learnt: the test can fail
