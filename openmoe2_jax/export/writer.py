"""Write an export: a training workdir's parameters (no optimizer state) as safetensors + config.json +
the tokenizer (docs/export.md). The workdir is local or gs://; the export is written to a local
directory (safetensors writes and maps local files)."""
from __future__ import annotations

import json
import os
import time

from etils import epath

from openmoe2_jax.configs import resolve
from openmoe2_jax.data import bpe
from openmoe2_jax.data.tokenizer import Tokenizer, bpe_num_ranks
from openmoe2_jax.export import files, layout
from openmoe2_jax.export.layout import ExportError
from openmoe2_jax.models.transformer import ModelConfig, with_groups
from openmoe2_jax.runtime import paths, restore

CONFIG = "config.json"
DEFAULT_MAX_SHARD_BYTES = 5_000_000_000  # Hugging Face's default shard size (5 GB)


def check_out_dir(out: str) -> None:
    """--out must be a new or empty directory: an export never mixes with other files."""
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ExportError(f"--out={out} exists and is not an empty directory: give a new directory "
                          "(nothing was written).")


def write_export(out: str, model_cfg: ModelConfig, objective: str, params: dict, tokenizer: dict,
                 dtype: str = "float32", max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                 tokens_per_group: int | None = None, tokenizer_files: tuple = (),
                 source: dict | None = None) -> dict:
    """Writes `params` (our nested tree of host arrays, shaped by `model_cfg`) into the new or empty
    directory `out`; returns config.json's content.

    tokenizer: {name, sha256, num_ids, eot_id, mask_id}; tokenizer_files: paths copied to
    out/tokenizer/ (a bpe:N run's vocabulary). Other arguments: layout.export_config, files.write.
    """
    check_out_dir(out)
    if dtype not in files.DTYPES:
        raise ExportError(f"--dtype={dtype}: expected one of {', '.join(files.DTYPES)}")
    if max_shard_bytes < 1:
        raise ExportError(f"--max_shard_bytes={max_shard_bytes}: expected a positive number of bytes.")
    names = [os.path.join("tokenizer", os.path.basename(str(p))) for p in tokenizer_files]
    config = layout.export_config(model_cfg, objective, dict(tokenizer, files=names), dtype,
                                  tokens_per_group, source)
    expected = layout.flatten(restore.abstract_params(model_cfg))
    tensors = layout.flatten(params)
    layout.check_tensors({n: tuple(a.shape) for n, a in tensors.items()},
                         {n: tuple(a.shape) for n, a in expected.items()}, "the parameters given")
    os.makedirs(out, exist_ok=True)
    written = files.write(out, tensors, dtype, max_shard_bytes, dict(producer=layout.FORMAT))
    for path in map(epath.Path, tokenizer_files):  # the run's vocabulary: local or gs://
        os.makedirs(os.path.join(out, "tokenizer"), exist_ok=True)
        with open(os.path.join(out, "tokenizer", path.name), "wb") as f:
            f.write(path.read_bytes())
    with open(os.path.join(out, CONFIG), "w") as f:
        json.dump(config, f, indent=2)
    config["files"] = written
    return config


def tokenizer_description(tok: Tokenizer) -> dict:
    """config.json's tokenizer: the vocabulary's identity and the ids a reader needs."""
    return dict(name=tok.name, sha256=tok.sha256, num_ids=tok.num_ids, eot_id=tok.eot_id,
                mask_id=tok.mask_id, encoding="tiktoken cl100k_base" if bpe_num_ranks(tok.name) is None
                else "tiktoken ranks in tokenizer/ (byte-level BPE, data/bpe.py)")


def trained_group_size(trained: restore.TrainedParams, workdir: str, given: int = 0,
                       argument: str = "--tokens_per_group") -> int | None:
    """The tokens of one routing group `trained`'s run routed (batch-level EC, TC with a capacity):
    `given` if nonzero (it must agree with the record; named `argument` in errors), else the
    checkpoint's routing record, else config.moe.group_tokens (only checkpoints written before
    routing was recorded need `given`). None for models whose routing does not depend on the grouping."""
    recorded = (trained.routing or {}).get("tokens_per_group")
    if given and recorded and given != recorded:
        raise ExportError(f"{argument}={given}, but the checkpoint records that the run routed groups "
                          f"of {recorded} tokens; leave {argument} out.")
    config, moe = trained.config, trained.model_cfg.moe
    if moe is None or layout.routing_level(moe) != "batch":
        return None
    size = given or recorded or config.moe.group_tokens
    if not size:
        raise ExportError(
            f"the checkpoint of {workdir} does not record its routing groups (written before they were "
            f"recorded) and config.moe.group_tokens = 0: pass {argument}=N, the tokens of one routing "
            "group in training (batch_size x seq_len / data-parallel replicas).")
    return size


def export_workdir(workdir: str, out: str, step: int | None = None, dtype: str = "float32",
                   max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, tokens_per_group: int = 0) -> dict:
    """Exports `workdir`'s latest (or given) checkpoint to `out`; returns config.json's content plus
    `files` (the tensor files and index), `bytes` (of the whole export) and `seconds`.

    tokens_per_group: 0 = the routing groups the checkpoint records (runtime/checkpoint.py
    routing_record); give it only for a checkpoint written before routing was recorded.
    """
    t0 = time.time()
    check_out_dir(out)
    trained = restore.load_params(workdir, step)
    config, tok, model_cfg = trained.config, trained.tokenizer, trained.model_cfg
    tokens_per_group = trained_group_size(trained, workdir, tokens_per_group)
    if tokens_per_group:
        model_cfg = with_groups(model_cfg, resolve.step_tokens(config) // tokens_per_group)
    tokenizer_files = bpe.files(epath.Path(workdir) / "tokenizer", tok.name) \
        if bpe_num_ranks(tok.name) is not None else ()
    source = dict(workdir=str(paths.absolute(workdir)), step=trained.step,
                  run_config=json.loads(config.to_json_best_effort()))
    result = write_export(out, model_cfg, config.objective.kind, trained.params,
                          tokenizer_description(tok), dtype, max_shard_bytes, tokens_per_group,
                          tokenizer_files, source)
    result["bytes"] = sum(os.path.getsize(os.path.join(root, f))
                          for root, _, names in os.walk(out) for f in names)
    result["seconds"] = time.time() - t0
    return result
