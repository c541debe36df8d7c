"""Multi-process training for real: two local CPU processes (jax.distributed, gloo collectives)."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from openmoe2_jax.runtime import restore

ARGS = ["--config.model.num_layers=2", "--config.model.d_model=32", "--config.model.num_heads=2",
        "--config.model.num_kv_heads=2", "--config.model.mlp_dim=64", "--config.moe.num_experts=4",
        "--config.moe.expert_mlp_dim=16", "--config.data.seq_len=32",
        "--config.objective.random_length_buckets=(8,16)", "--config.train.steps=4",
        "--config.train.warmup_steps=1", "--config.eval.every_steps=0", "--config.eval.num_batches=2",
        "--config.eval.compressors=()", "--config.checkpoint.every_steps=2", "--config.log_every_steps=1",
        "--config.moe.group_tokens=128"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(workdir):
    acc = EventAccumulator(os.path.join(workdir, "tensorboard"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/loss")}


@pytest.mark.slow
def test_two_processes_match_one_and_their_checkpoint_restores_in_one(tmp_path):
    cmd = lambda w: [sys.executable, "-m", "openmoe2_jax.train", f"--workdir={w}", *ARGS]
    env = lambda n: dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    subprocess.run(cmd(single), check=True, env=env(2), capture_output=True, timeout=600)
    port = _free_port()
    procs = [subprocess.Popen(cmd(multi) + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                            f"--process_id={i}"], env=env(1), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    # The same global batch on 2 devices in 1 process and on 1 device in each of 2 processes.
    one, two = _losses(single), _losses(multi)
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    np.testing.assert_allclose([two[s] for s in range(1, 5)], [one[s] for s in range(1, 5)], rtol=1e-5)
    # Only process 0 writes logs; the checkpoint both wrote restores in this one process.
    assert len(os.listdir(os.path.join(multi, "tensorboard"))) == 1
    a, b = restore.load(single), restore.load(multi)
    assert a.step == b.step == 4
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6),
                 a.params, b.params)
