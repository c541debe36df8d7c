"""Orbax checkpoints holding the train state (params, optimizer, step, RNG) and the grain iterator.

Async saves, the newest `keep` kept. A checkpoint written by another model is refused before anything
is restored (or compiled), with the first mismatching parameters named. Each checkpoint records the
vocabulary its embedding rows index (`Tokenizer.record`, in orbax's custom metadata); one trained with
another vocabulary is refused the same way, naming both (VocabularyError).
"""
from __future__ import annotations

import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from openmoe2_jax.data.tokenizer import check_vocabulary
from openmoe2_jax.errors import CheckpointError, CorruptCheckpointError
from openmoe2_jax.runtime import paths


def _handlers():
    return dict(state=ocp.StandardCheckpointHandler(), data=grain.checkpoint.CheckpointHandler())


class Checkpoints:
    def __init__(self, directory: epath.PathLike, keep: int | None, async_save: bool,
                 read_only: bool = False):
        directory = paths.absolute(directory)  # gs://... as given; a local path made absolute
        if not paths.is_url(directory):  # local: checked before orbax touches it
            if directory.exists() and not directory.is_dir():
                raise CheckpointError(f"checkpoint directory {directory} exists and is not a directory")
            if directory.is_dir() and not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
                raise CheckpointError(f"checkpoint directory {directory} is not readable and writable")
        self.directory = directory
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=not read_only, read_only=read_only)
        self._mngr = ocp.CheckpointManager(directory, item_handlers=_handlers(), options=options)

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def save(self, step: int, state, data_iterator, vocabulary: dict | None = None,
             routing: dict | None = None) -> None:
        """Saves the state and iterator; `vocabulary` (Tokenizer.record) and `routing` (routing_record)
        are recorded with them."""
        custom = {k: v for k, v in dict(vocabulary=vocabulary, routing=routing).items() if v is not None}
        self._mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)),
            force=True, custom_metadata=custom or None)

    def _custom(self, step: int) -> dict:
        try:
            return self._mngr.metadata(step).custom_metadata or {}
        except Exception as e:  # orbax raises several types for an unreadable checkpoint
            raise CorruptCheckpointError(f"checkpoint {self.directory}/{step} is unreadable: {e}") from e

    def recorded_vocabulary(self, step: int) -> dict | None:
        """The Tokenizer.record saved with `step`; None if it has none (written before records)."""
        return self._custom(step).get("vocabulary")

    def recorded_routing(self, step: int) -> dict | None:
        """The routing_record saved with `step`; None if it has none (dense, or written before)."""
        return self._custom(step).get("routing")


    def check_compatible(self, step: int, abstract_state, vocabulary: dict | None = None,
                         subtree: str | None = None) -> None:
        """Raises VocabularyError if the checkpoint was trained with another vocabulary than
        `vocabulary` (a Tokenizer.record; None: not checked), CheckpointError if the saved state's
        tree, shapes or dtypes differ from ours. subtree: compare only that field of the saved state
        (`params`) with `abstract_state`."""
        if vocabulary is not None:
            check_vocabulary(self.recorded_vocabulary(step), vocabulary,
                             f"the checkpoint in {self.directory} (step {step})")
        try:
            saved = self._mngr.item_metadata(step)["state"]
        except Exception as e:  # orbax raises several types for an unreadable checkpoint
            raise CorruptCheckpointError(f"checkpoint {self.directory}/{step} is unreadable: {e}") from e
        if saved is None:
            raise CorruptCheckpointError(f"checkpoint {self.directory}/{step} has no train state")
        saved = getattr(saved, "tree", saved)
        if subtree is not None:
            if subtree not in saved:
                raise CorruptCheckpointError(f"checkpoint {self.directory}/{step} has no {subtree}")
            saved = saved[subtree]
        ours = {jax.tree_util.keystr(k, simple=True, separator="/"): (tuple(v.shape), str(v.dtype))
                for k, v in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
        theirs = {jax.tree_util.keystr(k, simple=True, separator="/"): (tuple(v.shape), str(v.dtype))
                  for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
        problems = [f"{k}: missing from the checkpoint" for k in ours if k not in theirs]
        problems += [f"{k}: in the checkpoint but not in this model" for k in theirs if k not in ours]
        problems += [f"{k}: checkpoint has {theirs[k]}, this config builds {ours[k]}"
                     for k in ours if k in theirs and theirs[k] != ours[k]]
        if problems:
            shown = "\n  ".join(problems[:8])
            more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
            raise CheckpointError(
                f"the checkpoint in {self.directory} (step {step}) was written by a different model or "
                f"optimizer than this config builds:\n  {shown}{more}\nUse another --workdir, or the "
                "config that wrote it. Nothing was changed.")

    def restore(self, step: int, abstract_state, data_iterator):
        """The state (placed with the shardings on `abstract_state`) and the iterator, restored in place."""
        try:
            restored = self._mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator)))
        except Exception as e:  # tensorstore / orbax / json errors of a damaged checkpoint
            raise CorruptCheckpointError(f"checkpoint {self.directory}/{step} cannot be restored: {e}") from e
        return restored["state"]

    def restore_params(self, step: int, abstract_params):
        """Only the `params` of the saved train state, of the shapes and dtypes of `abstract_params` (a
        tree of ShapeDtypeStruct): jax.Arrays laid out as their `sharding` says where every leaf has
        one, else host NumPy arrays. The optimizer state is never read: the memory is one copy of the
        parameters (a shard of it per device, when sharded)."""
        item = {"params": abstract_params}
        sharded = all(getattr(a, "sharding", None) is not None for a in jax.tree.leaves(abstract_params))
        args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape,
                                                            dtype=a.dtype) if sharded else
                            ocp.RestoreArgs(restore_type=np.ndarray, dtype=a.dtype), item)
        try:
            restored = ocp.PyTreeCheckpointer().restore(
                self.directory / str(step) / "state",
                args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True))
        except Exception as e:  # tensorstore / orbax / json errors of a damaged checkpoint
            raise CorruptCheckpointError(f"checkpoint {self.directory}/{step} cannot be restored: {e}") from e
        return restored["params"]

    def restore_latest_good(self, abstract_state, data_iterator, log=print, vocabulary: dict | None = None):
        """(step, state) of the newest checkpoint that restores, or (None, None) if there is none.

        A damaged checkpoint is moved aside to `<step>.corrupt` (kept, never deleted) with a warning,
        and the next older one is tried. A checkpoint of a different model or vocabulary is an error,
        not damage.
        """
        for step in sorted(self.all_steps(), reverse=True):
            try:
                self.check_compatible(step, abstract_state, vocabulary)
                return step, self.restore(step, abstract_state, data_iterator)
            except CorruptCheckpointError as e:
                log(f"WARNING: {e}\nWARNING: falling back to the previous checkpoint; the damaged one "
                    f"is kept as {self.directory}/{step}.corrupt")
                self._quarantine(step)
        return None, None

    def _quarantine(self, step: int) -> None:
        if jax.process_index() == 0:
            src = self.directory / str(step)
            dst, n = src.with_name(f"{step}.corrupt"), 1
            while dst.exists():
                dst, n = src.with_name(f"{step}.corrupt{n}"), n + 1
            src.rename(dst)
        multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
        self._mngr.reload()

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        """Waits for a save in flight, then releases the manager."""
        self._mngr.close()


def routing_record(model_cfg, batch_size: int, seq_len: int) -> dict | None:
    """How the run grouped tokens for routing: {groups, tokens_per_group} per training step, or None for
    a model whose routing does not depend on the grouping (dense, sequence-level EC, dropless TC).
    Batch-level expert choice picks C = N k cf / E tokens per expert among the N tokens of a group, and
    token choice with a capacity keeps C = N k cf / E per expert, so N is part of the model's function:
    evaluation and export must route groups of the same N, whatever mesh they run on."""
    moe = model_cfg.moe
    grouped = moe is not None and ((moe.routing == "ec" and moe.ec_group == "batch") or
                                   (moe.routing == "tc" and moe.tc_capacity_factor > 0))
    if not grouped:
        return None
    return dict(groups=moe.num_groups, tokens_per_group=batch_size * seq_len // moe.num_groups)
