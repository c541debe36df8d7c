"""Scales of the ablation study. Each keeps the paper default's structure (routing, shared experts,
k, router, losses) and changes the size, the data budget and the schedule.

  paper  docs/science.md §3: 28 x 2048, 64 + 2 experts of 640, k = 6 (8.15B total / 1.76B active),
         seq 4096, batch 1024, 24,000 steps (~100B tokens, 1 epoch), bf16.
  small  one host: 8 x 512, 64 + 2 experts of 128, k = 6, seq 1024, batch 64, 5,000 steps.
  tiny   this 2-core CPU, about 1.5 minutes a run: 4 x 64, 16 + 2 experts of 32, k = 2 (active FFN
         (2 + 2) x 32 = 128 = the dense width), seq 128, batch 8, 100 steps on the bundled corpus.
  smoke  tiny for 3 steps: checks the plumbing end to end (CI).
In every scale `model.mlp_dim` is the FLOPs-matched dense width, so `model.ffn=dense` is that baseline.
"""
from __future__ import annotations

from openmoe2_jax.configs import base

SCALES = ("paper", "small", "tiny", "smoke")


def get(scale: str):
    """The study's default model (EC diffusion MoE) at `scale`."""
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r}: expected one of {SCALES}")
    c = base.get_config()
    c.model.mlp_dim = 5120  # (6 + 2) x 640: the FLOPs-matched dense width of the paper MoE
    if scale == "paper":
        return c
    if scale == "small":
        c.model.update(num_layers=8, d_model=512, num_heads=8, num_kv_heads=8, mlp_dim=1024)
        c.moe.update(expert_mlp_dim=128)
        c.objective.random_length_buckets = (256, 512, 768)
        c.data.update(seq_len=1024)
        c.train.update(steps=5000, batch_size=64, learning_rate=1e-3, warmup_steps=250)
        c.eval.update(every_steps=500, num_batches=8)
        c.checkpoint.update(every_steps=500)
        c.log_every_steps = 50
        return c
    c.model.update(num_layers=4, d_model=64, num_heads=4, num_kv_heads=4, mlp_dim=128, dtype="float32")
    c.moe.update(num_experts=16, expert_mlp_dim=32, top_k=2)
    c.objective.random_length_buckets = (32, 64, 96)
    c.data.update(seq_len=128, validation_fraction=0.02, num_epochs=0)
    c.train.update(steps=100, batch_size=8, learning_rate=3e-3, warmup_steps=10)
    c.eval.update(every_steps=50, num_batches=4, mc_samples=2)
    c.checkpoint.update(every_steps=50, keep=1)
    c.log_every_steps = 10
    if scale == "smoke":
        c.train.update(steps=3, warmup_steps=1)
        c.eval.update(every_steps=2, num_batches=1, mc_samples=1)
        c.checkpoint.update(every_steps=3)
        c.log_every_steps = 1
    return c
