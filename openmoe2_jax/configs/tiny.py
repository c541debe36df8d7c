"""The CPU default: a tiny masked-diffusion LM on the bundled King James Bible, a few minutes on 2 cores."""
from openmoe2_jax.configs import base


def get_config(arg=None):
    c = base.get_config(arg)
    c.model.update(num_layers=4, d_model=128, num_heads=4, num_kv_heads=4, mlp_dim=512,
                 dtype="float32")
    c.objective.random_length_buckets = (32, 64, 96)
    c.data.update(seq_len=128, validation_fraction=0.02, num_epochs=0)
    c.train.update(steps=200, batch_size=8, learning_rate=3e-3, warmup_steps=20)
    c.eval.update(every_steps=100, num_batches=4)
    c.checkpoint.update(every_steps=100, keep=2)
    c.log_every_steps = 10
    return c
