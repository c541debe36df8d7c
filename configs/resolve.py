"""Every quantity a config leaves to be derived, computed here and nowhere else.

A config holds what a researcher chooses; several of its keys are placeholders (0 = derive) and some
numbers follow from several keys at once. The model (models/transformer.ModelConfig.from_config),
validation, flops, plan, bench, the ablation transforms and the scaling ladder all read these
functions, so a derived number cannot disagree between them. Each takes the config sections it needs
(ml_collections.ConfigDict or anything with the same attribute names) and returns plain numbers.

  vocab_size              model.vocab_size, or the tokenizer's ids + the mask id padded to vocab_multiple
  head_dim                model.head_dim, or d_model / num_heads
  shared_mlp_dim          the fused width of the shared experts (0 without them)
  experts_per_token       k for token choice, k x cf on average for expert choice
  step_tokens             tokens of one training step, batch_size x seq_len
  group_tokens            N, tokens routed together by batch-level routing
  ec_capacity/tc_capacity C, slots per expert in a group of N tokens
  dense_mlp_dim_matched   the dense FFN width with an MoE layer's FLOPs or total parameters
"""
from __future__ import annotations

import math


def vocab_size(model, num_ids: int) -> int:
    """model.vocab_size, or (0) the tokenizer's `num_ids` + 1 mask id, padded up to model.vocab_multiple."""
    if model.vocab_size:
        return model.vocab_size
    return -(-(num_ids + 1) // model.vocab_multiple) * model.vocab_multiple


def head_dim(model) -> int:
    """model.head_dim, or (0) d_model // num_heads."""
    return model.head_dim or model.d_model // model.num_heads


def shared_mlp_dim(moe) -> int:
    """The fused shared-expert width: moe.shared_mlp_dim, or (0) num_shared_experts x expert_mlp_dim;
    0 when there are no shared experts."""
    if not moe.num_shared_experts:
        return 0
    return moe.shared_mlp_dim or moe.num_shared_experts * moe.expert_mlp_dim


def experts_per_token(moe) -> float:
    """Routed experts a token uses on average: k (token choice); k x cf (expert choice, C = N k cf / E)."""
    return moe.top_k * (moe.ec_capacity_factor if moe.routing == "ec" else 1.0)


def step_tokens(config) -> int:
    """Tokens of one training step: train.batch_size x data.seq_len."""
    return config.train.batch_size * config.data.seq_len


def group_tokens(moe, tokens: int, batch_shards: int) -> int:
    """N, the tokens batch-level routing routes together: moe.group_tokens, or (0) the `tokens` of a
    step split over its `batch_shards` data-parallel replicas (data x fsdp x expert)."""
    return moe.group_tokens or tokens // batch_shards


def ec_capacity(tokens_per_group: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """Expert choice: C = max(floor(N k cf / E), 1), capped at N."""
    return min(max(int(math.floor(tokens_per_group * top_k * capacity_factor / num_experts)), 1),
               tokens_per_group)


def tc_capacity(tokens_per_group: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """Token choice with dropping: C = max(ceil(N k cf / E), 1), capped at N."""
    return min(max(int(math.ceil(tokens_per_group * top_k * capacity_factor / num_experts)), 1),
               tokens_per_group)


def router_columns(moe) -> int:
    """Router logits per token: the routed experts, + the shared ones when the router gates them."""
    return moe.num_experts + (moe.num_shared_experts if moe.shared_gating == "router" else 0)


def dense_mlp_dim_matched(config, match: str) -> int:
    """The dense FFN width matching the MoE layer of `config` in per-token FLOPs (match='flops':
    k cf routed + shared widths) or in total parameters (match='params': routed + shared + router)."""
    moe, d = config.moe, config.model.d_model
    if match == "flops":
        return int(round(experts_per_token(moe) * moe.expert_mlp_dim + shared_mlp_dim(moe)))
    if match == "params":
        routed_and_shared = 3 * d * (moe.num_experts * moe.expert_mlp_dim + shared_mlp_dim(moe))
        return int(round((routed_and_shared + d * router_columns(moe)) / (3 * d)))
    raise ValueError(f"match = {match!r}: expected 'flops' or 'params'")
