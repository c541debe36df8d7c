"""The train state, created directly in its sharded layout."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from openmoe2_jax.parallel import sharding


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array           # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array            # uint32[2]: base key; step keys are fold_in(rng, step)


def init_fn(model: nn.Module, tx: optax.GradientTransformation, seed: int, batch: int, seq: int):
    """A function () -> TrainState with logically-boxed params (boxes carry the sharding names)."""
    def init():
        key = jax.random.PRNGKey(seed)
        k_init, k_train = jax.random.split(key)
        params = model.init(k_init, jnp.zeros((batch, seq), jnp.int32))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=k_train)
    return init


def strip_boxes(tree):
    """The values of logically-partitioned boxes (no sharding constraint applied, unlike unbox)."""
    return jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, tree,
                        is_leaf=lambda x: isinstance(x, nn.Partitioned))


def create(init, shardings):
    """The state, created directly in its sharded layout (never materialised on one device)."""
    return jax.jit(lambda: nn.meta.unbox(init()), out_shardings=shardings)()


def abstract_state(init, mesh, rules=sharding.RULES):
    """(abstract unboxed state with shardings attached, shardings): for restoring without allocating."""
    boxed = jax.eval_shape(init)
    shardings = sharding.logical_sharding(boxed, mesh, rules)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            strip_boxes(boxed), shardings)
    return abstract, shardings
