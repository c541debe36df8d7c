"""The mesh and the one table that maps logical axis names to mesh axes.

Mesh axes: data (pure data parallel), fsdp (data parallel with parameters sharded over it), expert
(expert parallel: routed-expert weights sharded; outside the MoE block it carries batch), tensor
(Megatron-style model parallel over heads / mlp / vocab). The batch is sharded over data x fsdp x
expert. A new strategy is a new rules table, never new model code.

Axis types are Auto (XLA's sharding propagation), chosen deliberately: `jax.make_mesh` now defaults to
Explicit, which would make every activation's sharding part of its type.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from openmoe2_jax import validation

MESH_AXES = ("data", "fsdp", "expert", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")

RULES = (
    # activations
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("activation_group", ("data", "fsdp")),   # MoE groups once their experts moved to `expert`
    ("activation_exp", "expert"),
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("exp", "expert"),
    ("norm", None),
    ("layers", None),                         # the stacked axis of model.scan_layers
)


def make_mesh(mesh_config, devices=None) -> Mesh:
    """A Mesh with axes MESH_AXES sized by `mesh_config` (-1 fills), over `devices` (default: all)."""
    devices = jax.devices() if devices is None else devices
    shape = validation.resolve_mesh_shape(mesh_config, len(devices))
    sizes = tuple(shape[a] for a in MESH_AXES)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                             devices=devices)
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES,
                axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_sharding(tree, mesh: Mesh, rules=RULES):
    """NamedShardings for a tree of (possibly nn.LogicallyPartitioned) abstract values."""
    specs = nn.get_partition_spec(tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch is split (data x fsdp x expert): one batch-level EC group each."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """[batch, seq] arrays: batch over data x fsdp x expert."""
    return NamedSharding(mesh, P(BATCH_AXES, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
