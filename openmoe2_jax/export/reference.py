"""The reference forward pass of an export, in NumPy: the porting spec (docs/export.md).

Reads only an export's files (config.json and the safetensors tensors, through the `safetensors`
package) and computes logits [batch, seq, vocab_size] in float32. It imports nothing from the JAX model:
everything it does is stated by config.json, and the tests check that it equals the JAX model's logits.
A port to another framework can follow it function by function.

    config, weights = reference.load("export_dir")
    logits = reference.forward(config, weights, tokens)      # tokens [batch, seq] int

Conventions: every weight is applied as `x @ W` (input dimension first); no biases; all arithmetic in
float32 (bfloat16 exports are widened on loading). Every row holds real tokens (no padding).
"""
from __future__ import annotations

import json
import math
import os

import ml_dtypes  # noqa: F401  (registers NumPy's bfloat16, which safetensors needs to read BF16 tensors)
import numpy as np
from safetensors import safe_open


# ----- files

def load(directory: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, {tensor name: float32 array}) of an export: one `model.safetensors`, or the shards
    that `model.safetensors.index.json`'s weight_map names. The tensors must be exactly those
    `expected_shapes(config)` lists (ValueError naming the first differences otherwise)."""
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shard_files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        shard_files = ["model.safetensors"]
    weights = {}
    for file in shard_files:
        with safe_open(os.path.join(directory, file), framework="np") as f:
            for name in f.keys():
                weights[name] = f.get_tensor(name).astype(np.float32)
    expected = expected_shapes(config)
    problems = [f"{n}: missing" for n in expected if n not in weights]
    problems += [f"{n}: not described by config.json" for n in weights if n not in expected]
    problems += [f"{n}: shape {weights[n].shape}, config.json implies {expected[n]}"
                 for n in expected if n in weights and weights[n].shape != expected[n]]
    if problems:
        raise ValueError(f"{directory}: the tensors do not match config.json: {'; '.join(problems[:4])}")
    return config, weights


def is_moe_layer(config: dict, i: int) -> bool:
    return config["ffn"] == "moe" and i >= config["moe"]["first_dense_layers"]


def expected_shapes(config: dict) -> dict[str, tuple]:
    """Every tensor of an export and its shape, from config.json alone."""
    V, d, L = config["vocab_size"], config["d_model"], config["num_layers"]
    h, kvh, hd, F = config["num_heads"], config["num_kv_heads"], config["head_dim"], config["dense_mlp_dim"]
    shapes = {"embedding": (V, d)}
    for i in range(L):
        p = f"layers.{i}."
        shapes.update({p + "attn_norm.scale": (d,), p + "attn.wq": (d, h, hd), p + "attn.wk": (d, kvh, hd),
                       p + "attn.wv": (d, kvh, hd), p + "attn.wo": (h, hd, d), p + "ffn_norm.scale": (d,)})
        if config["qk_norm"]:
            shapes.update({p + "attn.q_norm.scale": (hd,), p + "attn.k_norm.scale": (hd,)})
        if not is_moe_layer(config, i):
            shapes.update({p + "ffn.w_gate": (d, F), p + "ffn.w_up": (d, F), p + "ffn.w_down": (F, d)})
            continue
        m = config["moe"]
        E, f, S, Fs = m["num_experts"], m["expert_mlp_dim"], m["num_shared_experts"], m["shared_mlp_dim"]
        router_gated = m["shared_experts"] == "router_gated"
        shapes[p + "moe.router"] = (d, E + (S if router_gated else 0))
        shapes.update({p + "moe.experts.w_gate": (E, d, f), p + "moe.experts.w_up": (E, d, f),
                       p + "moe.experts.w_down": (E, f, d)})
        if m["shared_experts"] == "fused":
            shapes.update({p + "moe.shared.w_gate": (d, Fs), p + "moe.shared.w_up": (d, Fs),
                           p + "moe.shared.w_down": (Fs, d)})
        elif router_gated:
            shapes.update({p + "moe.shared_experts.w_gate": (S, d, Fs // S),
                           p + "moe.shared_experts.w_up": (S, d, Fs // S),
                           p + "moe.shared_experts.w_down": (S, Fs // S, d)})
    shapes.update({"final_norm.scale": (d,), "head": (d, V)})
    return shapes


# ----- building blocks

def rms_norm(x, scale, eps):
    """x / sqrt(mean(x^2 over the last axis) + eps) * scale."""
    return x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + np.float32(eps)) * scale


def silu(x):
    with np.errstate(over="ignore"):
        return x / (np.float32(1) + np.exp(-x))


def swiglu(x, w_gate, w_up, w_down):
    """(silu(x W_gate) * (x W_up)) W_down. x [..., d]; w_gate, w_up [d, f]; w_down [f, d]."""
    return (silu(x @ w_gate) * (x @ w_up)) @ w_down


def rope(x, theta):
    """Rotary embedding, rotate-half form, positions 0..S-1. x [B, S, heads, hd]: with half = hd / 2,
    x1 = x[..., :half], x2 = x[..., half:], angle[s, i] = s * theta^(-i / half):
    out = concat(x1 cos - x2 sin, x2 cos + x1 sin)."""
    S, half = x.shape[1], x.shape[-1] // 2
    angle = np.arange(S)[:, None] * theta ** (-np.arange(half) / half)           # [S, half], float64
    cos = np.cos(angle).astype(np.float32)[None, :, None, :]
    sin = np.sin(angle).astype(np.float32)[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def attention(config, w, p, x):
    """Grouped-query attention with per-head QK RMSNorm and RoPE. x [B, S, d] -> [B, S, d].

    Query head j uses key/value head j // (num_heads / num_kv_heads). Scores q.k / sqrt(head_dim);
    causal attention (objective ar) masks keys after the query, bidirectional (diffusion) none."""
    q = np.einsum("bsd,dhk->bshk", x, w[p + "attn.wq"])
    k = np.einsum("bsd,dhk->bshk", x, w[p + "attn.wk"])
    v = np.einsum("bsd,dhk->bshk", x, w[p + "attn.wv"])
    if config["qk_norm"]:
        q = rms_norm(q, w[p + "attn.q_norm.scale"], config["norm_eps"])
        k = rms_norm(k, w[p + "attn.k_norm.scale"], config["norm_eps"])
    q, k = rope(q, config["rope_theta"]), rope(k, config["rope_theta"])
    repeat = config["num_heads"] // config["num_kv_heads"]
    k, v = np.repeat(k, repeat, axis=2), np.repeat(v, repeat, axis=2)
    scores = np.einsum("bqhk,bshk->bhqs", q * np.float32(config["head_dim"] ** -0.5), k)
    if config["attention"] == "causal":
        S = x.shape[1]
        scores = np.where(np.tril(np.ones((S, S), bool)), scores, -np.inf)
    out = np.einsum("bhqs,bshk->bqhk", softmax(scores), v)
    return np.einsum("bqhk,hkd->bqd", out, w[p + "attn.wo"])


# ----- mixture of experts

def top_indices(values, count):
    """Indices of the `count` largest entries of a 1-D array, largest first; equal values in increasing
    index order."""
    return np.argsort(-values, kind="stable")[:count]


def capacity(tokens, m):
    """Slots per expert in a group of `tokens` tokens (config.json moe.capacity_rule)."""
    x = tokens * m["top_k"] * m["capacity_factor"] / m["num_experts"]
    slots = math.floor(x) if m["routing"] == "ec" else math.ceil(x)
    return min(max(int(slots), 1), tokens)


def gates(logits, chosen, kind):
    """Per-token gate weights over the chosen entries. logits, chosen [N, X] -> [N, X] (0 off `chosen`).

    softmax: softmax of the chosen logits; sigmoid: sigmoid of the chosen logits divided by their sum
    (+1e-20); pre_softmax: softmax over all X logits, kept where chosen. A token with nothing chosen
    gets 0."""
    if kind == "softmax":
        top = np.max(np.where(chosen, logits, -np.inf), axis=-1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0)
        e = np.where(chosen, np.exp(logits - top), 0)
        total = e.sum(-1, keepdims=True)
        return e / np.where(total > 0, total, 1)
    if kind == "sigmoid":
        with np.errstate(over="ignore"):
            s = np.where(chosen, 1 / (1 + np.exp(-logits)), 0)
        return s / (s.sum(-1, keepdims=True) + np.float32(1e-20))
    if kind == "pre_softmax":
        return np.where(chosen, softmax(logits), 0)
    raise ValueError(f"config.json moe.gate = {kind!r}: expected softmax, sigmoid or pre_softmax")


def route_group(m, logits):
    """One routing group's decisions. logits [N, E + S'] (S' = shared experts if router-gated, else 0).

    Returns (weight [N, E]: each routed expert's weight for each token, 0 where not routed;
    shared_weight [N, S'])."""
    N, E, k = logits.shape[0], m["num_experts"], m["top_k"]
    routed, shared = logits[:, :E], logits[:, E:]
    if m["routing"] == "ec":
        # Expert e takes the C tokens with the largest routed logits in its column.
        chosen = np.zeros((N, E), bool)
        for e in range(E):
            chosen[top_indices(routed[:, e], capacity(N, m)), e] = True
        g = gates(logits, np.concatenate([chosen, np.ones(shared.shape, bool)], -1), m["gate"])
        weight, shared_weight = g[:, :E], g[:, E:]
        if m["scaling_table"] is not None:   # a token chosen by n experts: routed weights x table[n]
            weight = weight * np.asarray(m["scaling_table"], np.float32)[chosen.sum(-1)][:, None]
        return weight, shared_weight
    # Token choice: each token's top-k experts; gates over those k logits (and the shared experts').
    expert = np.stack([top_indices(row, k) for row in routed])                    # [N, k]
    values = np.take_along_axis(routed, expert, -1)
    g = gates(np.concatenate([values, shared], -1), np.ones((N, k + shared.shape[1]), bool), m["gate"])
    g, shared_weight = g[:, :k], g[:, k:]
    if m["scaling_factor"] is not None:
        g = g * np.float32(m["scaling_factor"])
    keep = np.ones((N, k), bool)
    if m["routing"] == "tc":
        # Capacity: first choices of tokens 0..N-1, then second choices, ...; an expert keeps its first C.
        slots, used = capacity(N, m), np.zeros(E, int)
        for j in range(k):
            for t in range(N):
                keep[t, j] = used[expert[t, j]] < slots
                used[expert[t, j]] += keep[t, j]
    weight = np.zeros((N, E), np.float32)
    for j in range(k):
        weight[np.arange(N), expert[:, j]] += np.where(keep[:, j], g[:, j], 0)
    return weight, shared_weight


def routing_groups(m, x, tokens_per_group):
    """x [B, S, d] -> [G, N, d]: the tokens that route together (config.json moe.routing_level).

    batch: N consecutive tokens of the flattened [B * S] batch, N = moe.tokens_per_group (as trained);
    sequence: each row; token: every token alone (the decisions do not depend on the grouping)."""
    B, S, d = x.shape
    level = m["routing_level"]
    if level == "sequence":
        return x
    if level == "token":
        return x.reshape(B * S, 1, d)
    n = tokens_per_group or m["tokens_per_group"]
    if (B * S) % n:
        raise ValueError(f"batch x seq = {B * S} tokens is not a multiple of the {n} tokens of a routing "
                         "group (moe.tokens_per_group, as trained); pass tokens_per_group to route "
                         "other groups.")
    return x.reshape(B * S // n, n, d)


def moe(config, w, p, x, tokens_per_group=None):
    """The MoE FFN: router -> routed SwiGLU experts, weighted, + shared experts. x [B, S, d] -> [B, S, d]."""
    m = config["moe"]
    xg = routing_groups(m, x, tokens_per_group)                                 # [G, N, d]
    y = np.zeros_like(xg)
    for g, xs in enumerate(xg):
        weight, shared_weight = route_group(m, xs @ w[p + "moe.router"])
        for e in range(m["num_experts"]):
            rows = np.nonzero(weight[:, e])[0]
            if rows.size:
                out = swiglu(xs[rows], *(w[p + f"moe.experts.w_{n}"][e] for n in ("gate", "up", "down")))
                y[g, rows] += weight[rows, e, None] * out
        if m["shared_experts"] == "fused":     # one SwiGLU of width shared_mlp_dim, weight 1
            y[g] += swiglu(xs, *(w[p + f"moe.shared.w_{n}"] for n in ("gate", "up", "down")))
        elif m["shared_experts"] == "router_gated":
            for s in range(m["num_shared_experts"]):
                out = swiglu(xs, *(w[p + f"moe.shared_experts.w_{n}"][s] for n in ("gate", "up", "down")))
                y[g] += shared_weight[:, s, None] * out
    return y.reshape(x.shape)


# ----- the model

def forward(config: dict, weights: dict, tokens, tokens_per_group: int | None = None) -> np.ndarray:
    """Logits [B, S, vocab_size] float32 of tokens [B, S] (ids < vocab_size; the diffusion mask id is
    config.json tokenizer.mask_id).

    embedding -> num_layers x [x += attention(rms_norm(x)); x += ffn(rms_norm(x))] -> rms_norm -> head.
    The FFN is a SwiGLU in dense layers (all of a dense model, the first moe.first_dense_layers of an
    MoE one), the MoE FFN elsewhere. tokens_per_group overrides the batch-level routing group size.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.min() < 0 or tokens.max() >= config["vocab_size"]:
        raise ValueError(f"tokens: expected [batch, seq] ids in [0, {config['vocab_size']})")
    w, eps = weights, config["norm_eps"]
    x = w["embedding"][tokens]                                                  # [B, S, d]
    for i in range(config["num_layers"]):
        p = f"layers.{i}."
        x = x + attention(config, w, p, rms_norm(x, w[p + "attn_norm.scale"], eps))
        h = rms_norm(x, w[p + "ffn_norm.scale"], eps)
        if is_moe_layer(config, i):
            x = x + moe(config, w, p, h, tokens_per_group)
        else:
            x = x + swiglu(h, w[p + "ffn.w_gate"], w[p + "ffn.w_up"], w[p + "ffn.w_down"])
    return (rms_norm(x, w["final_norm.scale"], eps) @ w["head"]).astype(np.float32)
