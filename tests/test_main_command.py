"""The README's main command (4 steps unless --full): progress, TensorBoard events, checkpoints, summary."""
import json
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from openmoe2_jax.configs import default


@pytest.mark.slow
def test_readme_main_command_trains_the_default(tmp_path, full):
    """Reduced (CI): the README's command at 4 steps, logging, evaluating and saving every 2 steps.
    --full: the command exactly as the README gives it, to its last step (about 5 minutes)."""
    workdir = tmp_path / "default"
    c = default.get_config()
    reduced = dict(steps=4, log=2, evaluate=2, save=2)
    n = (dict(steps=c.train.steps, log=c.log_every_steps, evaluate=c.eval.every_steps,
              save=c.checkpoint.every_steps) if full else reduced)
    flags = [] if full else [
        f"--config.train.steps={n['steps']}", "--config.train.warmup_steps=1",
        f"--config.log_every_steps={n['log']}", f"--config.eval.every_steps={n['evaluate']}",
        f"--config.checkpoint.every_steps={n['save']}"]
    out = subprocess.run(
        [sys.executable, "-m", "openmoe2_jax.train", f"--workdir={workdir}", *flags],
        capture_output=True, text=True, env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"),
        timeout=1800 if full else 600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    progress = [l for l in lines if l.startswith("step ") and "tok/s" in l]
    assert len(progress) == n["steps"] // n["log"] and "ETA" in progress[0] and "loss" in progress[0]
    assert any("validation loss" in l for l in lines)
    assert lines[-1].startswith(f"done: {n['steps']} steps") and "tokens seen" in lines[-1] and "wall" in lines[-1]
    assert "bits/byte, xz -9e " in lines[-1] and "bz2 -9 " in lines[-1]

    acc = EventAccumulator(str(workdir / "tensorboard"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "eval/loss",
                "perf/tokens_per_second", "perf/step_seconds", "perf/model_flops_per_second"):
        assert tag in scalars, tag
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(n["log"], n["steps"] + 1, n["log"]))
    assert [e.step for e in acc.Scalars("eval/loss")] == list(range(n["evaluate"], n["steps"] + 1, n["evaluate"]))

    saved = list(range(n["save"], n["steps"] + 1, n["save"]))[-c.checkpoint.keep:]
    assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == saved
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == n["steps"] and summary["tokens_seen"] == n["steps"] * c.train.batch_size * c.data.seq_len
    assert 0 < summary["final_validation_loss"] < 20
    # bits/byte = nats/token x tokens / ln 2 / bytes: a token of the default BPE is 2.5-6 bytes.
    assert 0.24 < summary["final_validation_bits_per_byte"] / summary["final_validation_loss"] < 0.6
    ranks = c.data.tokenizer.removeprefix("bpe:")
    assert sorted(os.listdir(workdir / "tokenizer")) == [f"bpe_{ranks}.json", f"bpe_{ranks}.tiktoken"]
    assert set(summary["compressor_bits_per_byte"]) == {"xz", "bz2"}
    assert all(1.0 < v < 3.0 for v in summary["compressor_bits_per_byte"].values())
    assert json.loads((workdir / "config.json").read_text())["model"]["d_model"] == 128
