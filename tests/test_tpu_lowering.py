"""The whole sharded program lowers for TPU, on a machine without one.

The paper's structure at a reduced size (batch-level EC with the Pallas top-k, 2 shared experts, a
first dense layer, splash attention, bfloat16 compute, fsdp + expert sharding on the 8-device
(data 2, fsdp 2, expert 2) mesh): the jitted train step, the validation (ELBO) step and the dropless
token-choice step (`ragged_dot`) are exported with `jax.export(..., platforms=["tpu"])`. Export runs
JAX's TPU lowering rules and Mosaic's kernel compilation (splash, the EC top-k), so an op that cannot
lower for TPU fails here. (XLA:TPU's own compilation of the exported module needs a TPU.)
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from openmoe2_jax import objectives, validation
from openmoe2_jax.configs import scales
from openmoe2_jax.objectives import likelihood
from openmoe2_jax.parallel import sharding
from openmoe2_jax.runtime import build
from openmoe2_jax.train import loop

NUM_IDS = 1000   # a small vocabulary: the head's shape, not its size, is what lowering checks


def paper_structure(**moe):
    """The paper config's structure, scaled down: 2 layers (the first dense), d 256, 2 heads of 128."""
    c = scales.get("paper")
    c.model.update(num_layers=2, d_model=256, num_heads=2, num_kv_heads=2, mlp_dim=512,
                   dtype="bfloat16", attention_impl="splash")
    c.moe.update(num_experts=8, num_shared_experts=2, expert_mlp_dim=64, top_k=2, topk_impl="pallas",
                 first_dense_layers=1, **moe)
    c.data.seq_len = 256
    c.objective.random_length_buckets = (128,)
    c.train.update(batch_size=8, steps=10, warmup_steps=1)
    c.mesh.update(data=2, fsdp=2, expert=2, tensor=1)
    validation.validate(c, num_devices=8)
    return c


def _export_train_step(config):
    built = build.build(config, NUM_IDS)
    step = loop.jit_train_step(config, built.model, built.tx, built.mesh, built.state_shardings, NUM_IDS)
    tokens = jax.ShapeDtypeStruct((config.train.batch_size, config.data.seq_len), jnp.int32,
                                  sharding=built.batch_sharding)
    with jax.sharding.set_mesh(built.mesh), nn.logical_axis_rules(sharding.RULES):
        return jax.export.export(step, platforms=["tpu"])(built.abstract, tokens), built


def _kernels(exported) -> set[str]:
    """The Pallas kernels compiled by Mosaic into the module (each once, however often it is called)."""
    return set(re.findall(r'kernel_name = "([^"]+)"', exported.mlir_module()))


EC_TOPK = {"_threshold_kernel", "_compact_kernel"}
SPLASH_FWD = {"splash_mha_fwd_segmented_residuals"}
SPLASH_BWD = {"splash_mha_dq_segmented_no_residuals", "splash_mha_dkv_segmented_no_residuals"}


def test_the_sharded_paper_structure_train_step_lowers_for_tpu():
    exported, built = _export_train_step(paper_structure())
    assert exported.platforms == ("tpu",) and exported.nr_devices == 8
    assert _kernels(exported) == EC_TOPK | SPLASH_FWD | SPLASH_BWD
    text = exported.mlir_module()
    assert "bf16" in text and "sdy.manual_computation" in text   # the kernels run per shard (shard_map)

    # the validation ELBO step with the same parameters and shardings
    config = paper_structure()
    eval_fn = jax.jit(likelihood.make_validation_fn(
        built.model, objectives.frozen_objective(config.objective, evaluation=True), NUM_IDS, 0, 2),
        in_shardings=(built.state_shardings.params, built.batch_sharding, None),
        out_shardings=sharding.replicated(built.mesh))
    tokens = jax.ShapeDtypeStruct((8, 256), jnp.int32, sharding=built.batch_sharding)
    with jax.sharding.set_mesh(built.mesh), nn.logical_axis_rules(sharding.RULES):
        exported_eval = jax.export.export(eval_fn, platforms=["tpu"])(
            built.abstract.params, tokens, jax.ShapeDtypeStruct((), jnp.int32))
    assert _kernels(exported_eval) == EC_TOPK | {"splash_mha_fwd_segmented_no_residuals"}  # forward only


def test_the_dropless_token_choice_step_lowers_for_tpu_with_ragged_dot():
    exported, _ = _export_train_step(paper_structure(routing="tc", tc_capacity_factor=0.0,
                                                     tc_dropless_impl="ragged"))
    assert "ragged_dot" in exported.mlir_module()
    assert _kernels(exported) == SPLASH_FWD | SPLASH_BWD       # no EC top-k in token choice
