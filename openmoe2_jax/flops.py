"""Parameter and FLOP accounting from a ModelConfig (counts equal the initialised tree; tested)."""
from __future__ import annotations

from openmoe2_jax.models.transformer import ModelConfig


def _attention_params(cfg: ModelConfig) -> int:
    qk_norm = 2 * cfg.head_dim if cfg.qk_norm else 0
    return cfg.d_model * cfg.head_dim * (cfg.num_heads * 2 + cfg.num_kv_heads * 2) + qk_norm


def _moe_params(cfg: ModelConfig) -> tuple[int, int]:
    """(total, active) parameters of one MoE FFN (router + routed + shared)."""
    m, d = cfg.moe, cfg.d_model
    routed = 3 * d * m.expert_mlp_dim * m.num_experts
    shared = 3 * d * m.shared_mlp_dim
    router = d * (m.num_experts + (m.num_shared if m.shared_gating == "router" else 0))
    active = router + shared + 3 * d * m.expert_mlp_dim * m.top_k * (
        m.ec_capacity_factor if m.routing == "ec" else 1)
    return routed + shared + router, int(round(active))


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Total, active (per token, on average), embedding (table + head) and non-embedding counts."""
    d, L = cfg.d_model, cfg.num_layers
    total = active = 0
    for i in range(L):
        base = _attention_params(cfg) + 2 * d  # attention + two norms
        if cfg.is_moe_layer(i):
            t, a = _moe_params(cfg)
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
