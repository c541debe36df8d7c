"""Resuming: N steps + restart + N steps == 2N uninterrupted steps, bit for bit on CPU."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from openmoe2_jax.data import bpe, pipeline
from openmoe2_jax.runtime import restore
from openmoe2_jax.train import loop


def quiet(*args):
    del args


def test_stop_and_restart_gives_identical_losses(config, tmp_path):
    config.objective.random_length_prob = 0.5  # exercise the random-length path across the restart
    reference = loop.train(config, str(tmp_path / "a"), log=quiet)
    first = loop.train(config, str(tmp_path / "b"), stop_at_step=3, log=quiet)
    second = loop.train(config, str(tmp_path / "b"), log=quiet)
    assert sorted(first.train_losses) == [1, 2, 3] and sorted(second.train_losses) == [4, 5, 6]
    assert second.resumed_from == 3
    assert {**first.train_losses, **second.train_losses} == reference.train_losses  # exact equality
    assert second.final_validation_loss == reference.final_validation_loss


def test_bpe_run_saves_its_vocabulary_and_a_resume_or_eval_loads_it(config, tmp_path, monkeypatch):
    config.data.tokenizer = "bpe:512"
    reference = loop.train(config, str(tmp_path / "a"), log=quiet)
    first = loop.train(config, str(tmp_path / "b"), stop_at_step=3, log=quiet)
    # Saved: the ranks of the training split, in tiktoken's format, with their sha256.
    saved = tmp_path / "b" / "tokenizer"
    expected = bpe.train(pipeline.read_split(config.data, config.seed).train, 512)
    assert bpe.parse((saved / "bpe_512.tiktoken").read_bytes(), "saved") == expected
    digest = hashlib.sha256((saved / "bpe_512.tiktoken").read_bytes()).hexdigest()
    assert json.loads((saved / "bpe_512.json").read_text())["sha256"] == digest

    def no_training(*args):
        raise AssertionError("a run with a saved vocabulary trained another one")

    monkeypatch.setattr(bpe, "train", no_training)
    second = loop.train(config, str(tmp_path / "b"), log=quiet)
    assert second.resumed_from == 3
    assert {**first.train_losses, **second.train_losses} == reference.train_losses  # exact equality
    trained = restore.load(str(tmp_path / "b"))
    assert trained.tokenizer.record == dict(tokenizer="bpe:512", sha256=digest, num_ids=513)
    assert trained.tokenizer.mask_id == 513 and trained.model_cfg.vocab_size == 640  # 514 rows padded
    assert trained.params["embedding"].shape == (640, config.model.d_model)


def _losses_per_file(tb_dir):
    out = []
    for name in sorted(os.listdir(tb_dir)):
        acc = EventAccumulator(os.path.join(tb_dir, name), purge_orphaned_data=False)
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            out.append({e.step: e.value for e in acc.Scalars("train/loss")})
        else:
            out.append({})  # killed before its first flush
    return out


def _train_cmd(workdir, checkpoint_every=2):
    return [sys.executable, "-m", "openmoe2_jax.train", f"--workdir={workdir}",
            "--config.model.num_layers=2", "--config.model.d_model=32", "--config.model.num_heads=2",
            "--config.model.num_kv_heads=2", "--config.model.mlp_dim=64", "--config.data.seq_len=32",
            "--config.objective.random_length_buckets=(8,16)", "--config.train.steps=12",
            "--config.train.warmup_steps=2", "--config.eval.every_steps=0", "--config.eval.compressors=()",
            f"--config.checkpoint.every_steps={checkpoint_every}", "--config.log_every_steps=1"]


ENV = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The losses of `_train_cmd`'s 12 steps run without interruption, {step: loss} (checkpointing
    does not change them, so both tests below compare with this one run)."""
    ref_dir = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_train_cmd(ref_dir), check=True, env=ENV, capture_output=True)
    (reference,) = _losses_per_file(ref_dir / "tensorboard")
    assert sorted(reference) == list(range(1, 13))
    return reference


@pytest.mark.slow
def test_kill_dash_9_then_same_command_resumes_bit_identically(tmp_path, uninterrupted):
    reference, dir_ = uninterrupted, tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(dir_), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = dir_ / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline:
        done = [d for d in (os.listdir(ckpt_dir) if ckpt_dir.exists() else []) if d.isdigit()]
        if done and max(map(int, done)) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(_train_cmd(dir_), check=True, env=ENV, capture_output=True)
    killed, resumed = _losses_per_file(dir_ / "tensorboard")
    assert min(resumed) >= 5 and max(resumed) == 12  # resumed from a checkpoint at step >= 4
    # Every step, whichever run logged it, has the uninterrupted run's loss, exactly.
    for run in (killed, resumed):
        for step, value in run.items():
            assert value == reference[step], step
    assert set(killed) | set(resumed) == set(reference)


@pytest.mark.slow
def test_sigterm_saves_at_a_step_boundary_and_the_restart_loses_nothing(tmp_path, uninterrupted):
    reference, dir_ = uninterrupted, tmp_path / "preempted"
    cmd = lambda d: _train_cmd(d, checkpoint_every=1000)  # only the preemption saves

    proc = subprocess.Popen(cmd(dir_), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (dir_ / "tensorboard").exists():
        time.sleep(0.05)
    while time.time() < deadline:
        logged = _losses_per_file(dir_ / "tensorboard")
        if logged and logged[0] and max(logged[0]) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stop requested (SIGTERM)" in out
    saved = sorted(int(d) for d in os.listdir(dir_ / "checkpoints") if d.isdigit())
    assert len(saved) == 1 and 3 <= saved[0] < 12
    subprocess.run(cmd(dir_), check=True, env=ENV, capture_output=True)
    first, resumed = _losses_per_file(dir_ / "tensorboard")
    assert max(first) == saved[0] and min(resumed) == saved[0] + 1   # nothing lost, nothing repeated
    assert {**first, **resumed} == reference
