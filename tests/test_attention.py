"""Attention implementations behind config.model.attention_impl: the splash TPU kernel (through the
Pallas interpreter here) equals the XLA reference in values and gradients, lowers for TPU, and runs
per shard under a mesh; `auto` picks by backend."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from openmoe2_jax.kernels import splash_attention
from openmoe2_jax.models import layers


def _inputs(b=2, s=128, h=4, kvh=2, hd=16, lengths=(128, 96)):
    kq, kk, kv, kp = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(kq, (b, s, h, hd))
    k = jax.random.normal(kk, (b, s, kvh, hd))
    v = jax.random.normal(kv, (b, s, kvh, hd))
    probe = jax.random.normal(kp, (b, s, h, hd))          # a random cotangent for the gradients
    valid = jnp.arange(s)[None] < jnp.asarray(lengths)[:, None]
    return q, k, v, valid, probe


def _loss(impl, causal, valid, probe):
    """sum(out * probe) over the real tokens (padding outputs are never read)."""
    def loss(q, k, v):
        out = layers.dot_product_attention(q, k, v, valid, causal, impl)
        return jnp.sum(jnp.where(valid[:, :, None, None], out * probe, 0.0))
    return loss


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("lengths", [(128, 128), (128, 96)], ids=["full", "padded"])
def test_splash_equals_the_xla_reference_in_values_and_gradients(causal, lengths):
    q, k, v, valid, probe = _inputs(lengths=lengths)
    ref = layers.dot_product_attention(q, k, v, valid, causal, "xla")
    out = layers.dot_product_attention(q, k, v, valid, causal, "splash_interpret")
    real = np.asarray(valid)[:, :, None, None]
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, ref, 0), atol=2e-6)
    g_ref = jax.grad(_loss("xla", causal, valid, probe), argnums=(0, 1, 2))(q, k, v)
    g_out = jax.grad(_loss("splash_interpret", causal, valid, probe), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", g_out, g_ref):
        np.testing.assert_allclose(a, b, atol=2e-5, err_msg=f"d{name}")
    if causal:  # a future key changes nothing before it
        changed = layers.dot_product_attention(q, k.at[:, 100].add(1.0), v, valid, causal, "splash_interpret")
        np.testing.assert_array_equal(np.asarray(changed)[:, :100], np.asarray(out)[:, :100])


def test_splash_lowers_for_tpu_forward_and_backward():
    """The kernel itself (not the interpreter): jax.export for TPU, on a machine without one."""
    q, k, v, valid, probe = _inputs(s=256, lengths=(256, 160))
    grad = jax.jit(jax.value_and_grad(_loss("splash", False, valid, probe), argnums=(0, 1, 2)))
    specs = [jax.ShapeDtypeStruct(x.shape, jnp.bfloat16) for x in (q, k, v)]
    exported = jax.export.export(grad, platforms=["tpu"])(*specs)
    assert exported.mlir_module().count("tpu_custom_call") >= 3      # forward, dq, dkv kernels


@pytest.mark.skipif(jax.device_count() < 8, reason="needs the tests' 8 (fake CPU) devices")
def test_splash_runs_per_shard_under_a_mesh_and_equals_one_device():
    """Under a (data 2, fsdp 2, expert 2) mesh the kernel runs in shard_map over the batch axes
    that the logical-axis rules give (8 rows: one per device) and equals the unsharded reference."""
    import flax.linen as nn  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.parallel import sharding  # pylint: disable=import-outside-toplevel
    q, k, v, valid, probe = _inputs(b=8, lengths=(128, 96, 64, 128, 32, 128, 100, 128))
    ref_loss, ref_grads = jax.value_and_grad(_loss("xla", False, valid, probe), argnums=(0, 1, 2))(q, k, v)
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, expert=2, tensor=1))
    with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        fn = jax.jit(jax.value_and_grad(_loss("splash_interpret", False, valid, probe), argnums=(0, 1, 2)))
        text = fn.lower(q, k, v).as_text()
        loss, grads = fn(q, k, v)
    assert "sdy.manual_computation" in text            # the kernel ran per shard (shard_map)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        np.testing.assert_allclose(a, b, atol=2e-5)


@pytest.mark.parametrize("backend, dtype, expected", [
    ("tpu", jnp.float32, "splash"), ("gpu", jnp.bfloat16, "cudnn"), ("gpu", jnp.float32, "xla"),
    ("cpu", jnp.bfloat16, "xla")])
def test_auto_picks_the_implementation_by_backend(monkeypatch, backend, dtype, expected):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert layers.attention_impl("auto", dtype) == expected
    assert layers.attention_impl("xla", dtype) == "xla"


def test_block_size_divides_the_sequence():
    assert [splash_attention.block_size(s) for s in (4096, 1536, 384, 128)] == [512, 512, 128, 128]


@pytest.mark.parametrize("seq", [64, 192])
def test_splash_pads_a_sequence_of_partial_blocks(seq):
    """A sampling canvas or an evaluation row need not be whole 128-token blocks: padded, then cut."""
    q, k, v, valid, probe = _inputs(s=seq, lengths=(seq, seq - 20))
    for causal in (False, True):
        ref = layers.dot_product_attention(q, k, v, valid, causal, "xla")
        out = layers.dot_product_attention(q, k, v, valid, causal, "splash_interpret")
        assert out.shape == ref.shape
        real = np.asarray(valid)[:, :, None, None]
        np.testing.assert_allclose(np.where(real, out, 0), np.where(real, ref, 0), atol=2e-6)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a CUDA GPU (tools/gpu_check.sh)")
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_cudnn_equals_the_xla_reference_on_a_gpu(causal):
    q, k, v, valid, probe = _inputs(hd=64, lengths=(128, 96))
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    ref = layers.dot_product_attention(q, k, v, valid, causal, "xla").astype(jnp.float32)
    out = layers.dot_product_attention(q, k, v, valid, causal, "cudnn").astype(jnp.float32)
    real = np.asarray(valid)[:, :, None, None]
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, ref, 0), atol=3e-2)
    g_ref = jax.grad(_loss("xla", causal, valid, probe), argnums=(0, 1, 2))(q, k, v)
    g_out = jax.grad(_loss("cudnn", causal, valid, probe), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_out, g_ref):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=1e-1)
