"""Mixture of experts: routing invariants, loss formulas, scaling factors, equivalences, memory."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from openmoe2_jax import validation
from openmoe2_jax.configs import derive
from openmoe2_jax.models import layers, routing
from openmoe2_jax.models.moe import MoEConfig, MoEFFN
from openmoe2_jax.models.transformer import ModelConfig, Transformer, resolve_moe
from openmoe2_jax.train import upcycle


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def logits_with_ties(key, shape):
    """Random logits rounded to a coarse grid: many exact ties."""
    return jnp.round(jax.random.normal(key, shape) * 2) / 2


# ---------------------------------------------------------------- expert choice invariants

@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
def test_ec_every_expert_takes_exactly_c_tokens(ties, gate):
    G, N, E, k = 3, 40, 8, 2
    key = jax.random.key(0)
    logits = logits_with_ties(key, (G, N, E)) if ties else jax.random.normal(key, (G, N, E))
    C = routing.ec_capacity(N, E, k, 1.0)
    assert C == N * k // E == 10
    plan, _ = routing.expert_choice(logits, C, gate)
    token = np.asarray(plan.token)
    # Every expert processes exactly C distinct tokens.
    assert token.shape == (G, E, C)
    assert all(len(set(token[g, e])) == C for g in range(G) for e in range(E))
    n = np.asarray(plan.experts_per_token)
    assert np.all(n.sum(axis=1) == E * C)
    # n_t recomputed independently from the plan.
    for g in range(G):
        np.testing.assert_array_equal(np.bincount(token[g].ravel(), minlength=N), n[g])
    # Each expert's tokens are its top-C by logit (ties: lower index first, as lax.top_k).
    lg = np.asarray(logits)
    for g in range(G):
        for e in range(E):
            order = sorted(range(N), key=lambda t: (-lg[g, t, e], t))[:C]
            assert list(token[g, e]) == order
    # Gates: sum to 1 over the experts that chose a token, 0 for unchosen tokens, never NaN.
    gates = np.zeros((G, N))
    np.add.at(gates, (np.arange(G)[:, None, None], token), np.asarray(plan.gate))
    assert np.all(np.isfinite(np.asarray(plan.gate)))
    np.testing.assert_allclose(gates[n > 0], 1.0, rtol=1e-5)
    assert np.all(gates[n == 0] == 0.0) and (n == 0).any()


def test_ec_post_softmax_gates_match_numpy():
    G, N, E = 1, 16, 4
    logits = jax.random.normal(jax.random.key(1), (G, N, E))
    plan, _ = routing.expert_choice(logits, 6, "softmax")
    lg, token = np.asarray(logits)[0], np.asarray(plan.token)[0]
    chosen = np.zeros((N, E), bool)
    for e in range(E):
        chosen[token[e], e] = True
    for e in range(E):
        for c, t in enumerate(token[e]):
            expected = np.exp(lg[t, e]) / np.exp(lg[t][chosen[t]]).sum()
            np.testing.assert_allclose(float(plan.gate[0, e, c]), expected, rtol=1e-5)
    # A token chosen by exactly one expert gets gate 1 (no router gradient from it).
    single = np.where(chosen.sum(1) == 1)[0]
    assert len(single)
    pre, _ = routing.expert_choice(logits, 6, "pre_softmax")
    probs = np_softmax(lg)
    np.testing.assert_allclose(np.asarray(pre.gate[0]), probs[token, np.arange(E)[:, None]], rtol=1e-5)


def test_all_minus_inf_and_padding_never_nan():
    logits = jnp.full((1, 8, 4), -jnp.inf)
    plan, _ = routing.expert_choice(logits, 2, "softmax")
    assert np.all(np.isfinite(np.asarray(plan.gate)))
    logits = jax.random.normal(jax.random.key(0), (1, 8, 4))
    selectable = jnp.arange(8)[None] < 5
    plan, _ = routing.expert_choice(logits, 2, "softmax", selectable=selectable)
    assert np.asarray(plan.token).max() < 5  # padding is taken only when nothing else is left


def _moe_cfg(**kw):
    d = dict(num_experts=4, num_shared=0, expert_mlp_dim=8, shared_mlp_dim=0, shared_gating="none",
             top_k=2, routing="ec", ec_group="batch", num_groups=1, ec_capacity_factor=1.0,
             tc_capacity_factor=0.0, gate="softmax", z_loss_coef=0.0, tc_balance_loss=0.0,
             ec_balance_loss=0.0, scaling=None, topk_impl="xla")
    d.update(kw)
    return MoEConfig(**d)


@pytest.mark.parametrize("kind, capacity, plan_type, balance", [
    ("ec", 0.0, routing.SlotPlan, "ec_balance_loss"),
    ("tc", 1.5, routing.SlotPlan, "tc_balance_loss"),
    ("tc", 0.0, routing.TokenPlan, "tc_balance_loss"),   # dropless
])
def test_route_returns_the_plan_to_dispatch_with_its_losses_and_statistics(kind, capacity, plan_type, balance):
    cfg = _moe_cfg(routing=kind, tc_capacity_factor=capacity, z_loss_coef=1e-3, tc_balance_loss=1e-2,
                   ec_balance_loss=1e-2)
    logits = jax.random.normal(jax.random.key(0), (2, 16, 4))
    plan, shared_gate = routing.route(cfg, logits)
    assert type(plan) is plan_type and shared_gate is None
    # The weighted losses, each the coefficient times the independent formula.
    assert sorted(plan.losses) == sorted([balance, "z_loss"])
    np.testing.assert_allclose(plan.losses["z_loss"], 1e-3 * np.mean(
        np.log(np.exp(np.asarray(logits)).sum(-1)) ** 2), rtol=1e-5)
    assert {"experts_per_token_mean", "router_entropy", "zero_expert_fraction"} <= set(plan.stats)
    assert ("tokens_per_expert_min" in plan.stats) == (plan_type is routing.SlotPlan)
    # k = 2 of 4 experts, 16 tokens: EC gives every expert 8 tokens, i.e. 2 per token on average; TC
    # gives every token 2, less what a capacity dropped.
    dropped = float(plan.stats.get("dropped_fraction", 0.0))
    np.testing.assert_allclose(plan.stats["experts_per_token_mean"], 2.0 * (1 - dropped), rtol=1e-6)


@pytest.mark.parametrize("group", ["sequence", "batch"])
def test_sequence_level_routing_is_independent_across_sequences(group):
    cfg = _moe_cfg(ec_group=group, num_groups=1)
    layer = MoEFFN(cfg, 0.02, 0.02)
    x = jax.random.normal(jax.random.key(0), (4, 8, 16))
    params = layer.init(jax.random.key(1), x)["params"]
    other = x.at[1:].set(jax.random.normal(jax.random.key(2), (3, 8, 16)))
    y0 = layer.apply({"params": params}, x)[0]
    y1 = layer.apply({"params": params}, other)[0]
    if group == "sequence":
        np.testing.assert_array_equal(np.asarray(y0), np.asarray(y1))
    else:
        assert not np.allclose(np.asarray(y0), np.asarray(y1))


def test_ec_in_a_causal_model_leaks_the_future_and_is_refused(config):
    config.objective.kind = "ar"
    with pytest.raises(validation.ConfigError, match="leaks the future"):
        validation.validate(config)
    config.moe.allow_ec_causal = True
    validation.validate(config)
    model = Transformer(ModelConfig.from_config(config, 100277))
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 1000)
    params = model.init(jax.random.key(1), tokens)["params"]
    changed = tokens.at[:, 12].set(5)
    diff = np.abs(np.asarray(model.apply({"params": params}, tokens) -
                             model.apply({"params": params}, changed)))[:, :12]
    assert diff.max() > 0  # the waiver is real: earlier positions see the change
    config.moe.routing = "tc"
    model = Transformer(ModelConfig.from_config(config, 100277))
    params = model.init(jax.random.key(1), tokens)["params"]
    diff = np.abs(np.asarray(model.apply({"params": params}, tokens) -
                             model.apply({"params": params}, changed)))[:, :12]
    assert diff.max() == 0  # token choice keeps the model causal


# ---------------------------------------------------------------- token choice

def test_tc_capacity_without_drops_equals_dropless():
    x = jax.random.normal(jax.random.key(0), (2, 8, 16))
    dropless = MoEFFN(_moe_cfg(routing="tc", num_groups=2), 0.02, 0.02)
    params = dropless.init(jax.random.key(1), x)["params"]
    roomy = MoEFFN(_moe_cfg(routing="tc", num_groups=2, tc_capacity_factor=2.0), 0.02, 0.02)
    np.testing.assert_allclose(np.asarray(dropless.apply({"params": params}, x)),
                               np.asarray(roomy.apply({"params": params}, x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sizes", [(7, 0, 130, 1), (0, 0, 0, 64), (16, 16, 16, 16)])
def test_blocked_grouped_matmul_equals_ragged_dot(sizes):
    """The off-TPU dropless path (rows padded into 64-row blocks per expert) = jax.lax.ragged_dot, in
    value and gradients, for uneven, empty and block-aligned groups."""
    from openmoe2_jax.models import moe  # pylint: disable=import-outside-toplevel
    E, d, f, A = len(sizes), 8, 16, sum(sizes)
    ks = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(ks[0], (A, d))
    w_gate, w_up = (jax.random.normal(k, (E, d, f)) for k in ks[1:3])
    w_down = jax.random.normal(ks[3], (E, f, d))
    probe = jax.random.normal(ks[4], (A, d))
    group_sizes = jnp.asarray(sizes, jnp.int32)

    def ragged(x, wg, wu, wd):
        h = jax.nn.silu(jax.lax.ragged_dot(x, wg, group_sizes)) * jax.lax.ragged_dot(x, wu, group_sizes)
        return jnp.sum(jax.lax.ragged_dot(h, wd, group_sizes) * probe)

    def blocked(x, wg, wu, wd):
        return jnp.sum(moe.blocked_swiglu(x, group_sizes, wg, wu, wd) * probe)

    args = (x, w_gate, w_up, w_down)
    np.testing.assert_allclose(blocked(*args), ragged(*args), rtol=1e-5)
    for got, want in zip(jax.grad(blocked, (0, 1, 2, 3))(*args), jax.grad(ragged, (0, 1, 2, 3))(*args)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    dest, block_group = moe.grouped_rows(group_sizes, A)
    assert len(set(np.asarray(dest).tolist())) == A          # every row has its own slot
    assert block_group.shape == (-(-A // moe.BLOCK) + E,)


def test_dropless_tc_layer_is_the_same_with_either_grouped_matmul():
    x = jax.random.normal(jax.random.key(0), (2, 40, 16))
    blocked = MoEFFN(_moe_cfg(routing="tc", num_groups=2, tc_dropless_impl="blocked"), 0.02, 0.02)
    ragged = MoEFFN(_moe_cfg(routing="tc", num_groups=2, tc_dropless_impl="ragged"), 0.02, 0.02)
    params = blocked.init(jax.random.key(1), x)["params"]
    np.testing.assert_allclose(np.asarray(blocked.apply({"params": params}, x)),
                               np.asarray(ragged.apply({"params": params}, x)), rtol=1e-5, atol=1e-6)


def test_tc_capacity_drops_later_choices_first():
    logits = jnp.asarray([[[5.0, 4.0, 0.0], [5.0, 0.0, 4.0], [5.0, 4.0, 0.0]]])  # all want expert 0 first
    expert, gate, _ = routing.token_choice(logits, 2)
    plan, kept = routing.token_choice_slots(expert, gate, 3, capacity=2)
    kept = np.asarray(kept)[0]
    assert kept[:, 0].tolist() == [True, True, False]   # expert 0 full after tokens 0 and 1
    assert kept[:, 1].all()                              # second choices fit
    assert np.asarray(plan.used).sum() == 5


def test_tc_with_every_expert_a_copy_of_one_dense_ffn_equals_it():
    d, f = 16, 8
    x = jax.random.normal(jax.random.key(0), (2, 8, d))
    dense = layers.SwiGLU(f, 0.02, 0.02)
    dp = nn.meta.unbox(dense.init(jax.random.key(1), x)["params"])
    for capacity in (0.0, 2.0):
        moe = MoEFFN(_moe_cfg(routing="tc", expert_mlp_dim=f, num_groups=2, tc_capacity_factor=capacity),
                     0.02, 0.02)
        mp = nn.meta.unbox(moe.init(jax.random.key(2), x)["params"])
        mp = dict(mp, w_gate=jnp.stack([dp["w_gate"]] * 4), w_up=jnp.stack([dp["w_up"]] * 4),
                  w_down=jnp.stack([dp["w_down"]] * 4))
        np.testing.assert_allclose(np.asarray(moe.apply({"params": mp}, x)),
                                   np.asarray(dense.apply({"params": dp}, x)), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- losses

def test_balance_losses_are_one_under_uniform_routing():
    G, N, E, k = 2, 32, 8, 2
    uniform = jnp.zeros((G, N, E))
    # TC: assignments spread evenly (token t -> experts t mod E, t+1 mod E).
    expert = jnp.stack([jnp.arange(N) % E, (jnp.arange(N) + 1) % E], -1)[None].repeat(G, 0)
    np.testing.assert_allclose(float(routing.tc_load_balance_loss(uniform, expert, E)), 1.0, rtol=1e-6)
    n_t = jnp.full((G, N), k)
    np.testing.assert_allclose(float(routing.ec_token_balance_loss(uniform, n_t, k)), 1.0, rtol=1e-6)


def test_losses_match_numpy_on_random_logits():
    G, N, E, k = 2, 16, 4, 2
    z = np.asarray(jax.random.normal(jax.random.key(3), (G, N, E))) * 2
    expert = np.argsort(-z, -1)[..., :k]
    expected_tc = np.mean([E / (N * N * k) * sum(np_softmax(z[g])[:, e].sum() * (expert[g] == e).sum()
                                                   for e in range(E)) for g in range(G)])
    got = routing.tc_load_balance_loss(jnp.asarray(z), jnp.asarray(expert, jnp.int32), E)
    np.testing.assert_allclose(float(got), expected_tc, rtol=1e-5)
    n_t = np.random.default_rng(0).integers(0, E + 1, (G, N))
    p_tok = np_softmax(z, axis=1).sum(-1)
    expected_ec = np.mean((p_tok * n_t).sum(-1) / (E * k))
    np.testing.assert_allclose(float(routing.ec_token_balance_loss(jnp.asarray(z), jnp.asarray(n_t), k)),
                               expected_ec, rtol=1e-5)
    lse = np.log(np.exp(z).sum(-1))
    np.testing.assert_allclose(float(routing.z_loss(jnp.asarray(z))), np.mean(lse ** 2), rtol=1e-5)


def test_aux_losses_reach_the_objective_with_their_coefficients(config):
    from openmoe2_jax.models import transformer
    config.moe.update(z_loss_coef=0.5, ec_balance_loss=0.25)
    model = Transformer(ModelConfig.from_config(config, 100277))
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 1000)
    params = model.init(jax.random.key(1), tokens)["params"]
    _, aux = transformer.apply_fn(model)(params, tokens, None)
    per_layer = [aux[f"moe/layer_{i}/z_loss"] + aux[f"moe/layer_{i}/ec_balance_loss"] for i in range(2)]
    np.testing.assert_allclose(float(aux["aux_loss"]), float(sum(per_layer)), rtol=1e-6)
    assert float(aux["moe/layer_0/ec_balance_loss"]) > 0
    assert float(aux["moe/tokens_per_expert_min"]) == float(aux["moe/tokens_per_expert_max"])


# ---------------------------------------------------------------- scaling factors, granularity

def test_scaling_factor_rule_reproduces_the_published_values():
    np.testing.assert_allclose(routing.scaling_factor_tc(64, 2, 6), 3.20, rtol=0.02)
    np.testing.assert_allclose(routing.scaling_factor_tc(64, 2, 8), 3.63, rtol=0.02)
    table = routing.scaling_table_ec(64, 2)
    for n, value in {1: 1.41, 2: 1.80, 4: 2.32, 8: 3.03, 16: 4.03, 64: 7.39}.items():
        np.testing.assert_allclose(table[n], value, rtol=0.02)


def test_scaling_table_is_applied_by_experts_per_token(config):
    config.moe.scaling_factors = True
    cfg = resolve_moe(config.moe, 256, 1)
    assert len(cfg.scaling) == config.moe.num_experts + 1 and cfg.scaling[1] == pytest.approx(math.sqrt(2), rel=0.02)
    logits = jax.random.normal(jax.random.key(0), (1, 16, 4))
    plain, _ = routing.expert_choice(logits, 8, "softmax")
    scaled, _ = routing.expert_choice(logits, 8, "softmax", scaling=cfg.scaling)
    n = np.asarray(plain.experts_per_token)[0]
    ratio = np.asarray(scaled.gate) / np.asarray(plain.gate)
    token = np.asarray(plain.token)[0]
    np.testing.assert_allclose(ratio[0], np.asarray(cfg.scaling)[n[token]], rtol=1e-5)


def test_granularity_keeps_total_and_active_parameters(config):
    from openmoe2_jax import flops
    config.moe.update(num_experts=8, expert_mlp_dim=16, top_k=2)
    base = flops.param_counts(ModelConfig.from_config(config, 100277))
    for e in (4, 16, 32):
        variant = derive.with_granularity(config, e)
        validation.validate(variant)
        counts = flops.param_counts(ModelConfig.from_config(variant, 100277))
        # The router grows with E (d x E): everything else is exactly constant.
        router_delta = config.model.d_model * (e - 8) * config.model.num_layers
        assert counts["total"] - router_delta == base["total"]
        assert counts["active"] - router_delta == base["active"]
    with pytest.raises(validation.ConfigError, match="whole number"):
        derive.with_granularity(config, 6)
    # EC keeps top_k and scales its capacity factor; TC scales top_k and refuses fractions.
    assert derive.with_granularity(config, 4).moe.ec_capacity_factor == 0.5
    config.moe.routing = "tc"
    assert derive.with_granularity(config, 16).moe.top_k == 4
    with pytest.raises(validation.ConfigError, match="top_k 2 x 2 / 8"):
        derive.with_granularity(config, 2)


# ---------------------------------------------------------------- upcycling

def test_upcycled_by_copy_gives_the_dense_output_at_step_zero(config):
    config.model.update(ffn="dense", mlp_dim=16)
    dense_model = Transformer(ModelConfig.from_config(config, 100277))
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 1000)
    dense = nn.meta.unbox(dense_model.init(jax.random.key(1), tokens)["params"])
    config.model.ffn = "moe"
    # k = E: every expert takes every token, so every token has experts in every layer.
    config.moe.update(num_experts=4, expert_mlp_dim=16, top_k=4, num_shared_experts=2)
    moe_model = Transformer(ModelConfig.from_config(config, 100277))
    fresh = nn.meta.unbox(moe_model.init(jax.random.key(2), tokens)["params"])
    params = upcycle.upcycle_params(fresh, jax.tree.map(np.asarray, dense), "copy")
    np.testing.assert_allclose(np.asarray(moe_model.apply({"params": params}, tokens)),
                               np.asarray(dense_model.apply({"params": dense}, tokens)), rtol=1e-4, atol=1e-5)
    assert not np.allclose(params["layer_0"]["moe"]["router"], 0)  # router fresh


def test_upcycle_by_slice_and_shape_errors(config):
    config.model.update(ffn="dense", mlp_dim=16)
    dense = nn.meta.unbox(Transformer(ModelConfig.from_config(config, 100277)).init(
        jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"])
    config.model.ffn = "moe"
    config.moe.update(num_experts=4, expert_mlp_dim=8)
    fresh = nn.meta.unbox(Transformer(ModelConfig.from_config(config, 100277)).init(
        jax.random.key(2), jnp.zeros((1, 4), jnp.int32))["params"])
    params = upcycle.upcycle_params(fresh, dense, "slice")
    w = params["layer_1"]["moe"]["w_gate"]
    np.testing.assert_array_equal(w[0], dense["layer_1"]["ffn"]["w_gate"][:, :8])
    np.testing.assert_array_equal(w[1], dense["layer_1"]["ffn"]["w_gate"][:, 8:])
    np.testing.assert_array_equal(w[2], w[0])
    with pytest.raises(upcycle.CheckpointError, match="expert_mlp_dim = the dense FFN width 16"):
        upcycle.upcycle_params(fresh, dense, "copy")


# ---------------------------------------------------------------- memory

@pytest.mark.parametrize("routing_kind", ["ec", "tc"])
def test_moe_step_temporary_memory_grows_linearly_in_tokens(config, routing_kind):
    from openmoe2_jax import objectives
    from openmoe2_jax.runtime import optimizer, state as state_lib
    from openmoe2_jax.train import step as step_lib
    config.model.vocab_size = 0
    config.moe.update(routing=routing_kind)  # one device: one routing group of the whole batch
    temps = []
    for batch in (8, 16, 32):
        model = Transformer(ModelConfig.from_config(config, 1000 - 1))  # small vocab: MoE dominates
        tx = optimizer.make(config.train)
        abstract = jax.eval_shape(state_lib.init_fn(model, tx, 0, batch, 32))
        abstract = state_lib.strip_boxes(abstract)
        step = jax.jit(lambda s, b: step_lib.train_step(
            s, b, model=model, tx=tx, schedule=optimizer.schedule(config.train),
            objective_cfg=objectives.frozen_objective(config.objective), mask_id=999))
        compiled = step.lower(abstract, jax.ShapeDtypeStruct((batch, 32), jnp.int32)).compile()
        temps.append(compiled.memory_analysis().temp_size_in_bytes)
    # Doubling the tokens at most about doubles the temporaries (quadratic would be 4x).
    assert temps[1] / temps[0] < 2.3 and temps[2] / temps[1] < 2.3, temps


@pytest.mark.slow
def test_upcycling_run_starts_from_the_dense_checkpoint(config, tmp_path):
    """The trainer's upcycling path: config.moe.upcycle_from names a finished dense run."""
    import orbax.checkpoint as ocp
    from openmoe2_jax.train import loop
    quiet = lambda *a: None
    dense_cfg = config.copy_and_resolve_references()
    dense_cfg.model.update(ffn="dense", mlp_dim=16)
    dense_cfg.train.steps = 3
    loop.train(dense_cfg, str(tmp_path / "dense"), log=quiet)
    config.moe.update(num_experts=4, expert_mlp_dim=16, top_k=2, upcycle_from=str(tmp_path / "dense"))
    config.train.update(steps=1, warmup_steps=1)  # the first update has learning rate 0
    loop.train(config, str(tmp_path / "moe"), log=quiet)
    read = lambda d, s: ocp.StandardCheckpointer().restore(str(tmp_path / d / "checkpoints" / str(s) / "state"))["params"]
    dense, moe = read("dense", 3), read("moe", 1)
    np.testing.assert_array_equal(moe["embedding"], dense["embedding"])
    np.testing.assert_array_equal(moe["layer_1"]["attn"]["wq"], dense["layer_1"]["attn"]["wq"])
    for e in range(4):
        np.testing.assert_array_equal(moe["layer_1"]["moe"]["w_up"][e], dense["layer_1"]["ffn"]["w_up"])
    assert np.all(moe["layer_0"]["moe"]["shared"]["w_down"] == 0)
    # A workdir that is not a dense run is refused with its name.
    config.moe.upcycle_from = str(tmp_path / "moe")
    with pytest.raises(upcycle.CheckpointError, match="is an MoE run"):
        loop.train(config, str(tmp_path / "moe2"), log=quiet)
