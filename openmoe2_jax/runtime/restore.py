"""Load a trained model (config, params) from a training workdir for evaluation or sampling.

The tokenizer is the run's: cl100k, or the bpe:N vocabulary the run saved in WORKDIR/tokenizer (never
trained again). A checkpoint trained with another vocabulary than config.json names is refused
(VocabularyError, naming both) before the model is built. Only the parameters are read (never the
AdamW moments), sharded over the mesh the caller asks for.

Routing groups. Batch-level expert choice picks C = N k cf / E tokens per expert among the N tokens of
a group (and capacity TC keeps C per expert), so N is part of the model's function. The checkpoint
records N (routing_record: tokens_per_group); `Trained.model(rows, seq_len)` routes any batch in groups
of exactly that N, so a checkpoint scores the same in the trainer's validation and here, on any mesh.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
from etils import epath

from openmoe2_jax import validation
from openmoe2_jax.configs import base, renames, resolve
from openmoe2_jax.data import bpe
from openmoe2_jax.data.tokenizer import Tokenizer, check_vocabulary
from openmoe2_jax.models.transformer import ModelConfig, Transformer, unstacked, with_groups
from openmoe2_jax.parallel import sharding
from openmoe2_jax.errors import ConfigError
from openmoe2_jax.runtime import checkpoint, paths
from openmoe2_jax.runtime.build import abstract_params  # noqa: F401 (restore.abstract_params for callers)
from openmoe2_jax.runtime.checkpoint import CheckpointError, Checkpoints


@dataclasses.dataclass
class Trained:
    config: ml_collections.ConfigDict
    tokenizer: Tokenizer
    model_cfg: ModelConfig
    params: dict               # jax.Arrays sharded over `mesh` (pass them to jitted functions as arguments)
    step: int
    routing: dict | None       # {groups, tokens_per_group} of the run's training step; None: any grouping
    mesh: jax.sharding.Mesh

    def model(self, rows: int, seq_len: int) -> Transformer:
        """The model for batches of rows x seq_len tokens, routed in the run's own groups."""
        groups = routing_groups(self.routing, rows * seq_len, f"a batch of {rows} rows x {seq_len} tokens")
        return Transformer(with_groups(self.model_cfg, groups, sharding.batch_shards(self.mesh)))


@dataclasses.dataclass
class TrainedParams:
    """A checkpoint's parameters alone, on the host (load_params)."""
    config: ml_collections.ConfigDict
    tokenizer: Tokenizer
    model_cfg: ModelConfig     # moe.num_groups: the groups of the run's training step (routing record)
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
    """The run's config.json over the current defaults (fields added since the run take defaults,
    renamed ones are read under their new names: configs/renames.py)."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise CheckpointError(f"--workdir={os.fspath(workdir)!r} has no config.json: not a training workdir.")
    try:
        saved = renames.upgrade(_to_tuples(json.loads(path.read_text())))
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


def routing_groups(routing: dict | None, tokens: int, what: str) -> int:
    """How many routing groups `tokens` tokens make at the run's recorded tokens_per_group (1 for a
    model whose routing does not depend on the grouping). ConfigError if they do not split evenly."""
    if routing is None:
        return 1
    per_group = routing["tokens_per_group"]
    if tokens % per_group:
        raise ConfigError(f"{what} ({tokens} tokens) does not split into this run's routing groups of "
                          f"{per_group} tokens (batch-level expert choice or capacity token choice routes "
                          f"exactly that many tokens together, as training did): use a batch of a "
                          f"multiple of {per_group} tokens")
    return tokens // per_group


def _routing(checkpoints, step: int, config, model_cfg: ModelConfig) -> dict | None:
    """The checkpoint's routing record; for a grouped model saved before records existed, the groups
    config.moe.group_tokens gives (0 read as the whole step: such runs trained on one device)."""
    recorded = checkpoints.recorded_routing(step)
    if recorded is not None:
        return recorded
    tokens = resolve.step_tokens(config)
    groups = tokens // resolve.group_tokens(config.moe, tokens, batch_shards=1)
    return checkpoint.routing_record(with_groups(model_cfg, groups), config.train.batch_size, config.data.seq_len)


def load(workdir: epath.PathLike, step: int | None = None, mesh_config: dict | None = None, devices=None) -> Trained:
    """The parameters of `workdir`'s latest (or given) checkpoint, and what they need to be used.

    Parameters only (the optimizer state is never read), restored straight into their shards on a
    mesh of `devices` (default: the first device) shaped by `mesh_config` (a config.mesh dict; default:
    every device on `data`, i.e. replicated parameters), whatever mesh wrote them: with fsdp and expert
    axes a chip holds 1/(fsdp x expert) of the expert weights, as in training.
    """
    config, tokenizer, checkpoints, step = _open_checkpoint(workdir, step)
    devices = devices or jax.devices()[:1]
    mesh = sharding.make_mesh(mesh_config or dict(data=-1, fsdp=1, expert=1, tensor=1), devices)
    model_cfg = ModelConfig.from_config(config, tokenizer.num_ids)
    abstract = abstract_params(model_cfg, mesh)
    checkpoints.check_compatible(step, abstract, subtree="params")
    params = checkpoints.restore_params(step, abstract)
    return Trained(config=config, tokenizer=tokenizer, model_cfg=model_cfg, params=params, step=step,
                   routing=_routing(checkpoints, step, config, model_cfg), mesh=mesh)


def load_params(workdir: epath.PathLike, step: int | None = None) -> TrainedParams:
    """The parameters of `workdir`'s latest (or given) checkpoint as host NumPy arrays, and what they
    need to be understood. Only the params are read (not the optimizer moments: one copy of the
    parameters in memory, no device). A checkpoint of another model than config.json builds is refused
    (CheckpointError naming the first differing parameters). A model.scan_layers run's stacked layers
    come back unrolled (layer_i), with a model_cfg to match."""
    config, tokenizer, checkpoints, step = _open_checkpoint(workdir, step)
    routing = checkpoints.recorded_routing(step)
    model_cfg = ModelConfig.from_config(config, tokenizer.num_ids, routing["groups"] if routing else 1)
    abstract = abstract_params(ModelConfig.from_config(config, tokenizer.num_ids))
    checkpoints.check_compatible(step, abstract, subtree="params")
    params = unstacked(checkpoints.restore_params(step, abstract), model_cfg.scan_from)
    model_cfg = dataclasses.replace(model_cfg, scan_layers=False)
    return TrainedParams(config=config, tokenizer=tokenizer, model_cfg=model_cfg, params=params,
                         step=step, routing=routing)
