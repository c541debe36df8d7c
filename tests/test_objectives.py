"""The masked-diffusion and AR losses against independent NumPy computations."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from openmoe2_jax.objectives import autoregressive, common, diffusion


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_weighted_masked_loss_matches_bruteforce_numpy():
    rng = np.random.default_rng(0)
    b, s, v = 3, 7, 11
    logits = rng.normal(size=(b, s, v)).astype(np.float32)
    targets = rng.integers(0, v, size=(b, s))
    masked = rng.random((b, s)) < 0.5
    masked[:, 0] = True
    valid = np.ones((b, s), bool)
    valid[2, 5:] = False
    masked &= valid
    weight = np.array([0.3, 0.9, 0.05], np.float32)

    expected = 0.0
    for i in range(b):
        row = 0.0
        for j in range(s):
            if masked[i, j]:
                row += -np_log_softmax(logits[i, j])[targets[i, j]]
        expected += row / weight[i]
    expected /= valid.sum()

    got = diffusion.weighted_masked_loss(jnp.asarray(logits), jnp.asarray(targets),
                                         jnp.asarray(masked), jnp.asarray(weight), jnp.asarray(valid))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_mask_rate_tracks_t_and_no_row_is_unmasked():
    b, s = 64, 256
    tokens = jnp.zeros((b, s), jnp.int32)
    valid = jnp.ones((b, s), bool)
    t = jnp.linspace(0.001, 0.999, b)
    noisy, masked = diffusion.corrupt(jax.random.key(1), tokens, t, valid, mask_id=99)
    rate = np.asarray(masked.mean(axis=1))
    # Binomial(256, t) / 256 has std <= 0.032; 5 std is a failure, not noise.
    np.testing.assert_allclose(rate, np.asarray(t), atol=0.16)
    assert abs(float(np.corrcoef(rate, np.asarray(t))[0, 1])) > 0.99
    assert np.all(np.asarray(masked).sum(axis=1) >= 1)
    assert np.all((np.asarray(noisy) == 99) == np.asarray(masked))


def test_rows_with_tiny_t_still_get_exactly_one_mask_within_valid_length():
    b, s = 200, 16
    valid = jnp.broadcast_to(jnp.arange(s) < 5, (b, s))
    t = jnp.full((b,), 1e-6)
    _, masked = diffusion.corrupt(jax.random.key(2), jnp.ones((b, s), jnp.int32), t, valid, mask_id=0)
    masked = np.asarray(masked)
    assert np.all(masked.sum(axis=1) == 1)
    assert not masked[:, 5:].any()
    # The forced position is uniform over the 5 real positions: each is hit.
    assert set(np.argmax(masked, axis=1)) == set(range(5))


@pytest.mark.parametrize("low_discrepancy", [False, True])
def test_sample_t_range_and_floor(low_discrepancy):
    t = np.asarray(diffusion.sample_t(jax.random.key(0), 1000, 1e-3, low_discrepancy))
    assert t.min() >= 1e-3 and t.max() < 1.0
    if low_discrepancy:
        # Stratified: exactly one sample per 1/B stratum of the unfloored u.
        u = (t - 1e-3) / (1 - 1e-3)
        assert sorted(np.floor(u * 1000).astype(int)) == list(range(1000))


def test_random_length_valid_is_prefix_of_bucket_length():
    lengths = set()
    for i in range(200):
        v = np.asarray(common.random_length_valid(jax.random.key(i), (2, 32), 0.5, (8, 16)))
        n = int(v[0].sum())
        assert np.all(v[:, :n]) and not v[:, n:].any() and np.all(v[0] == v[1])
        lengths.add(n)
    assert lengths == {8, 16, 32}
    assert np.all(np.asarray(common.random_length_valid(jax.random.key(0), (2, 32), 0.0, (8,))))


def _objective(**kw):
    d = dict(kind="diffusion", weight="t", t_eps=1e-3, low_discrepancy=False, masked_head=0.0,
             random_length_prob=0.0, random_length_buckets=(4,))
    d.update(kw)
    return ml_collections.FrozenConfigDict(d)


@pytest.mark.parametrize("weight", ["t", "ratio"])
def test_diffusion_loss_end_to_end_matches_numpy(weight):
    """loss() = sum masked CE / w / (B L) recomputed from the masks it actually used."""
    b, s, v = 4, 9, 13
    rng = np.random.default_rng(3)
    table = jnp.asarray(rng.normal(size=(v + 1, v)).astype(np.float32))
    tokens = jnp.asarray(rng.integers(0, v, size=(b, s)))
    seen = {}

    def apply_fn(params, noisy, valid):
        seen["noisy"] = noisy
        return params[noisy], {}

    cfg = _objective(weight=weight)
    value, metrics = diffusion.loss(apply_fn, table, tokens, jax.random.key(5), cfg, mask_id=v)
    noisy = np.asarray(seen["noisy"])
    masked = noisy == v
    logp = np_log_softmax(np.asarray(table)[noisy])
    r_len, r_t, _ = jax.random.split(jax.random.key(5), 3)
    t = np.asarray(diffusion.sample_t(r_t, b, 1e-3, False))
    w = t if weight == "t" else masked.mean(axis=1)
    ce = -np.take_along_axis(logp, np.asarray(tokens)[..., None], -1)[..., 0]
    expected = np.sum(np.where(masked, ce, 0).sum(1) / w) / (b * s)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["mean_t"]), t.mean(), rtol=1e-6)


def test_ar_loss_is_mean_shifted_ce():
    rng = np.random.default_rng(4)
    b, s, v = 2, 6, 5
    logits = rng.normal(size=(b, s, v)).astype(np.float32)
    tokens = rng.integers(0, v, size=(b, s))
    valid = np.ones((b, s), bool)
    got, _ = autoregressive.shifted_loss(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(valid))
    logp = np_log_softmax(logits)
    expected = np.mean([-logp[i, j, tokens[i, j + 1]] for i in range(b) for j in range(s - 1)])
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_schedule_warmup_then_cosine_to_min():
    from openmoe2_jax.runtime import optimizer
    t = ml_collections.ConfigDict(dict(learning_rate=1.0, warmup_steps=10, steps=110, min_lr_ratio=0.1))
    lr = optimizer.schedule(t)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5) and float(lr(10)) == pytest.approx(1.0)
    assert float(lr(60)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)
    assert float(lr(110)) == pytest.approx(0.1)
    t.update(warmup_steps=5, steps=5)
    assert float(optimizer.schedule(t)(5)) == pytest.approx(1.0)


def test_weight_decay_skips_norm_scales():
    from openmoe2_jax.runtime import optimizer
    mask = optimizer.decay_mask({"w": jnp.ones((2, 2)), "norm": {"scale": jnp.ones(2)}})
    assert mask == {"w": True, "norm": {"scale": False}}


@pytest.mark.parametrize("kind", ["diffusion", "ar"])
def test_the_chunked_head_equals_full_logits_in_loss_metrics_and_gradients(config, kind):
    """model.head_chunk: the training loss from logits made 8 positions at a time equals the loss from
    the whole [b, s, V] logits (values, metrics, gradients of every parameter)."""
    from openmoe2_jax import objectives  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.data.tokenizer import get_tokenizer  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.models.transformer import ModelConfig, Transformer, apply_fn  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.runtime import state as state_lib  # pylint: disable=import-outside-toplevel
    config.objective.update(kind=kind, random_length_prob=1.0)    # padding in every batch, to be sure
    config.moe.routing = "tc" if kind == "ar" else "ec"
    config.model.head_chunk = 8
    tok = get_tokenizer()
    model = Transformer(ModelConfig.from_config(config, tok.num_ids))
    tokens = jax.random.randint(jax.random.key(0), (8, 32), 0, 1000)
    params = state_lib.strip_boxes(model.init(jax.random.key(1), tokens)["params"])
    cfg = objectives.frozen_objective(config.objective)
    results = {}
    for chunked in (False, True):
        loss = lambda p: objectives.loss_fn(kind)(apply_fn(model, hidden=chunked), p, tokens,
                                                  jax.random.key(2), cfg, tok.mask_id)
        results[chunked] = jax.value_and_grad(loss, has_aux=True)(params)
    (full_loss, full_metrics), full_grads = results[False]
    (loss, metrics), grads = results[True]
    np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
    for name, value in full_metrics.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads, full_grads)


@pytest.mark.parametrize("chunk", [0, 8])
@pytest.mark.parametrize("fraction", [0.75, 0.1])
def test_the_masked_head_equals_full_logits_in_loss_metrics_and_gradients(config, fraction, chunk):
    """objective.masked_head: the diffusion loss from logits made only at the masked positions equals
    the loss from the whole [b, s, V] logits (values, metrics, gradients of every parameter), both when
    the masked positions fit the slots (0.75 of the batch) and when they overflow them (0.1: the
    batch takes the every-position branch), with the head in one piece and in chunks."""
    from openmoe2_jax import objectives  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.data.tokenizer import get_tokenizer  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.models.transformer import ModelConfig, Transformer, apply_fn  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.objectives import common, diffusion  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.runtime import state as state_lib  # pylint: disable=import-outside-toplevel
    config.objective.update(kind="diffusion", random_length_prob=1.0)   # padding too
    config.model.head_chunk = chunk
    tok = get_tokenizer()
    model = Transformer(ModelConfig.from_config(config, tok.num_ids))
    tokens = jax.random.randint(jax.random.key(0), (8, 32), 0, 1000)
    params = state_lib.strip_boxes(model.init(jax.random.key(1), tokens)["params"])
    rng = jax.random.key(2)
    results = {}
    for masked_head in (0.0, fraction):
        config.objective.masked_head = masked_head
        cfg = objectives.frozen_objective(config.objective)
        loss = lambda p, cfg=cfg, on=masked_head > 0: objectives.loss_fn("diffusion")(
            apply_fn(model, hidden=on), p, tokens, rng, cfg, tok.mask_id)
        results[masked_head] = jax.value_and_grad(loss, has_aux=True)(params)
    # which branch ran: the batch's masked count against the slots
    r_len, r_t, r_mask = jax.random.split(rng, 3)
    valid = common.random_length_valid(r_len, tokens.shape, 1.0, cfg.random_length_buckets)
    t = diffusion.sample_t(r_t, 8, cfg.t_eps, cfg.low_discrepancy)
    count = int(diffusion.corrupt(r_mask, tokens, t, valid, tok.mask_id)[1].sum())
    slots = common.masked_head_slots(8, 32, fraction, chunk)
    assert (count <= slots) == (fraction == 0.75), (count, slots)
    (full_loss, full_metrics), full_grads = results[0.0]
    (loss, metrics), grads = results[fraction]
    np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
    for name, value in full_metrics.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads, full_grads)


def test_the_masked_head_makes_logits_only_for_its_slots():
    """The branch that runs when the masked positions fit makes the head's logits for K = 0.5 x b x s
    rows (its matmul with the head has K rows), the other branch for all b x s."""
    from openmoe2_jax.objectives import common  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.models.transformer import Hidden  # pylint: disable=import-outside-toplevel
    b, s, d, v = 4, 16, 8, 50

    def fn(x, head, targets, scored):
        return common.masked_ce_and_hits(Hidden(x=x, head=head, chunk=0), targets, scored, 0.5)[0]

    jaxpr = jax.make_jaxpr(fn)(jnp.ones((b, s, d)), jnp.ones((d, v)), jnp.zeros((b, s), jnp.int32),
                               jnp.zeros((b, s), bool))
    (cond,) = [e for e in jaxpr.eqns if e.primitive.name == "cond"]

    def head_rows(closed):  # rows of every matmul with the [d, V] head in a branch
        return [e.outvars[0].aval.shape[0] for e in closed.jaxpr.eqns
                if e.primitive.name == "dot_general" and e.outvars[0].aval.shape[-1] == v]

    everywhere, gathered = cond.params["branches"]  # lax.cond: (false, true)
    assert head_rows(gathered) == [common.masked_head_slots(b, s, 0.5, 0)] == [b * s // 2]
    assert head_rows(everywhere) == [b * s]


def test_the_chunked_head_holds_a_chunk_of_logits_not_the_whole(config):
    """With cl100k's 100,352-id head the float32 logits of the step are the largest activation: the
    compiled train step's temporaries shrink when they are made 4 positions (of 32) at a time."""
    from openmoe2_jax.data.tokenizer import get_tokenizer  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.runtime import build  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.train import loop  # pylint: disable=import-outside-toplevel
    tok = get_tokenizer()
    temps = {}
    for chunk in (0, 4):
        config.model.head_chunk = chunk
        config.mesh.update(data=1)
        built = build.build(config, tok.num_ids, jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1, 1),
                                                                   ("data", "fsdp", "expert", "tensor")))
        step = loop.jit_train_step(config, built.model, built.tx, built.mesh, built.state_shardings, tok.mask_id)
        tokens = jax.ShapeDtypeStruct((8, 32), jnp.int32, sharding=built.batch_sharding)
        temps[chunk] = step.lower(built.abstract, tokens).compile().memory_analysis().temp_size_in_bytes
    logits = 8 * 32 * built.model_cfg.vocab_size * 4
    assert temps[4] < temps[0] - logits, temps
