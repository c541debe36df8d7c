"""Training-speed benchmark against this backend's measured matmul ceiling (a benchmark, not a test).

  python -m openmoe2_jax.bench [--shapes=cpu,small,peer] [--output=bench.json] [--profile_dir=DIR]

In one run, on the current backend (whatever `jax.devices()` gives; the mesh is all data-parallel):
  1. the ceiling: median FLOP/s of a jitted 2048 x 2048 `jnp.dot` in the compute dtype;
  2. for each shape x VARIANTS (dense FLOPs-matched, ec, tc at capacity factor 1, dropless tc):
     compile seconds, median train-step seconds (after warm-up, synchronised), tokens/s, model
     FLOPs/token (flops.py: 6 x active matmul params + attention; rematerialisation is not counted),
     XLA's own FLOP count of the compiled step, achieved FLOP/s, MFU = achieved / ceiling, compiled
     temporary memory, the temporary memory at twice the batch (compiled, never run: linear means
     <= 2x) and the process's peak RSS during the variant; and the FFN layer alone (forward +
     backward on the same tokens), which isolates routing and dispatch from the vocabulary head;
  3. ratios: EC tokens/s / TC tokens/s and MoE MFU / dense MFU, per shape;
  4. the remat policies (config.model.remat) on one shape: memory against time;
  5. the EC top-k implementations at the paper shape (kernels/bench_ec_topk.py).
Writes everything as JSON (`--output`) and prints markdown tables. `--profile_dir` also writes a
jax.profiler trace per variant and prints its most expensive XLA ops.

Shapes: `cpu` and `small` are configs/scales.py (small at a CPU-sized batch, see SHAPES); `peer` is
docs/design.md's fixed peer shape (4 x 256, 4 heads x 64, seq 256, batch 8, vocabulary 32,768, FFN 512,
MoE 8 experts of 512, k = 2, no shared experts, float32), for comparison with other JAX trainers.
Tokens are synthetic (uniform ids): speed does not depend on the text.
"""
from __future__ import annotations

import collections
import glob
import json
import os
import platform
import resource
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from openmoe2_jax import flops, validation
from openmoe2_jax.configs import resolve, scales
from openmoe2_jax.data import tokenizer
from openmoe2_jax.models import layers
from openmoe2_jax.models.moe import MoEFFN
from openmoe2_jax.models.transformer import ModelConfig
from openmoe2_jax.parallel import sharding
from openmoe2_jax.runtime import build, state as state_lib
from openmoe2_jax.train import loop

# dense: FLOPs-matched dense FFN. ec: the study's default. tc: token choice with capacity factor 1
# (the same slot layout, dispatch and expert FLOPs as EC: the equal-active-FLOPs comparison).
# tc_dropless: the study's dropless token choice (global sort + grouped matmul, moe.tc_dropless_impl).
VARIANTS = ("dense", "ec", "tc", "tc_dropless")
REMATS = ("none", "attention", "block")


# Sequences per benchmarked step. cpu: configs/scales.py cpu, the CPU study's scale (its bpe:N
# vocabulary, seq 128, the batch it trains at). small: configs/scales.py small (8 x 512, 64+2 experts of 128, k=6, seq 1024), which trains
# at batch 64 (~2 min a step on 2 CPU cores); 4 sequences keep every matmul in its large-matrix
# regime. peer: docs/design.md's peer shape (seq 256, batch 8).
SHAPES = {"cpu": 16, "small": 4, "peer": 8}


def default_dtype() -> str:
    """The compute dtype the benchmark uses here: float32 on CPU (XLA:CPU emulates bfloat16 matmuls
    through conversions: 239 vs 306 GFLOP/s measured on this machine's 2048^2 dot), else bfloat16."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def shape_config(shape: str, variant: str, remat: str = "none", dtype: str | None = None):
    """(config, num_ids) of `variant` at `shape`; num_ids = token ids the data uses (mask id = num_ids).

    dtype: the compute dtype of cpu/small (default: default_dtype()); the peer shape is float32."""
    if shape not in SHAPES:
        raise ValueError(f"--shapes: {shape!r} is not one of {sorted(SHAPES)}")
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")
    if shape == "peer":
        c = scales.get("cpu")
        c.model.update(num_layers=4, d_model=256, num_heads=4, num_kv_heads=4, head_dim=64, mlp_dim=512,
                       vocab_size=32768, dtype="float32")
        c.moe.update(num_experts=8, num_shared_experts=0, expert_mlp_dim=512, top_k=2)
        c.data.seq_len = 256
        num_ids = 32768 - 1
    else:
        c = scales.get(shape)
        num_ids = tokenizer.num_ids_of(c.data.tokenizer)
    c.train.batch_size = SHAPES[shape]
    c.model.remat = remat
    if shape != "peer":
        c.model.dtype = dtype or default_dtype()
    c.mesh.update(data=-1, fsdp=1, expert=1, tensor=1)
    if variant == "tc":
        c.moe.update(routing="tc", tc_capacity_factor=1.0)
    elif variant == "tc_dropless":
        c.moe.update(routing="tc", tc_capacity_factor=0.0)
    elif variant == "dense":
        if shape == "peer":
            c.model.ffn = "dense"      # the peer shape fixes the dense FFN at 512
        else:
            c = flops.matched_dense(c, "flops")
    return c, num_ids


def _median_seconds(f, args, repeats: int, warmup: int) -> float:
    """Median wall time of f(*args), synchronised, after `warmup` untimed calls."""
    for _ in range(warmup):
        jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def ceiling(dtype: str = "float32", n: int = 2048, repeats: int = 10) -> dict:
    """The best matmul rate here: median time of a jitted n x n @ n x n in `dtype`."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    t = _median_seconds(jax.jit(jnp.dot), (a, b), repeats, warmup=3)
    return dict(dtype=dtype, n=n, seconds=t, flops_per_second=2 * n ** 3 / t)


def _reset_peak_rss() -> None:
    try:  # Linux: "5" resets the peak resident set size (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def measure(config, num_ids: int, *, repeats: int = 3, warmup: int = 1, ceiling_flops: float,
            memory_scaling: bool = True, trace_dir: str | None = None) -> dict:
    """Compiles and times the train step of `config` on synthetic tokens (see the module doc).

    A step whose compiled temporaries exceed half the machine's memory is not run: the row says so
    (`skipped`) with the memory it would need."""
    validation.validate(config, num_devices=jax.device_count())
    built = build.build(config, num_ids)
    mesh, model_cfg = built.mesh, built.model_cfg
    batch, seq = config.train.batch_size, config.data.seq_len
    _reset_peak_rss()
    with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        state = state_lib.create(built.init, built.state_shardings)
        step = loop.jit_train_step(config, built.model, built.tx, mesh, built.state_shardings, mask_id=num_ids)
        tokens = np.random.default_rng(0).integers(0, num_ids, (batch, seq), dtype=np.int32)
        tokens = jax.device_put(tokens, built.batch_sharding)

        t0 = time.perf_counter()
        compiled = step.lower(state, tokens).compile()
        compile_s = time.perf_counter() - t0
        temp = compiled.memory_analysis().temp_size_in_bytes
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per program
        # XLA counts one device's program (SPMD): summed over the mesh's devices
        hlo_flops = float(cost.get("flops", float("nan"))) * mesh.size if cost else float("nan")
        memory = _physical_memory_bytes()
        if memory and temp > memory / 2:
            return dict(batch=batch, seq=seq, compile_seconds=compile_s, temp_bytes=temp,
                        hlo_flops_per_token=hlo_flops / (batch * seq),
                        skipped=f"needs {temp / 2 ** 30:.1f} GiB of temporaries; this machine has "
                                f"{memory / 2 ** 30:.0f} GiB")

        for _ in range(warmup):
            state, metrics = compiled(state, tokens)
            jax.block_until_ready(metrics)
        times = []
        if trace_dir:  # a jax.profiler trace of the timed steps (TensorBoard / xprof, or ProfileData)
            jax.profiler.start_trace(trace_dir)
        for _ in range(repeats):
            t0 = time.perf_counter()
            state, metrics = compiled(state, tokens)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - t0)
        if trace_dir:
            jax.profiler.stop_trace()
        loss = float(metrics["loss"])
        peak_rss = _peak_rss_bytes()
        del state

        temp_2x = None
        if memory_scaling:  # the same step at twice the batch, compiled only
            tokens_2x = jax.ShapeDtypeStruct((2 * batch, seq), jnp.int32, sharding=built.batch_sharding)
            temp_2x = step.lower(built.abstract, tokens_2x).compile().memory_analysis().temp_size_in_bytes

    step_s = float(np.median(times))
    tokens_per_step = resolve.step_tokens(config)
    flops_per_token = flops.train_flops_per_token(model_cfg, seq)
    achieved = flops_per_token * tokens_per_step / step_s
    counts = flops.param_counts(model_cfg)
    return dict(
        batch=batch, seq=seq, params=counts["total"], active_params=counts["active"],
        compile_seconds=compile_s, step_seconds=step_s, step_seconds_all=times,
        tokens_per_second=tokens_per_step / step_s, flops_per_token=flops_per_token,
        hlo_flops_per_token=hlo_flops / tokens_per_step, achieved_flops_per_second=achieved,
        mfu=achieved / ceiling_flops, temp_bytes=temp, temp_bytes_2x_batch=temp_2x,
        temp_ratio_2x_batch=temp_2x / temp if temp_2x and temp else None,
        peak_rss_bytes=peak_rss, loss=loss)


def top_ops(trace_dir: str, n: int = 15) -> list[dict]:
    """The n XLA ops (fusions, dots) with the most time in a jax.profiler trace: [{op, seconds}]."""
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb under {trace_dir}")
    totals = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(paths[-1]).planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                if "ThunkExecutor" not in event.name and "Await" not in event.name:
                    totals[event.name] += event.duration_ns / 1e9
    return [dict(op=op, seconds=seconds) for op, seconds in totals.most_common(n)]


def measure_ffn(config, num_ids: int, *, repeats: int = 3, ceiling_flops: float) -> dict:
    """Forward + backward of one FFN layer alone (MoEFFN with routing, or the dense SwiGLU) on the
    step's [batch, seq, d_model] tokens: the routing and dispatch cost without the rest of the model."""
    mesh = sharding.make_mesh(config.mesh)
    cfg = ModelConfig.from_config(config, num_ids, sharding.batch_shards(mesh))
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    if cfg.moe is not None:
        layer = MoEFFN(cfg.moe, cfg.init_std, cfg.out_std, dt, pdt)
        per_token = flops.moe_layer_params(cfg)[1]
    else:
        layer = layers.SwiGLU(cfg.mlp_dim, cfg.init_std, cfg.out_std, dt, pdt)
        per_token = 3 * cfg.d_model * cfg.mlp_dim
    batch, seq = config.train.batch_size, config.data.seq_len
    on_batch = sharding.batch_sharding(mesh)  # the leading (batch) axis over the data axes
    x = jax.device_put(jax.random.normal(jax.random.key(0), (batch, seq, cfg.d_model), dt), on_batch)
    probe = jax.device_put(jax.random.normal(jax.random.key(1), x.shape, dt), on_batch)
    with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        params = jax.device_put(state_lib.strip_boxes(layer.init(jax.random.key(2), x)["params"]),
                                sharding.replicated(mesh))

        def loss(p, x):
            y = layer.apply({"params": p}, x, mutable=["moe_stats", "moe_losses"])[0]
            return jnp.sum(y.astype(jnp.float32) * probe)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        t = _median_seconds(grad.lower(params, x).compile(), (params, x), repeats, warmup=1)
    achieved = 6 * per_token * batch * seq / t
    return dict(tokens=batch * seq, seconds=t, tokens_per_second=batch * seq / t,
                flops_per_token=6.0 * per_token, achieved_flops_per_second=achieved,
                mfu=achieved / ceiling_flops)


TPU_CHIPS_PER_HOST = 4  # a multi-host slice of v4, v5e, v5p or v6e has 4 chips on each host VM


def pod_need(topology: str = "v5p-256") -> dict:
    """What one host of `topology` must load for the paper config: its share of a step's tokens
    (batch x seq / hosts) per step, at the step time `plan` suggests (a lower bound on the step time,
    so an upper bound on the need)."""
    from openmoe2_jax import plan  # pylint: disable=import-outside-toplevel
    config = scales.get("paper")
    chip, chips = plan.parse_topology(topology)
    best = plan.suggest(config, chip, chips)
    hosts = max(1, chips // TPU_CHIPS_PER_HOST)
    tokens = resolve.step_tokens(config) // hosts
    return dict(topology=topology, hosts=hosts, tokens_per_host_step=tokens, mesh=best["mesh"],
                step_seconds_lower_bound=best["step_seconds_lower_bound"],
                tokens_per_second_per_host=tokens / best["step_seconds_lower_bound"])


def measure_data(*, seq_len: int = 4096, global_batch: int = 1024, processes: int = 32,
                 tokens: int = 32 * 2 ** 20, batches: int = 30, seed: int = 0) -> dict:
    """The input pipeline alone, as one of `processes` hosts runs it: a prepared token stream (a
    memory-mapped int32 .npy, as `data.prepare` writes) -> grain -> shuffled rows of `seq_len` ->
    this process's [global_batch / processes, seq_len] batches. tokens/s after the first batch."""
    import tempfile  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "train.npy")
        np.save(path, np.random.default_rng(seed).integers(0, 100_277, tokens, dtype=np.int32))
        stream = np.load(path, mmap_mode="r")
        ds = pipeline.train_dataset(stream, seq_len, global_batch, 0, seed, pipeline.Shard(0, processes))
        batches_iter = iter(ds.to_iter_dataset())
        first = next(batches_iter)
        t0 = time.perf_counter()
        for _ in range(batches):
            batch = next(batches_iter)
        seconds = time.perf_counter() - t0
    assert batch.shape == first.shape == (global_batch // processes, seq_len)
    local = global_batch // processes * seq_len
    return dict(seq_len=seq_len, global_batch=global_batch, processes=processes, batches=batches,
                tokens_per_batch=local, seconds_per_batch=seconds / batches,
                tokens_per_second=batches * local / seconds)


def run(shapes=("cpu", "small", "peer"), variants=VARIANTS, *, repeats: int = 3, warmup: int = 1,
        remat_shape: str | None = "small", remat_variant: str = "ec", topk: bool = True,
        dtype: str | None = None, profile_dir: str | None = None, data: bool = True, log=print) -> dict:
    """The whole benchmark; returns the results as a JSON-able dict.

    profile_dir: write a jax.profiler trace of each variant's timed steps to
    <profile_dir>/<shape>_<variant>_<remat> (TensorBoard's profile plugin reads it) and record its
    most expensive XLA ops in the row (`top_ops`)."""
    dtype = dtype or default_dtype()
    devices = jax.devices()
    results = dict(backend=jax.default_backend(), device_kind=devices[0].device_kind,
                   device_count=len(devices), jax_version=jax.__version__, dtype=dtype,
                   date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), ceilings={}, rows=[], ffn=[],
                   ratios={}, remat=[], topk=[])
    log(f"backend: {results['backend']} ({results['device_kind']}), {results['device_count']} device(s)")
    for dt in sorted({dtype, "float32"} if "peer" in shapes else {dtype}):
        top = ceiling(dt)
        results["ceilings"][dt] = top
        log(f"ceiling {dt}: {top['flops_per_second'] / 1e9:.1f} GFLOP/s (2 x 2048^3 jnp.dot, "
            f"median {top['seconds'] * 1e3:.2f} ms)")

    def one(shape, variant, remat="none"):
        config, num_ids = shape_config(shape, variant, remat, dtype)
        peak = results["ceilings"][config.model.dtype]["flops_per_second"]
        trace = f"{profile_dir}/{shape}_{variant}_{remat}" if profile_dir else None
        row = dict(shape=shape, variant=variant, remat=remat, dtype=config.model.dtype,
                   **measure(config, num_ids, repeats=repeats, warmup=warmup, ceiling_flops=peak,
                             trace_dir=trace))
        log(_row_line(row))
        if trace and "skipped" not in row:
            row["top_ops"] = top_ops(trace)
            for top in row["top_ops"]:
                log(f"      {top['seconds'] * 1e3 / repeats:9.1f} ms/step  {top['op']}")
        return row, config, num_ids, peak

    for shape in shapes:
        by_variant, ffn_by_variant = {}, {}
        for variant in variants:
            row, config, num_ids, peak = one(shape, variant)
            results["rows"].append(row)
            by_variant[variant] = row
            if "skipped" not in row:
                ffn = dict(shape=shape, variant=variant,
                           **measure_ffn(config, num_ids, repeats=repeats, ceiling_flops=peak))
                results["ffn"].append(ffn)
                ffn_by_variant[variant] = ffn
                log(f"{shape:>5} {variant:>11} FFN layer alone: {ffn['seconds'] * 1e3:8.1f} ms fwd+bwd | "
                    f"{ffn['tokens_per_second']:9,.0f} tok/s | MFU {ffn['mfu'] * 100:5.1f}%")
        results["ratios"][shape] = ratios = _ratios(by_variant, ffn_by_variant)
        log(f"{shape} ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    if remat_shape:
        for remat in REMATS:
            ran = [r for r in results["rows"] if (r["shape"], r["variant"], r["remat"]) ==
                   (remat_shape, remat_variant, remat)]  # remat none: the main table has it already
            results["remat"].append(ran[0] if ran else one(remat_shape, remat_variant, remat)[0])
    if topk:
        from openmoe2_jax.kernels import bench_ec_topk  # pylint: disable=import-outside-toplevel
        for row in bench_ec_topk.run(bench_ec_topk.SHAPES[:1], repeats=repeats):
            results["topk"].append(row)
            log(f"EC top-k {row['shape']} {row['impl']}: {row['seconds'] * 1e3:.1f} ms")
    if data:
        loader, need = measure_data(), pod_need()
        results["data"] = dict(loader=loader, need=need,
                               ratio=loader["tokens_per_second"] / need["tokens_per_second_per_host"])
        log(f"data: {loader['tokens_per_second']:,.0f} tokens/s per process; a {need['topology']} host needs "
            f"{need['tokens_per_second_per_host']:,.0f} (x{results['data']['ratio']:,.0f})")
    return results


def _ratios(step: dict, ffn: dict) -> dict:
    """EC/TC tokens/s (step and FFN layer alone) and MoE MFU / dense MFU, where both rows ran."""
    ran = {v: r for v, r in step.items() if "skipped" not in r}
    out = {}
    for tc in ("tc", "tc_dropless"):
        if "ec" in ran and tc in ran:
            out[f"ec_over_{tc}_tokens_per_second"] = ran["ec"]["tokens_per_second"] / ran[tc]["tokens_per_second"]
        if "ec" in ffn and tc in ffn:
            out[f"ffn_ec_over_{tc}_tokens_per_second"] = (ffn["ec"]["tokens_per_second"] /
                                                         ffn[tc]["tokens_per_second"])
    if "dense" in ran:
        for v in ("ec", "tc", "tc_dropless"):
            if v in ran:
                out[f"{v}_mfu_over_dense_mfu"] = ran[v]["mfu"] / ran["dense"]["mfu"]
    return out


def _row_line(r: dict) -> str:
    if "skipped" in r:
        return f"{r['shape']:>5} {r['variant']:>11} remat={r['remat']:<9} skipped: {r['skipped']}"
    return (f"{r['shape']:>5} {r['variant']:>11} remat={r['remat']:<9} compile {r['compile_seconds']:5.1f} s | "
            f"{r['step_seconds'] * 1e3:8.1f} ms/step | {r['tokens_per_second']:8,.0f} tok/s | "
            f"MFU {r['mfu'] * 100:5.1f}% | temp {r['temp_bytes'] / 2 ** 20:7.1f} MiB "
            f"(x{r['temp_ratio_2x_batch'] or float('nan'):.2f} at 2x batch) | "
            f"RSS {r['peak_rss_bytes'] / 2 ** 20:,.0f} MiB")


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2 ** 20:,.0f}"


def markdown(results: dict) -> str:
    """The results as markdown tables (the README's Performance section is this output)."""
    ceilings = "; ".join(f"{dt} **{c['flops_per_second'] / 1e9:.1f} GFLOP/s**"
                         for dt, c in results["ceilings"].items())
    out = [f"Backend **{results['backend']}** ({results['device_kind']}, {results['device_count']} "
           f"device(s)), jax {results['jax_version']}. Ceiling (2048 x 2048 jnp.dot, median): {ceilings}.",
           "", "Train step (forward, backward, AdamW):", "",
           "| shape | variant | dtype | batch x seq | compile s | step ms | tokens/s | model MFLOPs/token | "
           "XLA MFLOPs/token | GFLOP/s | MFU | temp MiB | temp at 2x batch | peak RSS MiB |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        out.append(_table_row(r))
    if results["ffn"]:
        out += ["", "One FFN layer alone, forward + backward on the step's tokens (routing + dispatch + "
                    "experts; dense = the SwiGLU):", "",
                "| shape | variant | tokens | ms | tokens/s | FFN MFLOPs/token | MFU |", "|---|---|---|---|---|---|---|"]
        for r in results["ffn"]:
            out.append(f"| {r['shape']} | {r['variant']} | {r['tokens']:,} | {r['seconds'] * 1e3:,.1f} | "
                       f"{r['tokens_per_second']:,.0f} | {r['flops_per_token'] / 1e6:,.2f} | {r['mfu'] * 100:.1f}% |")
    keys = ("ec_over_tc_tokens_per_second", "ffn_ec_over_tc_tokens_per_second",
            "ec_over_tc_dropless_tokens_per_second", "ffn_ec_over_tc_dropless_tokens_per_second",
            "ec_mfu_over_dense_mfu", "tc_mfu_over_dense_mfu")
    out += ["", "| shape | EC/TC tok/s (step) | EC/TC tok/s (FFN) | EC/TC-dropless tok/s (step) | "
                "EC/TC-dropless tok/s (FFN) | EC MFU / dense MFU | TC MFU / dense MFU |",
            "|---|---|---|---|---|---|---|"]
    for shape, ratios in results["ratios"].items():
        out.append(f"| {shape} | " + " | ".join(f"{ratios[k]:.2f}" if k in ratios else "-" for k in keys) + " |")
    if results["remat"]:
        out += ["", "| shape | variant | remat | step ms | MFU | temp MiB | temp at 2x batch | peak RSS MiB |",
                "|---|---|---|---|---|---|---|---|"]
        for r in results["remat"]:
            out.append(f"| {r['shape']} | {r['variant']} | {r['remat']} | {r['step_seconds'] * 1e3:,.0f} | "
                       f"{r['mfu'] * 100:.1f}% | {_mib(r['temp_bytes'])} | "
                       f"x{r['temp_ratio_2x_batch']:.2f} | {_mib(r['peak_rss_bytes'])} |")
    if results.get("data"):
        loader, need = results["data"]["loader"], results["data"]["need"]
        out += ["", "| input pipeline (one of N hosts) | batch | tokens/s per process | a host needs | ratio |",
                "|---|---|---|---|---|",
                f"| prepared shard -> grain -> shuffled rows, 1 of {loader['processes']} | "
                f"{loader['global_batch'] // loader['processes']} x {loader['seq_len']} | "
                f"{loader['tokens_per_second']:,.0f} | {need['tokens_per_second_per_host']:,.0f} "
                f"({need['topology']}, paper config, {need['step_seconds_lower_bound']:.2f} s/step) | "
                f"x{results['data']['ratio']:,.0f} |"]
    if results["topk"]:
        out += ["", "| EC top-k shape | impl | median ms | GB/s (minimum traffic) |", "|---|---|---|---|"]
        for r in results["topk"]:
            out.append(f"| {r['shape']} | {r['impl']} | {r['seconds'] * 1e3:.1f} | {r['gb_per_s']:.2f} |")
    return "\n".join(out)


def _table_row(r: dict) -> str:
    head = f"| {r['shape']} | {r['variant']} | {r['dtype']} | {r['batch']} x {r['seq']} | {r['compile_seconds']:.1f} |"
    if "skipped" in r:
        return head + f" skipped: {r['skipped']} | | | {r['hlo_flops_per_token'] / 1e6:,.1f} | | | {_mib(r['temp_bytes'])} | | |"
    return head + (f" {r['step_seconds'] * 1e3:,.0f} | {r['tokens_per_second']:,.0f} | "
                   f"{r['flops_per_token'] / 1e6:,.1f} | {r['hlo_flops_per_token'] / 1e6:,.1f} | "
                   f"{r['achieved_flops_per_second'] / 1e9:.1f} | {r['mfu'] * 100:.1f}% | "
                   f"{_mib(r['temp_bytes'])} | x{r['temp_ratio_2x_batch']:.2f} | {_mib(r['peak_rss_bytes'])} |")


def main(argv):
    del argv
    from openmoe2_jax import cli  # pylint: disable=import-outside-toplevel
    cli.quiet_logging()
    with cli.user_errors():
        _main()


def _main():
    shapes = [s for s in _SHAPES.value.split(",") if s]
    variants = [v for v in _VARIANTS.value.split(",") if v]
    for s in shapes:
        if s not in SHAPES:
            raise validation.ConfigError(f"--shapes: {s!r} is not one of {sorted(SHAPES)}")
    for v in variants:
        if v not in VARIANTS:
            raise validation.ConfigError(f"--variants: {v!r} is not one of {list(VARIANTS)}")
    if _REMAT_SHAPE.value and _REMAT_SHAPE.value not in SHAPES:
        raise validation.ConfigError(f"--remat_shape: {_REMAT_SHAPE.value!r} is not one of {sorted(SHAPES)} "
                                     "or empty (no remat table)")
    if _DTYPE.value not in ("", "float32", "bfloat16"):
        raise validation.ConfigError(f"--dtype: {_DTYPE.value!r} is not float32, bfloat16 or empty (auto)")
    t0 = time.time()
    results = run(shapes, variants, repeats=_REPEATS.value, warmup=_WARMUP.value,
                  remat_shape=_REMAT_SHAPE.value or None, topk=_TOPK.value, dtype=_DTYPE.value or None,
                  profile_dir=_PROFILE_DIR.value or None, data=_DATA.value)
    results["wall_seconds"] = time.time() - t0
    print("\n" + markdown(results))
    print(f"\nbenchmark wall time: {results['wall_seconds'] / 60:.1f} min")
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
    from absl import app, flags  # pylint: disable=ungrouped-imports
    from openmoe2_jax import cli  # pylint: disable=import-outside-toplevel,reimported
    _SHAPES = flags.DEFINE_string("shapes", "cpu,small,peer", "Comma-separated shapes: cpu, small, peer.")
    _VARIANTS = flags.DEFINE_string("variants", ",".join(VARIANTS), f"Comma-separated, of {VARIANTS}.")
    _REPEATS = flags.DEFINE_integer("repeats", 2, "Timed steps per variant (median reported).")
    _WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps after compiling.")
    _REMAT_SHAPE = flags.DEFINE_string("remat_shape", "small", "Shape of the remat table ('' = none).")
    _TOPK = flags.DEFINE_bool("topk", True, "Time the EC top-k implementations at the paper shape.")
    _DTYPE = flags.DEFINE_string("dtype", "", "Compute dtype of cpu/small; empty = float32 on CPU, "
                                              "else bfloat16.")
    _OUTPUT = flags.DEFINE_string("output", "", "JSON file for the results.")
    _DATA = flags.DEFINE_bool("data", True, "Time the input pipeline alone against a v5p-256 host's need.")
    _PROFILE_DIR = flags.DEFINE_string("profile_dir", "", "Write jax.profiler traces here and print each "
                                                          "variant's most expensive XLA ops.")
    app.run(main, flags_parser=cli.parse_flags)
