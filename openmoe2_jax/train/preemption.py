"""Stop at a step boundary when the machine is being taken away (spot / preemptible TPU: SIGTERM).

Single process: a SIGTERM handler sets a flag; the loop checks it after every step, saves a
checkpoint and exits cleanly. Multi-process: every host must stop at the same step, so the check is
`jax.experimental.multihost_utils.reached_preemption_sync_point(step)` — JAX's coordination-service
preemption notice (on TPU VMs it is raised by the maintenance event, and SIGTERM on any host), which
all processes agree on — or-ed with the local flag's agreement across hosts.
"""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionWatch:
    """Context manager: while active, SIGTERM requests a stop at the next step boundary."""

    def __init__(self):
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
        """True on every process when any of them was asked to stop (call once per step, everywhere)."""
        local = self._requested.is_set()
        if jax.process_count() == 1:
            return local
        try:
            notified = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # no preemption notifier in this runtime
            notified = False
        votes = multihost_utils.process_allgather(np.asarray([local], np.int32))
        return bool(notified or np.any(votes))
