"""Stop at a step boundary when the machine is being taken away (spot / preemptible TPU: SIGTERM).

Single process: a SIGTERM handler sets a flag; the loop checks it after every step, saves a
checkpoint and exits cleanly. Multi-process: every host must stop at the same step, so the check is
`jax.experimental.multihost_utils.reached_preemption_sync_point(step)` — JAX's coordination-service
preemption notice (on TPU VMs it is raised by the maintenance event), which all processes agree on
without a device collective, checked every step — or-ed, every `vote_every` steps only, with the
local flags gathered across hosts (one small all-gather; the loop passes its log interval). So a
SIGTERM that only our handler saw stops every host at the next multiple of `vote_every`.
"""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionWatch:
    """Context manager: while active, SIGTERM requests a stop at the next step boundary."""

    def __init__(self, vote_every: int = 1):
        self._vote_every = max(int(vote_every), 1)
        self._requested = threading.Event()
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    def _on_signal(self, signum, frame):
        del signum, frame
        self._requested.set()

    def request(self):
        """Ask for a stop (what SIGTERM does)."""
        self._requested.set()

    def should_stop(self, step: int) -> bool:
        """True on every process when any of them was asked to stop (call once per step, everywhere).

        Costs no collective except at multiples of vote_every (multi-process only)."""
        local = self._requested.is_set()
        if jax.process_count() == 1:
            return local
        try:
            notified = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # no preemption notifier in this runtime
            notified = False
        if step % self._vote_every:
            return bool(notified)
        votes = multihost_utils.process_allgather(np.asarray([local], np.int32))
        return bool(notified or np.any(votes))
