"""The transformer: attention masking, initialisation, and parameter accounting."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from openmoe2_jax import flops
from openmoe2_jax.models import layers
from openmoe2_jax.models.transformer import ModelConfig, Transformer, with_groups


def _model(config, causal):
    config.objective.kind = "ar" if causal else "diffusion"
    return Transformer(ModelConfig.from_config(config, 100277))


@pytest.mark.parametrize("causal", [True, False])
def test_future_token_changes_earlier_logits_only_when_bidirectional(config, causal):
    config.model.ffn = "dense"  # (expert choice would leak the future itself: see test_moe.py)
    model = _model(config, causal)
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 1000)
    params = model.init(jax.random.key(1), tokens)
    changed = tokens.at[:, 10].set(tokens[:, 10] + 1)
    a, b = model.apply(params, tokens), model.apply(params, changed)
    diff = np.abs(np.asarray(a - b)).max(axis=(0, 2))  # per position
    if causal:
        assert np.all(diff[:10] == 0.0)
    else:
        assert np.all(diff[:10] > 1e-6)
    assert diff[10] > 1e-6


def test_padding_keys_are_not_attended(config):
    model = _model(config, causal=False)
    tokens = jax.random.randint(jax.random.key(0), (1, 16), 0, 1000)
    params = model.init(jax.random.key(1), tokens)
    valid = jnp.arange(16)[None] < 8
    other = tokens.at[:, 12].set(7)
    a = model.apply(params, tokens, valid)[:, :8]
    b = model.apply(params, other, valid)[:, :8]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_rope_is_a_rotation_that_depends_on_relative_position():
    x = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
    y = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))
    def dot(i, j):
        return float(jnp.sum(layers.rope(x, jnp.array([[i]]), 1e4) * layers.rope(y, jnp.array([[j]]), 1e4)))
    np.testing.assert_allclose(dot(3, 1), dot(10, 8), rtol=1e-5)
    np.testing.assert_allclose(float(jnp.linalg.norm(layers.rope(x, jnp.array([[5]]), 1e4))),
                               float(jnp.linalg.norm(x)), rtol=1e-6)


def test_init_scales_and_no_biases(config):
    config.model.update(num_layers=8, d_model=64, mlp_dim=256)
    model = _model(config, causal=False)
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    params = jax.tree.map(np.asarray, params)
    layer = params["layer_0"]
    np.testing.assert_allclose(layer["attn"]["wq"].std(), 0.02, rtol=0.1)
    np.testing.assert_allclose(layer["moe"]["w_down"].std(), 0.02 / np.sqrt(16), rtol=0.1)
    np.testing.assert_allclose(layer["moe"]["w_gate"].std(), 0.02, rtol=0.1)
    np.testing.assert_allclose(layer["moe"]["router"].std(), 0.02, rtol=0.1)
    np.testing.assert_allclose(layer["moe"]["shared"]["w_down"].std(), 0.02 / np.sqrt(16), rtol=0.1)
    np.testing.assert_allclose(layer["attn"]["wo"].std(), 0.02 / np.sqrt(16), rtol=0.1)
    names = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert not any("bias" in n for n in names)
    assert params["embedding"].shape == (100352, 64) and params["head"].shape == (64, 100352)


VARIANTS = {
    "dense": dict(model=dict(ffn="dense")),
    "gqa": dict(model=dict(num_heads=2, num_kv_heads=1)),
    "ec": dict(),
    "tc": dict(moe=dict(routing="tc")),
    "noshared": dict(moe=dict(num_shared_experts=0)),
    "shared_router": dict(moe=dict(shared_gating="router")),
    "skiplayer": dict(moe=dict(first_dense_layers=1, dense_mlp_dim=48)),
    "granular": dict(moe=dict(num_experts=8, expert_mlp_dim=8, top_k=4)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_param_counts_equal_the_initialised_tree(config, variant):
    for section, values in VARIANTS[variant].items():
        config[section].update(values)
    model = _model(config, causal=False)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    total = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    counts = flops.param_counts(model.cfg)
    assert counts["total"] == total
    assert counts["embedding"] == params["embedding"].value.size + params["head"].value.size


def test_bfloat16_compute_keeps_float32_params_and_logits(config):
    config.model.dtype = "bfloat16"
    model = _model(config, causal=False)
    tokens = jnp.zeros((1, 8), jnp.int32)
    variables = model.init(jax.random.key(0), tokens)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    assert model.apply(variables, tokens).dtype == jnp.float32


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attention_and_its_flash_backward_equal_jax_reference(causal, kv_heads):
    """Our attention (heads-major, hand-written FlashAttention backward) = jax.nn.dot_product_attention
    in value and in all three gradients, with padding keys, causal masking and grouped-query heads."""
    b, s, h, hd = 2, 16, 4, 8
    ks = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(ks[0], (b, s, h, hd))
    k = jax.random.normal(ks[1], (b, s, kv_heads, hd))
    v = jax.random.normal(ks[2], (b, s, kv_heads, hd))
    probe = jax.random.normal(ks[3], (b, s, h, hd))
    valid = jnp.arange(s)[None] < jnp.array([16, 11])[:, None]

    def ours(q, k, v):
        return jnp.sum(layers.dot_product_attention(q, k, v, valid, causal) * probe)

    def reference(q, k, v):
        out = jax.nn.dot_product_attention(q, k, v, mask=valid[:, None, None, :], is_causal=causal,
                                           implementation="xla")
        return jnp.sum(out * probe)

    np.testing.assert_allclose(ours(q, k, v), reference(q, k, v), rtol=1e-5)
    for got, want in zip(jax.grad(ours, (0, 1, 2))(q, k, v), jax.grad(reference, (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_attention_backward_stores_no_score_matrix():
    """Between forward and backward only O(s) per head is kept: the residuals of the attention's
    VJP hold no [b, h, s, s] array (the autodiff of a plain softmax keeps the probabilities)."""
    b, s, h, hd = 1, 64, 2, 8
    q = jax.random.normal(jax.random.key(0), (b, s, h, hd))
    def largest_residual(attention):
        _, vjp = jax.vjp(attention, q, q, q)
        return max(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(vjp))

    assert largest_residual(layers.dot_product_attention) == b * s * h * hd        # q, k, v, out
    plain = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")
    assert largest_residual(plain) >= b * h * s * s


def _grads_and_temp(config, remat):
    config.model.remat = remat
    model = Transformer(ModelConfig.from_config(config, 1000))
    tokens = jax.random.randint(jax.random.key(0), (4, 32), 0, 1000)
    params = nn.meta.unbox(model.init(jax.random.key(1), tokens)["params"])
    grad = jax.jit(jax.grad(lambda p: jnp.mean(model.apply({"params": p}, tokens) ** 2)))
    temp = grad.lower(params).compile().memory_analysis().temp_size_in_bytes
    return grad(params), temp


def test_remat_policies_keep_gradients_and_block_remat_saves_memory(config):
    config.model.ffn = "dense"
    config.model.update(num_layers=4, d_model=64, mlp_dim=256)
    none, temp_none = _grads_and_temp(config, "none")
    for remat in ("attention", "block"):
        grads, temp = _grads_and_temp(config, remat)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, none)
        if remat == "block":
            assert temp < temp_none, (temp, temp_none)


def test_the_resolver_derives_each_quantity_once_and_the_model_reads_it(config):
    """configs/resolve.py against hand-computed numbers, and ModelConfig.from_config taking them."""
    from openmoe2_jax.configs import resolve  # pylint: disable=import-outside-toplevel
    # small config: d 32, 2 heads, 4 experts of 16, k 2, 2 shared, batch 8 x seq 32
    assert resolve.vocab_size(config.model, 100277) == 100352            # 100,278 ids padded to 128
    assert resolve.head_dim(config.model) == 16 and resolve.shared_mlp_dim(config.moe) == 32
    assert resolve.experts_per_token(config.moe) == 2.0 and resolve.step_tokens(config) == 256
    assert resolve.dense_mlp_dim_matched(config, "flops") == 2 * 16 + 32
    assert resolve.dense_mlp_dim_matched(config, "params") == round((3 * 32 * (4 * 16 + 32) + 32 * 4) / 96)
    assert resolve.ec_capacity(64, 4, 2, 1.0) == 32 and resolve.tc_capacity(64, 4, 2, 1.3) == 42
    config.moe.update(ec_capacity_factor=1.5, num_shared_experts=0)
    assert resolve.experts_per_token(config.moe) == 3.0 and resolve.shared_mlp_dim(config.moe) == 0
    config.model.update(vocab_size=100400, head_dim=8)
    config.moe.group_tokens = 128                                        # spans 2 of 4 batch shards
    m = ModelConfig.from_config(config, 100277, batch_shards=4)
    assert (m.vocab_size, m.head_dim, m.moe.shared_mlp_dim) == (100400, 8, 0)
    assert (m.moe.num_groups, m.moe.group_spans_shards) == (2, True)
    config.moe.group_tokens = 0                                          # one batch shard's 64 tokens
    m = ModelConfig.from_config(config, 100277, batch_shards=4)
    assert (m.moe.num_groups, m.moe.group_spans_shards) == (4, False)
    assert flops.matched_dense(config, "flops").model.mlp_dim == resolve.dense_mlp_dim_matched(config, "flops")


def _stacked(params, first: int, num_layers: int):
    """Unrolled parameters (layer_i) -> model.scan_layers's: layers >= first stacked under layers/block."""
    out = {k: v for k, v in params.items() if not (k.startswith("layer_") and int(k[6:]) >= first)}
    out["layers"] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs),
                                           *[params[f"layer_{i}"] for i in range(first, num_layers)])}
    return out


@pytest.mark.parametrize("ffn", ["moe", "dense"])
def test_scanned_layers_equal_the_unrolled_stack(config, ffn):
    """model.scan_layers: the same loss, metrics (per-layer routing statistics included) and gradients
    as the unrolled layers, from the same parameters stacked; first dense layers stay unrolled."""
    from openmoe2_jax import objectives  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.models.transformer import apply_fn  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.runtime import state as state_lib  # pylint: disable=import-outside-toplevel
    config.model.update(num_layers=4, ffn=ffn)
    config.moe.first_dense_layers = 1 if ffn == "moe" else 0
    first = config.moe.first_dense_layers
    tokens = jax.random.randint(jax.random.key(0), (8, 32), 0, 1000)
    unrolled = Transformer(ModelConfig.from_config(config, 100277))
    params = state_lib.strip_boxes(unrolled.init(jax.random.key(1), tokens)["params"])
    config.model.scan_layers = True
    scanned = Transformer(ModelConfig.from_config(config, 100277))
    shapes = jax.eval_shape(lambda: state_lib.strip_boxes(scanned.init(jax.random.key(1), tokens)["params"]))
    stacked = _stacked(params, first, 4)
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, stacked)
    # AdamW decays the same parameters (matrices, not the [layers, d] stacked norm scales)
    from openmoe2_jax.runtime import optimizer  # pylint: disable=import-outside-toplevel
    unrolled_mask = _stacked(optimizer.decay_mask(params), first, 4)
    jax.tree.map(lambda m, u: np.testing.assert_array_equal(np.all(u), m), optimizer.decay_mask(stacked),
                 unrolled_mask)
    assert optimizer.decay_mask(stacked)["layers"]["block"]["attn_norm"]["scale"] is False
    cfg = objectives.frozen_objective(config.objective)

    def run(model, p):  # jitted, as training is (op by op, XLA:CPU rounds the unrolled stack otherwise)
        loss = lambda q: objectives.loss_fn("diffusion")(apply_fn(model), q, tokens, jax.random.key(2), cfg, 100277)
        return jax.jit(jax.value_and_grad(loss, has_aux=True))(p)

    (loss_u, metrics_u), grads_u = run(unrolled, params)
    (loss_s, metrics_s), grads_s = run(scanned, stacked)
    np.testing.assert_allclose(loss_s, loss_u, rtol=1e-5)
    assert sorted(metrics_s) == sorted(metrics_u)
    for name in metrics_u:
        np.testing.assert_allclose(metrics_s[name], metrics_u[name], rtol=1e-4, atol=1e-6, err_msg=name)
    # each parameter's gradient (relative to its norm; measured: equal bit for bit under jit)
    errors = jax.tree.map(lambda a, b: float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-12)),
                          grads_s, _stacked(grads_u, first, 4))
    assert max(jax.tree.leaves(errors)) < 1e-6, errors


def test_a_scanned_run_trains_and_reads_back_unrolled(config, tmp_path):
    """A model.scan_layers run trains and checkpoints; restore.load gives the scanned model, and
    load_params (export, upcycling) the same parameters unrolled, which compute the same logits."""
    from openmoe2_jax.runtime import restore  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.train import loop  # pylint: disable=import-outside-toplevel
    config.model.update(num_layers=3, scan_layers=True)
    config.moe.first_dense_layers = 1
    summary = loop.train(config, str(tmp_path / "run"), log=lambda *_: None)
    assert summary.steps == 6 and np.isfinite(summary.final_train_loss)
    scanned = restore.load(tmp_path / "run")
    assert set(scanned.params) == {"embedding", "layer_0", "layers", "final_norm", "head"}
    plain = restore.load_params(tmp_path / "run")
    assert not plain.model_cfg.scan_layers and "layers" not in plain.params
    assert set(plain.params) == {"embedding", "layer_0", "layer_1", "layer_2", "final_norm", "head"}
    tokens = jax.random.randint(jax.random.key(0), (8, 32), 0, 1000)
    model = scanned.model(8, 32)
    unrolled = Transformer(with_groups(plain.model_cfg, model.cfg.moe.num_groups))
    logits = jax.jit(model.apply)({"params": scanned.params}, tokens)
    expected = jax.jit(unrolled.apply)({"params": plain.params}, tokens)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
