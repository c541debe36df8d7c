"""The trainer, top to bottom: data, model, optimizer, state (restored or new), loop, summary.

Identical on CPU and TPU: only the mesh (from config.mesh and the devices present) differs.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time

import flax.linen as nn
import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from tensorboardX import SummaryWriter

from openmoe2_jax import flops, objectives, validation
from openmoe2_jax.data import baselines, bpe, pipeline
from openmoe2_jax.data.tokenizer import bpe_num_ranks
from openmoe2_jax.objectives import likelihood
from openmoe2_jax.parallel import sharding
from openmoe2_jax.progress import format_seconds
from openmoe2_jax.runtime import build, checkpoint, optimizer, state as state_lib
from openmoe2_jax.train import preemption, step as step_lib, upcycle


@dataclasses.dataclass
class Summary:
    steps: int
    final_train_loss: float
    final_validation_loss: float
    tokens_seen: int
    wall_seconds: float
    tokens_per_second: float
    train_losses: dict            # step -> loss, for every step this run took
    resumed_from: int | None
    preempted: bool = False       # stopped early by SIGTERM (a checkpoint was saved at `steps`)
    final_validation_bits_per_byte: float = float("nan")
    compressor_bits_per_byte: dict = dataclasses.field(default_factory=dict)  # on the same validation text
    unique_train_tokens: int = 0  # the training split this run drew from (tokens_seen / this = epochs)


def _write_config(config, workdir: epath.Path) -> None:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def _save_vocabulary(tokenizer, workdir: epath.Path) -> None:
    """A bpe:N run keeps its vocabulary in WORKDIR/tokenizer (once; later runs load it from there)."""
    directory = workdir / "tokenizer"
    if bpe_num_ranks(tokenizer.name) is not None and not bpe.files(directory, tokenizer.name)[0].exists():
        bpe.save(directory, tokenizer)


def jit_train_step(config, model, tx, mesh, state_shardings, mask_id: int):
    """The jitted train step (state, batch) -> (state, metrics), state donated, sharded on `mesh`."""
    return jax.jit(
        functools.partial(step_lib.train_step, model=model, tx=tx,
                          schedule=optimizer.schedule(config.train),
                          objective_cfg=objectives.frozen_objective(config.objective), mask_id=mask_id),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0)


def compile_steps(config, model, tx, mesh, state_shardings, mask_id: int):
    """The jitted train step (jit_train_step) and validation step (params, batch, batch_index) ->
    per-row nats (objectives/likelihood.py), with their shardings on `mesh`."""
    batch_sharding = sharding.batch_sharding(mesh)
    train_step = jit_train_step(config, model, tx, mesh, state_shardings, mask_id)
    eval_step = jax.jit(
        likelihood.make_validation_fn(model, objectives.frozen_objective(config.objective, evaluation=True),
                                      mask_id, config.eval.seed, config.eval.mc_samples),
        in_shardings=(state_shardings.params, batch_sharding, None),
        out_shardings=sharding.replicated(mesh))
    return train_step, eval_step


def train(config, workdir: str, stop_at_step: int | None = None, log=print) -> Summary:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

    stop_at_step: stop (with a checkpoint) after this step, as a preempted run would. SIGTERM during
    training does the same at the next step boundary (train/preemption.py).
    """
    with preemption.PreemptionWatch(vote_every=config.log_every_steps) as watch:
        return _train(config, workdir, stop_at_step, log, watch)


def _train(config, workdir, stop_at_step, log, watch) -> Summary:
    t_start = time.time()
    num_processes, process = jax.process_count(), jax.process_index()
    validation.validate(config, num_devices=jax.device_count(), num_processes=num_processes)
    workdir = epath.Path(workdir)  # a local path or gs://bucket/... (orbax and tensorboardX write there)
    if workdir.exists() and not workdir.is_dir():
        raise validation.ConfigError(f"--workdir={workdir} is an existing file, not a directory: name a "
                                     "new or existing run directory. The file was not touched.")
    # The split comes first, as text: a bpe:N vocabulary is trained on the training documents only
    # (or loaded: the run's own from an earlier start, else a prepared corpus's).
    prepared = config.data.source == "prepared"
    split = None if prepared else pipeline.read_split(config.data, config.eval.seed)
    tokenizer = bpe.run_tokenizer(config.data.tokenizer,
                                  [workdir / "tokenizer"] + ([config.data.paths[0]] if prepared else []),
                                  None if prepared else split.train)
    built = build.build(config, tokenizer.num_ids)
    mesh, model_cfg, model, tx = built.mesh, built.model_cfg, built.model, built.tx
    seq_len, batch = config.data.seq_len, config.train.batch_size

    # Data. The split is seeded by eval.seed (like the validation masks), so every training seed holds
    # out the same documents; config.seed sets the order of the training rows.
    corpus = pipeline.load_corpus(config.data, tokenizer, config.eval.seed, split)
    available = pipeline.num_train_batches(corpus.train, seq_len, batch, config.data.num_epochs)
    if available is not None and available < config.train.steps:
        raise validation.ConfigError(
            f"config.train.steps = {config.train.steps} needs {config.train.steps} batches but "
            f"{config.data.num_epochs} epoch(s) of {corpus.counts['train_tokens']:,} training tokens "
            f"give {available}; raise config.data.num_epochs (0 = no end) or lower the steps.")
    shard = pipeline.Shard(process, num_processes)
    train_data = pipeline.train_dataset(corpus.train, seq_len, batch, config.data.num_epochs,
                                        config.seed, shard).to_iter_dataset()
    train_iter = iter(train_data)
    val_batches = pipeline.validation_batches(corpus.validation, seq_len, batch,
                                              config.eval.num_batches, shard)

    workdir.mkdir(parents=True, exist_ok=True)
    ckpts = checkpoint.Checkpoints(str(workdir / "checkpoints"), config.checkpoint.keep,
                                   config.checkpoint.async_save)
    with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        state_shardings = built.state_shardings
        resumed_from, state = ckpts.restore_latest_good(built.abstract, train_iter, log, tokenizer.record)
        if resumed_from is not None:
            log(f"resumed from {ckpts.directory}/{resumed_from}")
        else:
            dense = (upcycle.load_dense_params(config.moe.upcycle_from)
                     if config.model.ffn == "moe" and config.moe.upcycle_from else None)
            state = state_lib.create(built.init, state_shardings)
            if dense is not None:
                fresh = multihost_utils.process_allgather(state.params, tiled=True)
                params = upcycle.upcycle_params(fresh, dense, config.moe.upcycle_method)
                state = state.replace(params=jax.device_put(params, state_shardings.params))
                log(f"upcycled from {config.moe.upcycle_from} ({config.moe.upcycle_method})")
        if process == 0:
            _write_config(config, workdir)
            _save_vocabulary(tokenizer, workdir)
        counts = flops.param_counts(model_cfg)
        flops_per_token = flops.train_flops_per_token(model_cfg, seq_len)
        log(f"model: {counts['total']:,} params ({counts['non_embedding']:,} non-embedding), "
            f"{flops_per_token / 1e6:.1f} MFLOPs/token; mesh {dict(mesh.shape)}; "
            f"{corpus.counts['train_tokens']:,} train tokens, {len(val_batches)} validation batches")

        batch_sharding = built.batch_sharding
        train_step, eval_step = compile_steps(config, model, tx, mesh, state_shardings,
                                              tokenizer.mask_id)

        def to_global(local):
            return jax.make_array_from_process_local_data(batch_sharding, local)

        def evaluate(params) -> float:
            """Validation nats/token (diffusion: the ELBO estimate with fixed masks)."""
            results = [eval_step(params, to_global(b), i) for i, b in enumerate(val_batches)]
            return (sum(float(r["nats"].sum()) for r in results) /
                    sum(float(r["tokens"].sum()) for r in results))

        writer = SummaryWriter(str(workdir / "tensorboard")) if process == 0 else None
        first = int(state.step)
        last = config.train.steps if stop_at_step is None else min(stop_at_step, config.train.steps)
        losses, window, val_loss, preempted = {}, [], float("nan"), False
        t_window, tokens_per_step = time.time(), batch * seq_len
        t_loop = time.time()
        # The host reads the device's numbers only at log, eval, checkpoint and final steps: a log
        # step's numbers are read after the next step is dispatched, so the device never waits for
        # the host. Until then each step's loss stays a device scalar in `pending`.
        pending, log_due = [], None

        def read_losses():
            """Fetches the pending losses (waits for their steps); a non-finite one is an error."""
            values = jax.device_get([loss for _, loss in pending])
            for (s, _), v in zip(pending, values):
                losses[s] = v = float(v)
                window.append(v)
                if not np.isfinite(v):
                    raise FloatingPointError(f"loss is {v} at step {s}; last checkpoint kept.")
            pending.clear()

        def log_step(step, metrics):
            nonlocal window, t_window
            elapsed = time.time() - t_window
            n = len(window)
            tps = n * tokens_per_step / elapsed
            metrics = jax.device_get(metrics)
            if writer:
                for k, v in metrics.items():
                    writer.add_scalar(f"train/{k}", float(v), step)
                writer.add_scalar("train/loss_window_mean", float(np.mean(window)), step)
                writer.add_scalar("perf/tokens_per_second", tps, step)
                writer.add_scalar("perf/step_seconds", elapsed / n, step)
                writer.add_scalar("perf/model_flops_per_second", tps * flops_per_token, step)
                writer.flush()  # a killed run keeps what it logged
            eta = (last - step) * elapsed / n
            log(f"step {step:>6}/{last} | loss {np.mean(window):.4f} | "
                f"lr {float(metrics['learning_rate']):.2e} | {tps:,.0f} tok/s | "
                f"{elapsed / n:.3f} s/step | ETA {format_seconds(eta)}")
            window, t_window = [], time.time()

        try:
            for step in range(first + 1, last + 1):
                state, metrics = train_step(state, to_global(next(train_iter)))
                pending.append((step, metrics["loss"]))
                if log_due is not None:  # the previous step's log, now that this step is queued
                    pending_now = pending.pop()
                    read_losses()
                    log_step(*log_due)
                    pending.append(pending_now)
                    log_due = None
                evaluating = (config.eval.every_steps and step % config.eval.every_steps == 0
                              and step != last)
                stopping = watch.should_stop(step) and step != last
                saving = step % config.checkpoint.every_steps == 0 or step == last or stopping
                if step % config.log_every_steps == 0 or step == last:
                    log_due = (step, metrics)
                if evaluating or saving:  # these wait for the step anyway: read and log now
                    read_losses()
                    if log_due is not None:
                        log_step(*log_due)
                        log_due = None
                if evaluating:
                    val_loss = evaluate(state.params)
                    if writer:
                        writer.add_scalar("eval/loss", val_loss, step)
                    log(f"step {step:>6} | validation loss {val_loss:.4f}")
                    t_window = time.time()
                if stopping:
                    log(f"step {step:>6} | stop requested (SIGTERM): saving a checkpoint and exiting")
                    preempted, last = True, step
                if saving:
                    ckpts.save(step, state, train_iter, tokenizer.record,
                               checkpoint.routing_record(model_cfg, batch, seq_len))
                if preempted:
                    break
            wall_loop = time.time() - t_loop

            if (last > first or resumed_from is None) and not preempted:  # a preempted host has seconds
                val_loss = evaluate(state.params)
                if writer:
                    writer.add_scalar("eval/loss", val_loss, last)
        finally:
            # An error (a diverged loss, an interrupt) can leave an async save in flight: closing waits
            # for it, so that the last checkpoint is whole on disk before the error propagates.
            ckpts.close()
            if writer:
                writer.close()

    # Bits/byte: the validation nats over the UTF-8 bytes of the scored tokens of every process's rows.
    val_rows = np.concatenate(pipeline.validation_batches(corpus.validation, seq_len, batch,
                                                          config.eval.num_batches))
    ar = config.objective.kind == "ar"
    scored_tokens = val_rows[:, 1:].size if ar else val_rows.size
    val_bpb = likelihood.bits_per_byte(val_loss * scored_tokens,
                                       likelihood.row_bytes(tokenizer, val_rows, skip_first=ar))
    compressed = {}
    if config.eval.compressors and process == 0 and np.isfinite(val_loss):
        context = corpus.train[-(8 << 20):]  # >= the 8 MiB the compressors look back (a token is >= 1 byte)
        compressed = baselines.baselines(tokenizer.decode(context).encode("utf-8"),
                                         tokenizer.decode(val_rows).encode("utf-8"), config.eval.compressors)

    tail = [losses[s] for s in sorted(losses)[-config.log_every_steps:]]
    summary = Summary(
        steps=last, final_train_loss=float(np.mean(tail)) if tail else float("nan"),
        final_validation_loss=val_loss, tokens_seen=last * tokens_per_step,
        wall_seconds=time.time() - t_start,
        tokens_per_second=(last - first) * tokens_per_step / wall_loop if last > first else 0.0,
        train_losses=losses, resumed_from=resumed_from, preempted=preempted,
        final_validation_bits_per_byte=val_bpb, compressor_bits_per_byte=compressed,
        unique_train_tokens=int(len(corpus.train)))
    if process == 0:
        (workdir / "summary.json").write_text(json.dumps(
            {k: v for k, v in dataclasses.asdict(summary).items() if k != "train_losses"}, indent=2))
    against = "".join(f", {baselines.LABELS[k]} {v:.3f}" for k, v in compressed.items())
    log(f"done: {last} steps | final train loss {summary.final_train_loss:.4f} | validation loss "
        f"{val_loss:.4f} ({val_bpb:.3f} bits/byte{against}) | {summary.tokens_seen:,} tokens seen | "
        f"{format_seconds(summary.wall_seconds)} wall | {summary.tokens_per_second:,.0f} tok/s")
    return summary
