"""Load a trained model (config, params) from a training workdir for evaluation or sampling.

The tokenizer is the run's: cl100k, or the bpe:N vocabulary the run saved in WORKDIR/tokenizer (never
trained again). A checkpoint trained with another vocabulary than config.json names is refused
(VocabularyError, naming both) before the model is built.
"""
from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from openmoe2_jax import validation
from openmoe2_jax.configs import base
from openmoe2_jax.data import bpe
from openmoe2_jax.data.tokenizer import Tokenizer, check_vocabulary
from openmoe2_jax.models.transformer import ModelConfig, Transformer
from openmoe2_jax.parallel import sharding
from openmoe2_jax.runtime import optimizer, paths, state as state_lib
from openmoe2_jax.runtime.checkpoint import CheckpointError, Checkpoints


@dataclasses.dataclass
class Trained:
    config: ml_collections.ConfigDict
    tokenizer: Tokenizer
    model: Transformer
    params: dict
    step: int


@dataclasses.dataclass
class TrainedParams:
    """A checkpoint's parameters alone, on the host (load_params)."""
    config: ml_collections.ConfigDict
    tokenizer: Tokenizer
    model_cfg: ModelConfig     # num_groups: the groups of the run's training step (routing record)
    params: dict               # nested dict of NumPy arrays, in config.model.param_dtype
    step: int
    routing: dict | None       # the checkpoint's routing_record: {groups, tokens_per_group} or None


def _to_tuples(value):
    if isinstance(value, dict):
        return {k: _to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(value)
    return value


def _merge(into: ml_collections.ConfigDict, saved: dict, prefix: str = "") -> None:
    for key, value in saved.items():
        if key not in into:
            raise CheckpointError(f"the saved config has config.{prefix}{key}, which this version does "
                                  "not know.")
        if isinstance(value, dict):
            _merge(into[key], value, f"{prefix}{key}.")
        else:
            into[key] = value


def load_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
    """The run's config.json over the current defaults (fields added since the run take defaults)."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"--workdir={os.fspath(workdir)!r} has no config.json: not a training workdir.")
    try:
        saved = _to_tuples(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from e
    config = base.get_config()
    _merge(config, saved)
    validation.validate(config)
    return config


def _open_checkpoint(workdir: epath.PathLike, step: int | None):
    """(config, tokenizer, Checkpoints, step) of `workdir`'s latest (or given) checkpoint, its vocabulary
    checked against config.json's (by name before the tokenizer is loaded, then by sha256)."""
    config = load_config(workdir)
    ckpt_dir = paths.absolute(workdir) / "checkpoints"
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{ckpt_dir} holds no checkpoint.")
    checkpoints = Checkpoints(ckpt_dir, keep=None, async_save=False, read_only=True)
    steps = checkpoints.all_steps()
    if not steps:
        raise CheckpointError(f"{ckpt_dir} holds no checkpoint.")
    step = max(steps) if step is None else step
    if step not in steps:
        raise CheckpointError(f"{ckpt_dir} has no step {step}; it has {sorted(steps)}.")
    recorded, where = checkpoints.recorded_vocabulary(step), f"the checkpoint in {ckpt_dir} (step {step})"
    check_vocabulary(recorded, dict(tokenizer=config.data.tokenizer), where)  # by name, before loading
    tokenizer = bpe.run_tokenizer(config.data.tokenizer, [epath.Path(workdir) / "tokenizer"], None)
    check_vocabulary(recorded, tokenizer.record, where)
    return config, tokenizer, checkpoints, step


def load(workdir: epath.PathLike, step: int | None = None, devices=None) -> Trained:
    """The model and params of `workdir`'s latest (or given) checkpoint.

    The params are restored onto a data-parallel mesh over `devices` (default: the first device),
    whatever mesh wrote them. Batch-level EC then routes over each evaluation batch.
    """
    config, tokenizer, checkpoints, step = _open_checkpoint(workdir, step)
    ckpt_dir = checkpoints.directory
    devices = devices or jax.devices()[:1]
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, expert=1, tensor=1), devices)
    model = Transformer(ModelConfig.from_config(config, tokenizer.num_ids, sharding.batch_shards(mesh)))
    init = state_lib.init_fn(model, optimizer.make(config.train), config.seed, 1, config.data.seq_len)
    with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        abstract, _ = state_lib.abstract_state(init, mesh)
    checkpoints.check_compatible(step, abstract)
    try:
        state = ocp.StandardCheckpointer().restore(ckpt_dir / str(step) / "state", abstract)
    except Exception as e:  # orbax raises several types for a damaged checkpoint
        raise CheckpointError(f"{ckpt_dir}/{step} could not be restored: {e}") from e
    return Trained(config=config, tokenizer=tokenizer, model=model, params=state.params, step=step)


def load_params(workdir: epath.PathLike, step: int | None = None) -> TrainedParams:
    """The parameters of `workdir`'s latest (or given) checkpoint as host NumPy arrays, and what they
    need to be understood. Only the params are read (not the optimizer moments: one copy of the
    parameters in memory, no device). A checkpoint of another model than config.json builds is refused
    (CheckpointError naming the first differing parameters)."""
    config, tokenizer, checkpoints, step = _open_checkpoint(workdir, step)
    routing = checkpoints.recorded_routing(step)
    model_cfg = ModelConfig.from_config(config, tokenizer.num_ids, routing["groups"] if routing else 1)
    abstract = abstract_params(ModelConfig.from_config(config, tokenizer.num_ids))
    checkpoints.check_compatible(step, abstract, subtree="params")
    params = checkpoints.restore_params(step, abstract)
    return TrainedParams(config=config, tokenizer=tokenizer, model_cfg=model_cfg, params=params,
                         step=step, routing=routing)


def abstract_params(model_cfg: ModelConfig) -> dict:
    """The parameter tree `model_cfg` builds, as ShapeDtypeStructs (nothing allocated). The shapes do
    not depend on the routing groups: it is traced with one group of one token."""
    if model_cfg.moe is not None:
        model_cfg = dataclasses.replace(model_cfg, moe=dataclasses.replace(model_cfg.moe, num_groups=1))
    model = Transformer(model_cfg)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state_lib.strip_boxes(boxed))
