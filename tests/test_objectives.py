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
    d = dict(kind="diffusion", weight="t", t_eps=1e-3, low_discrepancy=False, random_length_prob=0.0,
             random_length_buckets=(4,))
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
