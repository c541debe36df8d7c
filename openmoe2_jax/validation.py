"""One `validate(config)` that checks every field before anything is built or compiled.

Errors name the field, the value and what is allowed. Unknown keys (a typo in an override) and
missing keys are errors too, so a config key always means one thing.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import ml_collections

from openmoe2_jax.configs import resolve
from openmoe2_jax.data import tokenizer
from openmoe2_jax.errors import ConfigError
from openmoe2_jax.kernels import ec_topk
from openmoe2_jax.models import layers

Check = Callable[[Any], str | None]  # returns a description of what is allowed, or None if ok


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive_int(v):
    return None if _is_int(v) and v > 0 else "a positive integer"


def nonneg_int(v):
    return None if _is_int(v) and v >= 0 else "an integer >= 0"


def mesh_size(v):
    return None if _is_int(v) and (v > 0 or v == -1) else "a positive integer, or -1 (fill)"


def boolean(v):
    return None if isinstance(v, bool) else "true or false"


def one_of(*choices):
    def check(v):
        return None if v in choices else "one of " + ", ".join(repr(c) for c in choices)
    return check


def number(lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False):
    def check(v):
        ok = _is_num(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        return None if ok else f"a number in {lb}{lo}, {hi}{rb}"
    return check


def positive_ints(v):
    ok = isinstance(v, (tuple, list)) and all(_is_int(x) and x > 0 for x in v)
    return None if ok else "a list of positive integers"


def strings(v):
    ok = isinstance(v, (tuple, list)) and all(isinstance(x, str) and x for x in v)
    return None if ok else "a list of non-empty strings"


def nonempty_str(v):
    return None if isinstance(v, str) and v else "a non-empty string"


DTYPES = one_of("float32", "bfloat16")

# Every leaf of a config, and what it may hold.
FIELDS: dict[str, Check] = {
    "seed": nonneg_int,
    "model.vocab_size": nonneg_int,
    "model.vocab_multiple": positive_int,
    "model.num_layers": positive_int,
    "model.d_model": positive_int,
    "model.num_heads": positive_int,
    "model.num_kv_heads": positive_int,
    "model.head_dim": nonneg_int,
    "model.ffn": one_of("moe", "dense"),
    "model.mlp_dim": positive_int,
    "model.rope_theta": number(0, lo_open=True),
    "model.norm_eps": number(0, 1, lo_open=True),
    "model.qk_norm": boolean,
    "model.init_std": number(0, lo_open=True),
    "model.dtype": DTYPES,
    "model.param_dtype": DTYPES,
    "model.remat": one_of("none", "block", "attention"),
    "model.attention_impl": one_of(*layers.ATTENTION_IMPLS),
    "model.head_chunk": nonneg_int,
    "model.scan_layers": boolean,
    "moe.routing": one_of("ec", "tc"),
    "moe.num_experts": positive_int,
    "moe.num_shared_experts": nonneg_int,
    "moe.expert_mlp_dim": positive_int,
    "moe.shared_mlp_dim": nonneg_int,
    "moe.shared_gating": one_of("none", "router"),
    "moe.top_k": positive_int,
    "moe.ec_group": one_of("batch", "sequence"),
    "moe.group_tokens": nonneg_int,
    "moe.ec_capacity_factor": number(0, lo_open=True),
    "moe.tc_capacity_factor": number(0),
    "moe.gate": one_of("softmax", "sigmoid", "pre_softmax"),
    "moe.z_loss_coef": number(0),
    "moe.tc_balance_loss": number(0),
    "moe.ec_balance_loss": number(0),
    "moe.scaling_factors": boolean,
    "moe.first_dense_layers": nonneg_int,
    "moe.dense_mlp_dim": nonneg_int,
    "moe.topk_impl": one_of(*ec_topk.IMPLS),
    "moe.tc_dropless_impl": one_of("auto", "ragged", "blocked"),
    "moe.allow_ec_causal": boolean,
    "moe.upcycle_from": lambda v: None if isinstance(v, str) else "a path (string), '' for none",
    "moe.upcycle_method": one_of("copy", "slice"),
    "objective.kind": one_of("diffusion", "ar"),
    "objective.weight": one_of("t", "ratio"),
    "objective.t_eps": number(0, 1, hi_open=True),
    "objective.low_discrepancy": boolean,
    "objective.masked_head": number(0, 1),
    "objective.random_length_prob": number(0, 1),
    "objective.random_length_buckets": positive_ints,
    "data.source": one_of("bible", "jsonl", "parquet", "text", "prepared"),
    "data.paths": strings,
    "data.text_field": nonempty_str,
    "data.tokenizer": tokenizer.check_name,
    "data.seq_len": positive_int,
    "data.validation_fraction": number(0, 1, lo_open=True, hi_open=True),
    "data.num_epochs": nonneg_int,
    "data.max_train_tokens": nonneg_int,
    "train.steps": positive_int,
    "train.batch_size": positive_int,
    "train.learning_rate": number(0, lo_open=True),
    "train.warmup_steps": nonneg_int,
    "train.min_lr_ratio": number(0, 1),
    "train.b1": number(0, 1, hi_open=True),
    "train.b2": number(0, 1, hi_open=True),
    "train.eps": number(0, lo_open=True),
    "train.weight_decay": number(0),
    "train.grad_clip": number(0),
    "eval.every_steps": nonneg_int,
    "eval.num_batches": positive_int,
    "eval.mc_samples": positive_int,
    "eval.seed": nonneg_int,
    "eval.compressors": lambda v: (None if isinstance(v, (tuple, list)) and set(v) <= {"xz", "bz2"}
                                   else "a tuple of 'xz' and/or 'bz2' (empty: none)"),
    "eval.hellaswag_file": lambda v: None if isinstance(v, str) else "a path (string), '' for none",
    "eval.mmlu_dir": lambda v: None if isinstance(v, str) else "a path (string), '' for none",
    "checkpoint.every_steps": positive_int,
    "checkpoint.keep": positive_int,
    "checkpoint.async_save": boolean,
    "log_every_steps": positive_int,
    "mesh.data": mesh_size,
    "mesh.fsdp": mesh_size,
    "mesh.expert": mesh_size,
    "mesh.tensor": mesh_size,
}


def _leaves(config, prefix=""):
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            yield from _leaves(value, name + ".")
        else:
            yield name, value


def _fail(field, value, allowed):
    raise ConfigError(f"config.{field} = {value!r} is not allowed: expected {allowed}.")


def _get(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


def resolve_mesh_shape(mesh_config, num_devices: int) -> dict[str, int]:
    """Mesh axis sizes with -1 filled in; errors if they cannot tile `num_devices` devices."""
    shape = dict(mesh_config)
    fills = [k for k, v in shape.items() if v == -1]
    if len(fills) > 1:
        raise ConfigError(f"config.mesh: at most one axis may be -1 (fill), got {fills}.")
    fixed = math.prod(v for v in shape.values() if v != -1)
    if fills:
        if num_devices % fixed:
            raise ConfigError(
                f"config.mesh = {dict(mesh_config)}: the fixed axes ({fixed} devices) do not divide "
                f"the {num_devices} available devices.")
        shape[fills[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ConfigError(
            f"config.mesh = {dict(mesh_config)}: the axes multiply to {fixed} devices but "
            f"{num_devices} are available; use -1 on one axis to fill.")
    return shape


def validate(config, num_devices: int | None = None, num_processes: int = 1) -> None:
    """Checks every field of `config`; raises ConfigError naming the first bad one.

    With `num_devices`, also checks that the mesh tiles the devices and the batch divides over them.
    """
    seen = set()
    for name, value in _leaves(config):
        if name not in FIELDS:
            close = [f for f in FIELDS if f.split(".")[-1] == name.split(".")[-1]]
            hint = f" Did you mean {close[0]}?" if close else ""
            raise ConfigError(f"config.{name} is not a known field.{hint}")
        allowed = FIELDS[name](value)
        if allowed is not None:
            _fail(name, value, allowed)
        seen.add(name)
    missing = sorted(set(FIELDS) - seen)
    if missing:
        raise ConfigError(f"config is missing the fields: {', '.join('config.' + m for m in missing)}.")

    m = config.model
    if m.head_dim == 0 and m.d_model % m.num_heads:
        raise ConfigError(
            f"config.model.num_heads = {m.num_heads} does not divide config.model.d_model = "
            f"{m.d_model}; choose heads that divide the width or set config.model.head_dim.")
    head_dim = resolve.head_dim(m)
    if head_dim % 2:
        raise ConfigError(f"config.model: head_dim = {head_dim} (d_model / num_heads, or "
                          "config.model.head_dim) must be even for rotary position embeddings.")
    if m.scan_layers and m.ffn == "moe" and config.moe.upcycle_from:
        raise ConfigError("config.moe.upcycle_from with config.model.scan_layers = True: upcycling fills "
                          "unrolled layers; upcycle with scan_layers = False (the dense source may be scanned).")
    if m.head_chunk and config.data.seq_len % m.head_chunk:
        raise ConfigError(f"config.model.head_chunk = {m.head_chunk} does not divide config.data.seq_len = "
                          f"{config.data.seq_len}: the head's chunks must be whole; use a divisor or 0.")
    if m.num_heads % m.num_kv_heads:
        raise ConfigError(
            f"config.model.num_kv_heads = {m.num_kv_heads} must divide config.model.num_heads = "
            f"{m.num_heads} (grouped-query attention).")
    seq_len = config.data.seq_len
    too_long = [b for b in config.objective.random_length_buckets if b >= seq_len]
    if too_long:
        raise ConfigError(
            f"config.objective.random_length_buckets = {tuple(config.objective.random_length_buckets)}:"
            f" every bucket must be shorter than config.data.seq_len = {seq_len}.")
    if config.objective.random_length_prob > 0 and not config.objective.random_length_buckets:
        raise ConfigError("config.objective.random_length_buckets is empty but "
                          "config.objective.random_length_prob > 0; give at least one bucket length.")
    if config.train.warmup_steps > config.train.steps:
        raise ConfigError(f"config.train.warmup_steps = {config.train.warmup_steps} exceeds "
                          f"config.train.steps = {config.train.steps}.")
    if config.data.source == "bible" and config.data.paths:
        raise ConfigError("config.data.paths must be empty with config.data.source = 'bible' "
                          "(the bundled corpus); set config.data.source to jsonl|parquet|text|prepared.")
    if config.data.source != "bible" and not config.data.paths:
        raise ConfigError(f"config.data.paths is empty but config.data.source = "
                          f"{config.data.source!r} needs at least one path.")
    if config.data.source == "prepared" and len(config.data.paths) != 1:
        raise ConfigError(f"config.data.paths = {tuple(config.data.paths)}: a prepared corpus is one "
                          "directory written by `python -m openmoe2_jax.data.prepare`.")
    if m.ffn == "moe":
        _validate_moe(config)
    if config.train.batch_size % num_processes:
        raise ConfigError(f"config.train.batch_size = {config.train.batch_size} is not divisible by "
                          f"the {num_processes} processes.")
    if num_devices is not None:
        shape = resolve_mesh_shape(config.mesh, num_devices)
        batch_shards = shape["data"] * shape["fsdp"] * shape["expert"]
        if layers.attention_impl(m.attention_impl, m.dtype).startswith("splash") and m.num_heads % shape["tensor"]:
            raise ConfigError(
                f"config.model.num_heads = {m.num_heads} is not divisible by the mesh's tensor axis "
                f"({shape['tensor']}): splash attention runs on whole heads per device "
                f"(config.model.attention_impl = {m.attention_impl!r}).")
        if config.train.batch_size % batch_shards:
            raise ConfigError(
                f"config.train.batch_size = {config.train.batch_size} is not divisible by the "
                f"{batch_shards} batch shards of the mesh (data x fsdp x expert = {shape}).")
        moe = config.moe
        if m.ffn == "moe" and moe.num_experts % shape["expert"]:
            raise ConfigError(f"config.moe.num_experts = {moe.num_experts} is not divisible by the "
                              f"mesh's expert axis ({shape['expert']}).")
        replica = resolve.step_tokens(config) // batch_shards
        if m.ffn == "moe" and moe.group_tokens and replica % moe.group_tokens and moe.group_tokens % replica:
            raise ConfigError(
                f"config.moe.group_tokens = {moe.group_tokens} neither divides nor is a multiple of the "
                f"{replica} tokens a batch shard holds (batch_size x seq_len / {batch_shards} shards of "
                f"data x fsdp x expert): a routing group must lie within one shard or span whole shards; "
                "use 0 for one group per shard.")


def _validate_moe(config) -> None:
    moe, m = config.moe, config.model
    if moe.routing == "ec" and config.objective.kind == "ar" and not moe.allow_ec_causal:
        raise ConfigError(
            "config.moe.routing = 'ec' with config.objective.kind = 'ar': expert choice selects tokens "
            "across positions, which leaks the future into a causal model. Use config.moe.routing = "
            "'tc' (as the study's AR-MoE baselines do), or set config.moe.allow_ec_causal = True to "
            "waive sequence independence knowingly.")
    if moe.top_k > moe.num_experts:
        raise ConfigError(f"config.moe.top_k = {moe.top_k} exceeds config.moe.num_experts = "
                          f"{moe.num_experts}.")
    if moe.routing == "tc" and moe.gate == "pre_softmax":
        raise ConfigError("config.moe.gate = 'pre_softmax' is an expert-choice gate; token choice "
                          "takes softmax or sigmoid.")
    if moe.routing == "tc" and moe.gate == "softmax" and moe.top_k == 1 and moe.shared_gating == "none":
        raise ConfigError("config.moe.top_k = 1 with a post-softmax token-choice router gives every "
                          "gate exactly 1 (the router gets no gradient); use top_k >= 2 or sigmoid.")
    if moe.shared_gating == "router":
        if moe.num_shared_experts == 0:
            raise ConfigError("config.moe.shared_gating = 'router' needs config.moe.num_shared_experts > 0.")
        width = resolve.shared_mlp_dim(moe)
        if width % moe.num_shared_experts:
            raise ConfigError(f"config.moe.shared_mlp_dim = {width} is not divisible by "
                              f"config.moe.num_shared_experts = {moe.num_shared_experts}.")
    if moe.scaling_factors and moe.gate == "pre_softmax":
        raise ConfigError("config.moe.scaling_factors is defined for post-softmax and sigmoid routers.")
    if moe.first_dense_layers > m.num_layers:
        raise ConfigError(f"config.moe.first_dense_layers = {moe.first_dense_layers} exceeds "
                          f"config.model.num_layers = {m.num_layers}.")
    tokens = resolve.step_tokens(config)
    if moe.group_tokens and tokens % moe.group_tokens:
        raise ConfigError(f"config.moe.group_tokens = {moe.group_tokens} does not split the step's "
                          f"{tokens} tokens (batch_size x seq_len) into equal routing groups.")
