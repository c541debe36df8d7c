"""Parameter and FLOP accounting from a config (counts equal the initialised tree; tested), and the
FLOPs-matched and parameter-matched dense configs of an MoE config.

  python -m openmoe2_jax.flops --config=configs/base.py   # prints the table

Active parameters of an EC layer count k·cf experts per token on average (C = N k cf / E slots per
expert); TC counts k. Embedding = input table + output head; FLOPs/token = 6 x active matmul
parameters (router and head included, the embedding lookup not) + 12 x layers x seq x heads x head_dim.
"""
from __future__ import annotations

from openmoe2_jax.configs import resolve
from openmoe2_jax.data import tokenizer
from openmoe2_jax.models.transformer import ModelConfig


def _attention_params(cfg: ModelConfig) -> int:
    qk_norm = 2 * cfg.head_dim if cfg.qk_norm else 0
    return cfg.d_model * cfg.head_dim * (cfg.num_heads * 2 + cfg.num_kv_heads * 2) + qk_norm


def moe_layer_params(cfg: ModelConfig) -> tuple[int, int]:
    """(total, active) parameters of one MoE FFN (router + routed + shared)."""
    m, d = cfg.moe, cfg.d_model
    routed = 3 * d * m.expert_mlp_dim * m.num_experts
    shared = 3 * d * m.shared_mlp_dim
    router = d * (m.num_experts + (m.num_shared if m.shared_gating == "router" else 0))
    active = router + shared + 3 * d * m.expert_mlp_dim * resolve.experts_per_token(m)
    return routed + shared + router, int(round(active))


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Total, active (per token, on average), embedding (table + head) and non-embedding counts."""
    d, L = cfg.d_model, cfg.num_layers
    total = active = 0
    for i in range(L):
        base = _attention_params(cfg) + 2 * d  # attention + two norms
        if cfg.is_moe_layer(i):
            t, a = moe_layer_params(cfg)
        else:
            t = a = 3 * d * cfg.dense_ffn_width
        total += base + t
        active += base + a
    embedding = 2 * cfg.vocab_size * d
    non_embedding = total + d  # + final norm
    return dict(total=embedding + non_embedding, embedding=embedding, non_embedding=non_embedding,
                active=embedding + active + d, active_non_embedding=active + d)


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per token: 6 x active matmul params (incl. router and head, not the
    embedding lookup) + 12 x layers x seq x heads x head_dim for attention scores and values."""
    counts = param_counts(cfg)
    norms = cfg.num_layers * 2 * cfg.d_model + cfg.d_model
    qk = cfg.num_layers * (2 * cfg.head_dim if cfg.qk_norm else 0)
    matmul = counts["active_non_embedding"] - norms - qk + cfg.d_model * cfg.vocab_size
    attention = 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
    return 6.0 * matmul + attention


def human(n: float) -> str:
    """1.23B / 45.6M / 7.8K."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def model_config(config, num_ids: int | None = None) -> ModelConfig:
    """The model of `config`; num_ids = the ids of its tokenizer (default: known from the name)."""
    return ModelConfig.from_config(config, num_ids or tokenizer.num_ids_of(config.data.tokenizer))


def matched_dense(config, match: str):
    """A dense config with the MoE config's active FLOPs (match='flops') or total params ('params')."""
    out = config.copy_and_resolve_references()
    out.model.update(ffn="dense", mlp_dim=resolve.dense_mlp_dim_matched(config, match))
    return out


def table(config, num_ids: int | None = None) -> str:
    """A markdown table of the config's counts and, for an MoE, its matched dense models."""
    rows = [("this config", config)]
    if config.model.ffn == "moe":
        rows += [("FLOPs-matched dense", matched_dense(config, "flops")),
                 ("parameter-matched dense", matched_dense(config, "params"))]
    lines = ["| model | FFN | total | active | embedding | non-embedding | FLOPs/token | FLOPs/param |",
             "|---|---|---|---|---|---|---|---|"]
    for name, c in rows:
        mc = model_config(c, num_ids)
        n = param_counts(mc)
        f = train_flops_per_token(mc, c.data.seq_len)
        ffn = (f"MoE {c.moe.num_experts}x{c.moe.expert_mlp_dim} k={c.moe.top_k} "
               f"+{c.moe.num_shared_experts} shared ({c.moe.routing})" if c.model.ffn == "moe"
               else f"dense {c.model.mlp_dim}")
        lines.append(f"| {name} | {ffn} | {n['total']:,} | {n['active']:,} | {human(n['embedding'])} | "
                     f"{human(n['non_embedding'])} | {human(f)} | {f / n['total']:.2f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    from openmoe2_jax import validation  # pylint: disable=import-outside-toplevel
    config = _CONFIG.value
    validation.validate(config)
    print(table(config))


if __name__ == "__main__":
    from absl import app  # pylint: disable=ungrouped-imports
    from openmoe2_jax import cli, configs
    _CONFIG = cli.define_config_file("config", configs.path("base"), "Config file.")
    app.run(main, flags_parser=cli.parse_flags)
