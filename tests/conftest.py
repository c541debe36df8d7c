"""Tests run on the CPU with 8 fake devices, so meshes, shardings and collectives are real."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

from openmoe2_jax.configs import default  # noqa: E402


def small_config():
    """A config that trains in well under a second per step on 2 CPU cores."""
    c = default.get_config()
    c.data.tokenizer = "cl100k_base"  # the paper tokenizer; tests that need a trained BPE ask for one
    c.model.update(num_layers=2, d_model=32, num_heads=2, num_kv_heads=2, mlp_dim=64)
    c.moe.update(num_experts=4, num_shared_experts=2, expert_mlp_dim=16, top_k=2)  # active width 64
    c.objective.random_length_buckets = (8, 16, 24)
    c.data.update(seq_len=32)
    c.train.update(steps=6, batch_size=8, warmup_steps=2)
    c.eval.update(every_steps=0, num_batches=2, compressors=())
    c.checkpoint.update(every_steps=3, keep=3, async_save=False)
    c.log_every_steps = 1
    return c


def tiny_bpe_config(directory, words, rows: int):
    """small_config on a corpus of `rows` random 60-word rows drawn from `words` (written to
    directory/corpus.jsonl), with a bpe:300 vocabulary, 1 layer, 2 steps and a checkpoint at the end."""
    import json  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    corpus = directory / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": " ".join(rng.choice(words, 60))}) for _ in range(rows)))
    c = small_config()
    c.data.update(source="jsonl", paths=(str(corpus),), tokenizer="bpe:300")
    c.model.num_layers = 1
    c.train.update(steps=2, warmup_steps=1)
    c.eval.num_batches = 1
    c.checkpoint.every_steps = 2
    return c


@pytest.fixture
def config():
    return small_config()


def pytest_report_header(config):
    del config
    return f"jax {jax.__version__}, {jax.device_count()} devices ({jax.devices()[0].platform})"
