"""The export format: tensor names (the one name map, docs/export.md) and config.json.

Tensor names. Our flax tree `layer_3/moe/w_up` is exported as `layers.3.moe.experts.w_up`: `/` becomes
`.`, `layer_i` becomes `layers.i`, and two renames make the MoE tensors self-describing (routed experts
under `moe.experts.`, router-gated shared experts under `moe.shared_experts.`). Layouts are ours,
unchanged: every weight is applied as `x @ W` with the input dimension first, experts first
([E, d, f], [E, f, d]), attention heads split out ([d, heads, head_dim], [heads, head_dim, d]).

config.json (`export_config`) describes the architecture completely: the NumPy reference forward pass
(reference.py) is written from it and the tensors alone. `model_config` turns it back into our
ModelConfig.
"""
from __future__ import annotations

import re

import numpy as np

from openmoe2_jax.errors import ExportError
from openmoe2_jax.models.moe import MoEConfig
from openmoe2_jax.models.transformer import ModelConfig

FORMAT = "openmoe2_jax.export"
FORMAT_VERSION = 1

# (flax path, exported name) renames after `/` -> `.` and `layer_i` -> `layers.i`; each direction exact.
_RENAMES = (("moe.w_", "moe.experts.w_"), ("moe.shared_w_", "moe.shared_experts.w_"))
_LAYER = re.compile(r"layer_(\d+)/")
_EXPORTED_LAYER = re.compile(r"layers\.(\d+)\.")


def export_name(path: str) -> str:
    """Flax path `layer_3/moe/w_up` -> exported name `layers.3.moe.experts.w_up`."""
    name = _LAYER.sub(r"layers.\1.", path).replace("/", ".")
    for ours, theirs in _RENAMES:
        name = name.replace(ours, theirs)
    return name


def flax_path(name: str) -> str:
    """Inverse of export_name."""
    for ours, theirs in _RENAMES:
        name = name.replace(theirs, ours)
    layer = _EXPORTED_LAYER.match(name)
    prefix = f"layer_{layer.group(1)}/" if layer else ""
    return prefix + name[layer.end() if layer else 0:].replace(".", "/")


def _order(name: str) -> tuple:
    """Tensors in forward order: embedding, layers 0..L-1 (by name within a layer), final norm, head."""
    layer = _EXPORTED_LAYER.match(name)
    if layer:
        return (1, int(layer.group(1)), name)
    return (0 if name == "embedding" else 2 if name == "final_norm.scale" else 3, 0, name)


def flatten(params: dict) -> dict[str, np.ndarray]:
    """Nested params {layer_0: {attn: {wq: ...}}} -> {exported name: array}, in forward order."""
    flat = {}

    def walk(tree, prefix):
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}/")
            else:
                flat[export_name(prefix + key)] = value
    walk(params, "")
    return {name: flat[name] for name in sorted(flat, key=_order)}


def unflatten(tensors: dict[str, np.ndarray]) -> dict:
    """Inverse of flatten: {exported name: array} -> our nested params."""
    params = {}
    for name, value in tensors.items():
        *parents, leaf = flax_path(name).split("/")
        node = params
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return params


def check_tensors(found: dict, expected: dict, where: str) -> None:
    """Raises ExportError naming the first tensors of `found` ({name: shape}) that differ from `expected`."""
    problems = [f"{n}: missing" for n in expected if n not in found]
    problems += [f"{n}: not in this model" for n in found if n not in expected]
    problems += [f"{n}: shape {found[n]}, the model has {expected[n]}"
                 for n in expected if n in found and found[n] != expected[n]]
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise ExportError(f"{where} do not match the model: {'; '.join(problems[:4])}{more}.")


# ----- config.json

def _capacity_rule(routing: str) -> str:
    rounding = "floor" if routing == "ec" else "ceil"
    return (f"C = min(max({rounding}(N * top_k * capacity_factor / num_experts), 1), N) for a group of N "
            "tokens, evaluated left to right in float64")


def routing_level(moe: MoEConfig) -> str:
    """What one routing decision sees: `batch` (groups of N consecutive tokens of the flattened batch:
    batch-level EC, TC with a capacity), `sequence` (each row: sequence-level EC) or `token` (each
    token alone: dropless TC)."""
    if moe.routing == "ec":
        return moe.ec_group
    return "token" if moe.tc_capacity_factor == 0 else "batch"


def moe_description(moe: MoEConfig, first_dense_layers: int, tokens_per_group: int | None,
                    trained_groups: int | None) -> dict:
    """config.json's `moe` section: how every MoE layer routes and combines (docs/export.md)."""
    level = routing_level(moe)
    dropless = level == "token"
    factor = moe.ec_capacity_factor if moe.routing == "ec" else None if dropless else moe.tc_capacity_factor
    if level != "batch":
        tokens_per_group = trained_groups = None
    shared = None if moe.num_shared == 0 else "fused" if moe.shared_gating == "none" else "router_gated"
    return dict(
        first_dense_layers=first_dense_layers,
        num_experts=moe.num_experts, expert_mlp_dim=moe.expert_mlp_dim,
        num_shared_experts=moe.num_shared, shared_mlp_dim=moe.shared_mlp_dim, shared_experts=shared,
        routing="tc_dropless" if dropless else moe.routing, routing_level=level, top_k=moe.top_k,
        capacity_factor=factor, capacity_rule=None if dropless else _capacity_rule(moe.routing),
        tokens_per_group=tokens_per_group, trained_groups_per_step=trained_groups,
        gate=moe.gate,
        scaling_table=list(moe.scaling) if moe.routing == "ec" and moe.scaling is not None else None,
        scaling_factor=float(moe.scaling) if moe.routing == "tc" and moe.scaling is not None else None,
    )


def export_config(model_cfg: ModelConfig, objective: str, tokenizer: dict, dtype: str,
                  tokens_per_group: int | None = None, source: dict | None = None) -> dict:
    """config.json of an export of a model of shape `model_cfg`.

    objective: diffusion | ar. tokenizer: {name, sha256, num_ids, eot_id, mask_id, files}. dtype: of the
    stored tensors. tokens_per_group: N, the tokens of one routing group the run trained with
    (batch-level EC and capacity TC; see runtime/checkpoint.py routing_record). source: provenance.
    """
    m = model_cfg
    if (objective == "ar") != m.causal:
        raise ExportError(f"objective {objective!r} with {'causal' if m.causal else 'bidirectional'} "
                          "attention: the AR objective is causal, diffusion bidirectional.")
    moe = None
    if m.moe is not None:
        moe = moe_description(m.moe, m.first_dense_layers, tokens_per_group, m.moe.num_groups)
        if moe["routing_level"] == "batch" and not tokens_per_group:
            raise ExportError("a batch-level routed model needs the tokens per routing group it was "
                              "trained with (tokens_per_group).")
    return dict(
        format=FORMAT, format_version=FORMAT_VERSION,
        objective=objective, attention="causal" if m.causal else "bidirectional",
        ffn="moe" if m.moe is not None else "dense",
        vocab_size=m.vocab_size, num_layers=m.num_layers, d_model=m.d_model,
        num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, head_dim=m.head_dim,
        dense_mlp_dim=m.dense_ffn_width, rope_theta=m.rope_theta, norm_eps=m.norm_eps,
        qk_norm=m.qk_norm, dtype=dtype, trained_dtypes=dict(params=m.param_dtype, compute=m.dtype),
        init_std=m.init_std, tokenizer=tokenizer, moe=moe, source=source or {},
    )


def model_config(config: dict, num_groups: int = 1) -> ModelConfig:
    """Our ModelConfig for an export's config.json, routing `num_groups` groups per forward pass
    (batch-level routing: give (batch x seq) / config['moe']['tokens_per_group'] to route as trained).
    Training-only settings (auxiliary losses, remat, kernel choices) take inference defaults."""
    moe = None
    if config["ffn"] == "moe":
        c = config["moe"]
        routing = "tc" if c["routing"] == "tc_dropless" else c["routing"]
        scaling = (tuple(c["scaling_table"]) if c["scaling_table"] is not None else
                   c["scaling_factor"])
        moe = MoEConfig(
            num_experts=c["num_experts"], num_shared=c["num_shared_experts"],
            expert_mlp_dim=c["expert_mlp_dim"], shared_mlp_dim=c["shared_mlp_dim"],
            shared_gating="router" if c["shared_experts"] == "router_gated" else "none",
            top_k=c["top_k"], routing=routing,
            ec_group=c["routing_level"] if routing == "ec" else "batch", num_groups=num_groups,
            ec_capacity_factor=c["capacity_factor"] if routing == "ec" else 1.0,
            tc_capacity_factor=(c["capacity_factor"] or 0.0) if routing == "tc" else 0.0,
            gate=c["gate"], z_loss_coef=0.0, tc_balance_loss=0.0, ec_balance_loss=0.0, scaling=scaling,
            topk_impl="xla")
    return ModelConfig(
        vocab_size=config["vocab_size"], num_layers=config["num_layers"], d_model=config["d_model"],
        num_heads=config["num_heads"], num_kv_heads=config["num_kv_heads"], head_dim=config["head_dim"],
        mlp_dim=config["dense_mlp_dim"], rope_theta=config["rope_theta"], norm_eps=config["norm_eps"],
        qk_norm=config["qk_norm"], init_std=config["init_std"], causal=config["attention"] == "causal",
        dtype="float32", param_dtype=config["dtype"], moe=moe,
        first_dense_layers=config["moe"]["first_dense_layers"] if moe is not None else 0,
        dense_mlp_dim=config["dense_mlp_dim"])


