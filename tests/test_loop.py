"""When the trainer's host waits for the device: only at log, eval, checkpoint and final steps, a log
step's numbers one step late; the multi-process preemption check costs a collective only every
`vote_every` steps; and the progress lines that long loops print."""
import numpy as np
import pytest

from openmoe2_jax.progress import Progress
from openmoe2_jax.train import loop, preemption


class _Loss:
    """A step's loss that records, when the host reads it, how many steps had been dispatched."""

    def __init__(self, value, step, dispatched, reads):
        self.value, self.step, self.dispatched, self.reads = value, step, dispatched, reads

    def __float__(self):
        self.reads.append((self.step, len(self.dispatched)))
        return float(np.asarray(self.value))


def test_the_loop_reads_losses_only_at_log_steps_and_one_step_late(config, tmp_path, monkeypatch):
    dispatched, reads = [], []
    jit_train_step = loop.jit_train_step

    def recording_jit_train_step(*args, **kwargs):
        step_fn = jit_train_step(*args, **kwargs)

        def step(state, batch):
            state, metrics = step_fn(state, batch)
            dispatched.append(True)
            return state, dict(metrics, loss=_Loss(metrics["loss"], len(dispatched), dispatched, reads))
        return step

    monkeypatch.setattr(loop, "jit_train_step", recording_jit_train_step)
    config.train.update(steps=12, warmup_steps=1)
    config.log_every_steps = 4
    config.checkpoint.every_steps = 100  # only the final step saves
    config.eval.update(every_steps=6, compressors=())
    summary = loop.train(config, str(tmp_path / "run"), log=lambda line: None)

    assert sorted(summary.train_losses) == list(range(1, 13))
    assert {s for s, _ in reads} == set(range(1, 13))  # every loss is read (a log step's twice)
    # Log step 4: read once step 5 is queued. Eval step 6: read at once (the eval waits anyway).
    # Log step 8: once step 9 is queued. Step 12 (last, log + checkpoint): at once.
    expected = {1: 5, 2: 5, 3: 5, 4: 5, 5: 6, 6: 6, 7: 9, 8: 9, 9: 12, 10: 12, 11: 12, 12: 12}
    assert all(n == expected[s] for s, n in reads), sorted(reads)


@pytest.mark.parametrize("vote_every", [1, 5])
def test_multiprocess_preemption_gathers_votes_only_every_vote_every_steps(monkeypatch, vote_every):
    gathers, notices = [], []
    monkeypatch.setattr(preemption.jax, "process_count", lambda: 2)
    monkeypatch.setattr(preemption.multihost_utils, "reached_preemption_sync_point",
                        lambda step: notices.append(step) or False)
    monkeypatch.setattr(preemption.multihost_utils, "process_allgather",
                        lambda x: gathers.append(True) or np.stack([x, x]))
    watch = preemption.PreemptionWatch(vote_every=vote_every)
    assert not any(watch.should_stop(step) for step in range(1, 11))
    assert len(notices) == 10 and len(gathers) == 10 // vote_every
    watch.request()  # SIGTERM seen by this host's handler only: acted on at the next vote
    stops = [watch.should_stop(step) for step in range(11, 16)]
    assert stops == ([True] * 5 if vote_every == 1 else [False] * 4 + [True])


def test_progress_lines_at_most_every_interval_and_always_the_last():
    now, lines = [0.0], []
    progress = Progress("eval text", 100, "batches", log=lines.append, every_seconds=10, clock=lambda: now[0])
    for done in range(1, 101):
        now[0] += 0.5  # 2 batches a second
        progress(done)
    # 50 s in all: a line every 10 s (at 20, 40, 60, 80 batches) and the last one.
    assert [line.split(":")[1].split("|")[0].strip() for line in lines] == [
        "20/100 batches", "40/100 batches", "60/100 batches", "80/100 batches", "100/100 batches"]
    assert lines[0].endswith("| 2.00 batches/s | ETA 0m40s") and lines[-1].endswith("done in 0m50s")
    late = Progress("rows", 0, "rows", log=lines.append, clock=lambda: now[0])
    late(5, 5)  # the total told by the loop that knows it
    assert lines[-1].startswith("rows: 5/5 rows")
