"""The one set-up of a config on a mesh: the model, the optimizer and where every array lives.

The trainer (train/loop.py) and the speed benchmark (bench.py) build their runs here (`build`), so
the model they time is the model that trains, sharded the same way; evaluation, sampling and export
restore parameters alone into the layout `abstract_params` gives here (runtime/restore.py), from
the same model and the same logical-axis rules, without optimizer state.
Nothing is allocated: the state is abstract until `state_lib.create` (fresh) or a restore (resumed).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from openmoe2_jax.models.transformer import ModelConfig, Transformer, with_groups
from openmoe2_jax.parallel import sharding
from openmoe2_jax.runtime import optimizer, state as state_lib


@dataclasses.dataclass(frozen=True)
class Built:
    mesh: jax.sharding.Mesh
    model_cfg: ModelConfig                  # resolved against the mesh's batch shards (routing groups)
    model: Transformer
    tx: optax.GradientTransformation
    init: Callable[[], state_lib.TrainState]  # () -> TrainState with logically boxed params
    abstract: Any                           # TrainState of ShapeDtypeStructs carrying their shardings
    state_shardings: Any                    # TrainState of NamedShardings
    batch_sharding: jax.sharding.NamedSharding  # [batch, seq] tokens: batch over data x fsdp x expert


def build(config, num_ids: int, mesh: jax.sharding.Mesh | None = None) -> Built:
    """`config` (validated) with a tokenizer of `num_ids` ids on `mesh` (default: config.mesh over
    every device). The state's shardings follow the logical-axis rules of parallel/sharding.py."""
    mesh = mesh or sharding.make_mesh(config.mesh)
    model_cfg = ModelConfig.from_config(config, num_ids, sharding.batch_shards(mesh))
    model, tx = Transformer(model_cfg), optimizer.make(config.train)
    init = state_lib.init_fn(model, tx, config.seed, config.train.batch_size, config.data.seq_len)
    with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        abstract, state_shardings = state_lib.abstract_state(init, mesh)
    return Built(mesh=mesh, model_cfg=model_cfg, model=model, tx=tx, init=init, abstract=abstract,
                 state_shardings=state_shardings, batch_sharding=sharding.batch_sharding(mesh))


def abstract_params(model_cfg: ModelConfig, mesh: jax.sharding.Mesh | None = None) -> dict:
    """The parameter tree `model_cfg` builds, as ShapeDtypeStructs (nothing allocated), with their
    shardings on `mesh` by the logical-axis rules if one is given. The shapes do not depend on the
    routing groups: it is traced with one group of one token."""
    model = Transformer(with_groups(model_cfg, 1))
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
    plain = state_lib.strip_boxes(boxed)
    if mesh is None:
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), plain)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        plain, sharding.logical_sharding(boxed, mesh))
