"""Parameter and FLOP accounting from a ModelConfig (counts equal the initialised tree; tested)."""
from __future__ import annotations

from openmoe2_jax.models.transformer import ModelConfig


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Total, embedding (input table + output head) and non-embedding parameter counts."""
    d, L = cfg.d_model, cfg.num_layers
    attn = d * cfg.head_dim * (cfg.num_heads * 2 + cfg.num_kv_heads * 2)
    qk_norm = 2 * cfg.head_dim if cfg.qk_norm else 0
    ffn = 3 * d * cfg.mlp_dim
    per_layer = attn + qk_norm + ffn + 2 * d
    embedding = 2 * cfg.vocab_size * d
    non_embedding = L * per_layer + d
    return dict(total=embedding + non_embedding, embedding=embedding, non_embedding=non_embedding,
                active=embedding + non_embedding)


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per token: 6 x matmul params (incl. the head, not the embedding
    lookup) + 12 x layers x seq x heads x head_dim for attention scores and values."""
    d, L = cfg.d_model, cfg.num_layers
    matmul = L * (d * cfg.head_dim * (cfg.num_heads * 2 + cfg.num_kv_heads * 2) + 3 * d * cfg.mlp_dim)
    matmul += d * cfg.vocab_size
    attention = 12 * L * seq_len * cfg.num_heads * cfg.head_dim
    return 6.0 * matmul + attention
