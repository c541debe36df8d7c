"""Load a trained model (config, params) from a training workdir for evaluation or sampling."""
from __future__ import annotations

import dataclasses
import json
import os

import ml_collections
import orbax.checkpoint as ocp

from openmoe2_jax import validation
from openmoe2_jax.data.tokenizer import Tokenizer, get_tokenizer
from openmoe2_jax.models.transformer import ModelConfig, Transformer
from openmoe2_jax.train.checkpoint import CheckpointError


@dataclasses.dataclass
class Trained:
    config: ml_collections.ConfigDict
    tokenizer: Tokenizer
    model: Transformer
    params: dict
    step: int


def _to_tuples(value):
    if isinstance(value, dict):
        return {k: _to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(value)
    return value


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"--workdir={workdir!r} has no config.json: not a training workdir.")
    with open(path) as f:
        try:
            config = ml_collections.ConfigDict(_to_tuples(json.load(f)))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is not valid JSON ({e})") from e
    validation.validate(config)
    return config


def load(workdir: str, step: int | None = None, batch_shards: int = 1) -> Trained:
    """The model and params of `workdir`'s latest (or given) checkpoint, on the default device."""
    config = load_config(workdir)
    ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
    steps = ocp.CheckpointManager(ckpt_dir, item_names=("state",)).all_steps() if os.path.isdir(ckpt_dir) else []
    if not steps:
        raise CheckpointError(f"{ckpt_dir} holds no checkpoint.")
    step = max(steps) if step is None else step
    if step not in steps:
        raise CheckpointError(f"{ckpt_dir} has no step {step}; it has {sorted(steps)}.")
    try:
        state = ocp.StandardCheckpointer().restore(os.path.join(ckpt_dir, str(step), "state"))
    except Exception as e:  # orbax raises several types for a damaged checkpoint
        raise CheckpointError(f"{ckpt_dir}/{step} could not be restored: {e}") from e
    tokenizer = get_tokenizer(config.data.tokenizer)
    model = Transformer(ModelConfig.from_config(config, tokenizer.num_ids, batch_shards))
    return Trained(config=config, tokenizer=tokenizer, model=model, params=state["params"], step=step)
