"""The CPU default: a tiny masked-diffusion MoE on the bundled King James Bible, minutes on 2 cores.

16 routed experts of width 128 + 2 shared, k = 2: active FFN width (2 + 2) x 128 = 512, the dense
width (`model.mlp_dim`), so `--config.model.ffn=dense` is the FLOPs-matched dense model.
"""
from openmoe2_jax.configs import base


def get_config(arg=None):
    c = base.get_config(arg)
    c.model.update(num_layers=4, d_model=128, num_heads=4, num_kv_heads=4, mlp_dim=512,
                 dtype="float32")
    c.moe.update(num_experts=16, num_shared_experts=2, expert_mlp_dim=128, top_k=2)
    c.objective.random_length_buckets = (32, 64, 96)
    c.data.update(seq_len=128, validation_fraction=0.02, num_epochs=0)
    c.train.update(steps=200, batch_size=8, learning_rate=3e-3, warmup_steps=20)
    c.eval.update(every_steps=100, num_batches=4, compressors=("xz", "bz2"))
    c.checkpoint.update(every_steps=100, keep=2)
    c.log_every_steps = 10
    return c
