"""The CPU default (README command 1): a masked-diffusion MoE on the bundled King James Bible that
trains in about 5 minutes on 2 cores and reports validation bits/byte beside xz and bz2.

A 16,384-rank byte-level BPE trained on the run's training split (data/bpe.py); 4 x 128, 16 routed
experts of width 128 + 2 shared, k = 2: active FFN width (2 + 2) x 128 = 512, the dense width
(`model.mlp_dim`), so `--config.model.ffn=dense` is the FLOPs-matched dense model. Seq 128 x batch 8
for 1,200 steps (1.2 M tokens, about 1.3 epochs), learning rate 1.4e-2, the head's logits only at the
masked positions (objective.masked_head: exact, and what pays for twice the steps of batch 16 in
the same minutes). Vocabulary, batch and learning rate are the best of a measured sweep at this size
and time (vocabulary 4,096-20,000, learning rate 1e-2-3e-2, width, batch, sequence length, schedule:
docs/cpu_study.md, "The CPU default"). This is a bigger model than the study's `cpu` scale
(configs/scales.py), which trades size for seeds.
"""
from openmoe2_jax.configs import base


def get_config(arg=None):
    c = base.get_config(arg)
    c.model.update(num_layers=4, d_model=128, num_heads=4, num_kv_heads=4, mlp_dim=512,
                   dtype="float32")
    c.moe.update(num_experts=16, num_shared_experts=2, expert_mlp_dim=128, top_k=2)
    c.objective.update(random_length_buckets=(32, 64, 96), masked_head=0.75)
    c.data.update(tokenizer="bpe:16384", seq_len=128, validation_fraction=0.02, num_epochs=0)
    c.train.update(steps=1200, batch_size=8, learning_rate=1.4e-2, warmup_steps=120)
    # 14 batches of 8: the 112 held-out rows the earlier batch-16 default read in 7
    c.eval.update(every_steps=400, num_batches=14, mc_samples=4, compressors=("xz", "bz2"))
    c.checkpoint.update(every_steps=400, keep=2)
    c.log_every_steps = 50
    return c
