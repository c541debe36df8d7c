"""The mesh and the rules: a sharded train step equals the single-device one; params placed by rules."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from openmoe2_jax.data.tokenizer import get_tokenizer
from openmoe2_jax.models.transformer import ModelConfig, Transformer
from openmoe2_jax.parallel import sharding
from openmoe2_jax.runtime import optimizer, state as state_lib
from openmoe2_jax.train import loop


def one_step(config, devices, batch):
    """(loss, updated params as numpy, state) after one train step on a mesh over `devices`."""
    tok = get_tokenizer()
    mesh = sharding.make_mesh(config.mesh, devices)
    model = Transformer(ModelConfig.from_config(config, tok.num_ids, sharding.batch_shards(mesh)))
    tx = optimizer.make(config.train)
    init = state_lib.init_fn(model, tx, config.seed, config.train.batch_size, config.data.seq_len)
    with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        _, shardings = state_lib.abstract_state(init, mesh)
        state = state_lib.create(init, shardings)
        train_step, _ = loop.compile_steps(config, model, tx, mesh, shardings, tok.mask_id)
        global_batch = jax.device_put(batch, sharding.batch_sharding(mesh))
        state, metrics = train_step(state, global_batch)
    return float(metrics["loss"]), jax.tree.map(np.asarray, state.params), state


@pytest.fixture
def batch(config):
    return np.asarray(jax.random.randint(jax.random.key(0), (config.train.batch_size, config.data.seq_len),
                                         0, 100000), np.int32)


@pytest.mark.parametrize("ffn,routing", [("dense", "ec"), ("moe", "ec"), ("moe", "tc")])
def test_data4_expert2_step_equals_single_device(config, batch, ffn, routing):
    """Expert-parallel equivalence: loss and updated parameters (so gradients) match one device.
    Batch-level EC groups are fixed (8 of 32 tokens) so both runs route identically."""
    config.objective.random_length_prob = 0.0
    config.model.ffn = ffn
    config.moe.update(routing=routing, group_tokens=32, tc_capacity_factor=1.5 if routing == "tc" else 0.0)
    single = config.copy_and_resolve_references()
    single.mesh.update(data=1, fsdp=1, expert=1, tensor=1)
    loss1, params1, _ = one_step(single, jax.devices()[:1], batch)
    # The foundation's (data=4, expert=2) for the dense model; (data=2, expert=4) for expert parallelism.
    experts_axis = 2 if ffn == "dense" else 4
    config.mesh.update(data=8 // experts_axis, fsdp=1, expert=experts_axis, tensor=1)
    loss8, params8, state8 = one_step(config, jax.devices(), batch)
    # Reductions over 8 shards sum in another order: equal to float32 rounding, not bitwise.
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params8, params1)
    assert state8.params["embedding"].sharding.mesh.shape["expert"] == experts_axis
    if ffn == "moe":
        w = state8.params["layer_0"]["moe"]["w_gate"]
        assert tuple(w.sharding.spec)[0] == "expert"
        assert w.addressable_shards[0].data.shape[0] == config.moe.num_experts // experts_axis


@pytest.mark.parametrize("group_tokens", [256, 64])
def test_routing_groups_spanning_batch_shards_equal_single_device(config, batch, group_tokens):
    """Batch-level EC over groups larger than a shard's 32 tokens -- the whole step (256: exact
    batch-level EC over the global batch) or 64 (each group on 2 of the 8 shards) -- on (data 2, fsdp 2,
    expert 2): the same loss and updated parameters as one device routing the same groups."""
    config.objective.random_length_prob = 0.0
    config.moe.update(routing="ec", group_tokens=group_tokens)
    single = config.copy_and_resolve_references()
    single.mesh.update(data=1, fsdp=1, expert=1, tensor=1)
    loss1, params1, _ = one_step(single, jax.devices()[:1], batch)
    config.mesh.update(data=2, fsdp=2, expert=2, tensor=1)
    groups = ModelConfig.from_config(config, get_tokenizer().num_ids, 8).moe
    assert groups.num_groups == 256 // group_tokens and groups.group_spans_shards
    loss8, params8, state8 = one_step(config, jax.devices(), batch)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params8, params1)
    assert state8.params["layer_0"]["moe"]["w_gate"].addressable_shards[0].data.shape[0] == 2  # 4 experts / 2


def test_parameters_are_sharded_as_the_rules_say(config, batch):
    config.mesh.update(data=2, fsdp=2, expert=1, tensor=2)
    _, _, state = one_step(config, jax.devices(), batch)
    p = state.params
    spec = lambda x: tuple(x.sharding.spec)
    assert spec(p["embedding"]) == ("tensor", "fsdp")          # (vocab, embed)
    assert spec(p["head"]) == ("fsdp", "tensor")               # (embed, vocab)
    assert spec(p["layer_0"]["attn"]["wq"]) == ("fsdp", "tensor", None)
    assert spec(p["layer_0"]["attn"]["wo"]) == ("tensor", None, "fsdp")
    moe = p["layer_0"]["moe"]
    assert spec(moe["w_gate"]) == ("expert", "fsdp", "tensor")       # (exp, embed, mlp)
    assert spec(moe["w_down"]) == ("expert", "tensor", "fsdp")       # (exp, mlp, embed)
    assert spec(moe["router"]) in (("fsdp",), ("fsdp", None))        # (embed, -)
    assert spec(moe["shared"]["w_gate"]) == ("fsdp", "tensor")
    assert spec(p["layer_0"]["attn_norm"]["scale"]) in ((), (None,))
    # A shard really holds a quarter of the embedding (vocab / 2 x embed / 2).
    shard = p["embedding"].addressable_shards[0].data
    assert shard.shape == (100352 // 2, config.model.d_model // 2)
    # The optimizer moments follow their parameters.
    mu = state.opt_state[1][0].mu
    assert spec(mu["embedding"]) == ("tensor", "fsdp")


def test_mesh_fill_and_errors():
    m = sharding.make_mesh(dict(data=-1, fsdp=1, expert=2, tensor=1))
    assert dict(m.shape) == {"data": 4, "fsdp": 1, "expert": 2, "tensor": 1}
    with pytest.raises(ValueError, match="config.mesh"):
        sharding.make_mesh(dict(data=3, fsdp=1, expert=1, tensor=1))
    with pytest.raises(ValueError, match="at most one axis"):
        sharding.make_mesh(dict(data=-1, fsdp=-1, expert=1, tensor=1))
