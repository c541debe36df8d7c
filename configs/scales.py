"""Scales of the ablation study. Each keeps the paper default's structure (routing, shared experts,
k, router, losses) and changes the size, the data budget and the schedule.

  paper  docs/science.md §3: 28 x 2048, 64 + 2 experts of 640, k = 6 (8.15B total / 1.76B active),
         seq 4096, batch 1024, 24,000 steps (~100B tokens, 1 epoch), bf16.
  small  one host: 8 x 512, 64 + 2 experts of 128, k = 6, seq 1024, batch 64, 5,000 steps.
  cpu    the CPU study (docs/cpu_study.md), about 80 s a run on 2 cores: a 2,048-rank byte-level BPE
         trained on the run's training split, so the transformer body, not the output head, does most
         of the work (the head is 37% of the 2.2 MFLOPs/token); 4 x 64, 16 + 2 experts of 32, k = 2
         (active FFN (2 + 2) x 32 = 128 = the dense width), seq 128, batch 16, 400 steps (819,200
         tokens, ~0.7 epochs of the bundled corpus), 8 evaluations of 8 x 16 held-out rows.
  smoke  cpu for 3 steps: checks the plumbing end to end (CI).
In every scale `model.mlp_dim` is the FLOPs-matched dense width, so `model.ffn=dense` is that baseline.
"""
from __future__ import annotations

from openmoe2_jax.configs import base

# The cpu scale, chosen by measurement: docs/cpu_study.md has the sizes, speeds and learning rates tried.
CPU_TOKENIZER = "bpe:2048"
CPU_LAYERS, CPU_WIDTH = 4, 64
CPU_STEPS = 400
CPU_LR = 1e-2

SCALES = ("paper", "small", "cpu", "smoke")


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
    c.model.update(num_layers=CPU_LAYERS, d_model=CPU_WIDTH, num_heads=4, num_kv_heads=4, mlp_dim=128,
                   dtype="float32")
    c.moe.update(num_experts=16, expert_mlp_dim=32, top_k=2)
    c.objective.random_length_buckets = (32, 64, 96)
    c.data.update(tokenizer=CPU_TOKENIZER, seq_len=128, validation_fraction=0.02, num_epochs=0)
    c.train.update(steps=CPU_STEPS, batch_size=16, learning_rate=CPU_LR, warmup_steps=CPU_STEPS // 20)
    c.eval.update(every_steps=CPU_STEPS // 8, num_batches=8, mc_samples=2)
    c.checkpoint.update(every_steps=CPU_STEPS // 2, keep=1)
    c.log_every_steps = 25
    if scale == "smoke":
        c.train.update(steps=3, warmup_steps=1)
        c.eval.update(every_steps=2, num_batches=1, mc_samples=1)
        c.checkpoint.update(every_steps=3)
        c.log_every_steps = 1
    return c
