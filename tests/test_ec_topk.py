"""The expert-choice top-k kernel: exact agreement with lax.top_k, gradients, TPU lowering, in the MoE."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from openmoe2_jax.kernels import ec_topk


def _check(x, k):
    v, i = ec_topk.top_k(x, k, "interpret")
    rv, ri = jax.lax.top_k(x, k)
    np.testing.assert_array_equal(np.asarray(i), np.asarray(ri))
    # Bitwise equal values (NaN == NaN, -0 distinguished from +0).
    np.testing.assert_array_equal(np.asarray(v).view(np.uint16 if x.dtype == jnp.bfloat16 else np.uint32),
                                  np.asarray(rv).view(np.uint16 if x.dtype == jnp.bfloat16 else np.uint32))
    assert v.dtype == x.dtype and i.dtype == jnp.int32


CASES = {
    "random": (lambda key: jax.random.normal(key, (16, 700)), 90),
    "many_ties": (lambda key: jnp.round(jax.random.normal(key, (9, 515)) * 2) / 2, 200),
    "constant_rows": (lambda key: jnp.ones((8, 384)), 100),
    "minus_inf": (lambda key: jnp.where(jax.random.bernoulli(key, 0.7, (8, 300)), -jnp.inf,
                                        jax.random.normal(key, (8, 300))), 150),
    "k_1": (lambda key: jax.random.normal(key, (5, 129)), 1),
    "k_n": (lambda key: jnp.round(jax.random.normal(key, (3, 257))), 257),
    "one_expert": (lambda key: jax.random.normal(key, (1, 1000)), 333),
    "not_block_multiples": (lambda key: jax.random.normal(key, (13, 131)), 17),
    "leading_dims": (lambda key: jnp.round(jax.random.normal(key, (2, 3, 200)) * 3), 40),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_lax_top_k(case, dtype):
    make, k = CASES[case]
    _check(make(jax.random.key(sorted(CASES).index(case))).astype(dtype), k)


def test_nan_and_signed_zero_follow_xla_total_order():
    """Defined behaviour: the total order of bit patterns, -NaN < -inf < -0 < +0 < +inf < +NaN."""
    x = jnp.asarray([[1.0, jnp.nan, 3.0, jnp.inf, -jnp.inf, -0.0, 0.0, jnp.nan, -jnp.nan] + [0.5] * 130])
    _check(x, 9)
    _check(x, 139)
    v, i = ec_topk.top_k(x, 3, "interpret")
    assert np.isnan(np.asarray(v)[0, :2]).all() and np.asarray(i)[0, :2].tolist() == [1, 7]


def test_gradients_equal_lax_top_k():
    x = jax.random.normal(jax.random.key(0), (6, 300))
    w = jax.random.normal(jax.random.key(1), (6, 40))
    f = lambda impl: jax.grad(lambda s: jnp.sum(ec_topk.top_k(s, 40, impl)[0] * w))(x)
    np.testing.assert_array_equal(np.asarray(f("interpret")), np.asarray(f("xla")))
    assert np.count_nonzero(np.asarray(f("interpret"))) == 6 * 40


@pytest.mark.parametrize("shape,k", [((64, 32768), 3072), ((16, 2048), 256), ((13, 131), 17), ((1, 1000), 333)])
def test_kernel_lowers_for_tpu(shape, k):
    """Interpret mode hides ops Mosaic cannot lower (sort, top_k, cumsum): export for TPU, no TPU needed.
    (64, 32768) with C = 3072 is the paper shape: 8 x 4096 tokens per replica, 64 experts, k = 6."""
    for dtype in (jnp.float32, jnp.bfloat16):
        f = jax.jit(functools.partial(ec_topk.pallas_top_k, k=k))
        exported = jax.export.export(f, platforms=["tpu"])(jax.ShapeDtypeStruct(shape, dtype))
        assert exported.mlir_module().count("tpu_custom_call") == 2


def test_auto_is_xla_off_tpu_and_unknown_impl_is_refused():
    x = jax.random.normal(jax.random.key(0), (4, 64))
    np.testing.assert_array_equal(np.asarray(ec_topk.top_k(x, 5, "auto")[1]),
                                  np.asarray(jax.lax.top_k(x, 5)[1]))
    with pytest.raises(ValueError, match="config.moe.topk_impl = 'cuda'"):
        ec_topk.top_k(x, 5, "cuda")


def test_kernel_inside_the_sharded_moe_step(config):
    """Per-shard groups under the mesh: (data=2, expert=4) with the kernel in interpret mode gives the
    same loss and parameters as the XLA top-k."""
    from tests.test_sharding import one_step
    config.objective.random_length_prob = 0.0
    config.moe.update(group_tokens=32)
    config.mesh.update(data=2, fsdp=1, expert=4, tensor=1)
    batch = np.asarray(jax.random.randint(jax.random.key(0), (8, 32), 0, 100000), np.int32)
    config.moe.topk_impl = "xla"
    loss_x, params_x, _ = one_step(config, jax.devices(), batch)
    config.moe.topk_impl = "interpret"
    loss_k, params_k, _ = one_step(config, jax.devices(), batch)
    assert loss_k == loss_x
    jax.tree.map(np.testing.assert_array_equal, params_k, params_x)
