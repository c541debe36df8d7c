"""Run or collect one ablation section and write its table and loss-curve plot.

  python -m openmoe2_jax.reproduce --section=3 --scale=cpu --workdir=runs/ --seeds=3
  python -m openmoe2_jax.reproduce --section=3 --scale=paper --workdir=gs://bucket/runs --collect_only

Runs every variant of the section with seeds 0..K-1 (config.seed: initialisation, order of the
training rows, diffusion masks; the validation split and masks stay fixed by config.eval.seed) in
WORKDIR/<scale>/runs/<key>/seed<k> (experiments/runs.py: identical configs share one directory, so
a run shared by sections trains once; a finished run is skipped, an interrupted one resumes from its
checkpoint). Then reads each run — the summary, the TensorBoard logs — and writes
WORKDIR/<scale>/secNN/table.md (mean ± std over seeds, the verdict under experiments/stats.py's rule),
results.json (the per-seed values) and loss_curves.png (mean over seeds, ±1 std band), with the
published conclusion beside ours. `--collect_only` only reads (for runs done elsewhere). WORKDIR is
local or gs://... (etils.epath; the `gcs` install extra).
Validation loss = the trainer's final evaluation (diffusion: ELBO with fixed masks; AR: NLL), in
nats/token on the same held-out rows for every variant and seed.
"""
from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
from absl import app, flags
from etils import epath
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from openmoe2_jax import cli, errors, flops
from openmoe2_jax.configs import resolve, scales
from openmoe2_jax.experiments import claims, registry, runs, stats, summary
from openmoe2_jax.runtime import paths
from openmoe2_jax.train import loop

_SECTION = flags.DEFINE_string("section", None, "Ablation section: N (1-11), a list N,M,... or 'all' "
                               "(every section in order, then the overview table).", required=True)
_SCALE = flags.DEFINE_enum("scale", "cpu", list(scales.SCALES), "Scale of every variant.")
_WORKDIR = flags.DEFINE_string("workdir", "runs", "Root of the run directories.")
_COLLECT = flags.DEFINE_bool("collect_only", False, "Only read existing workdirs and write the table.")
_STEPS = flags.DEFINE_integer("steps", 0, "Override the scale's training steps (0 = keep).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per variant (config.seed = 0..seeds-1).")

PER_SEED = ("steps", "final_train_loss", "validation_loss", "first_validation_loss", "best_validation_loss",
            "best_validation_step", "validation_bits_per_byte", "tokens_per_second", "wall_seconds")
ONCE = ("total_params", "active_params", "flops_per_token", "objective", "unique_tokens",
        "tokens_per_step")  # the same for every seed


class Preempted(Exception):
    """The sweep was stopped (SIGTERM) during a run; that run's checkpoint is saved."""


@dataclasses.dataclass(frozen=True)
class Run:
    variant: str
    seed: int
    key: str
    workdir: epath.Path
    config: object      # the run's ml_collections.ConfigDict (seed and dependency filled in)
    config_json: str    # what its key hashes (runs.canonical), written beside the seed directories


def variant_configs(section, scale: str, steps: int = 0) -> dict:
    """{variant: config} in run order (dependencies first), seed and dependency not yet filled in."""
    depends = getattr(section, "DEPENDS", {})
    order = sorted(section.VARIANTS, key=lambda v: (v in depends, list(section.VARIANTS).index(v)))
    out = {}
    for variant in order:
        config = section.VARIANTS[variant](scales.get(scale))
        if steps:
            config.train.steps = max(steps // 4, 2) if variant in depends.values() and steps >= 8 else steps
            config.train.warmup_steps = min(config.train.warmup_steps, config.train.steps)
        out[variant] = config
    return out


def plan(section, scale: str, root: str, seeds: int = 3, steps: int = 0) -> dict[str, list[Run]]:
    """{variant: its runs, one per seed} in run order; a dependent run (DEPENDS) starts from the same
    seed of its dependency, and its key includes the dependency's key (not its path)."""
    if seeds < 1:
        raise ValueError(f"seeds = {seeds}: expected at least 1")
    depends = getattr(section, "DEPENDS", {})
    keys, out = {}, {}
    for variant, config in variant_configs(section, scale, steps).items():
        dependency_key = keys[depends[variant]] if variant in depends else ""
        keys[variant] = runs.run_key(config, dependency_key)
        text = runs.to_json(runs.canonical(config, dependency_key), indent=2)
        out[variant] = [
            Run(variant, seed, keys[variant], runs.run_dir(root, scale, keys[variant], seed),
                runs.seeded(config, seed, runs.run_dir(root, scale, dependency_key, seed)
                            if dependency_key else ""), text)
            for seed in range(seeds)]
    return out


def _scalars(workdir: epath.PathLike, tag: str) -> list[tuple[int, float]]:
    tb = epath.Path(workdir) / "tensorboard"
    if not tb.is_dir():
        return []
    acc = EventAccumulator(str(tb))
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def collect(workdir: epath.PathLike, config, name: str = "") -> dict:
    """What the table needs from one finished run (`name` says which, in errors)."""
    path = epath.Path(workdir) / "summary.json"
    if not path.exists():
        raise errors.CheckpointError(f"{name + ': ' if name else ''}{workdir} has no summary.json: the run "
                                     "has not finished.")
    summary = json.loads(path.read_text())
    evals = _scalars(workdir, "eval/loss")
    speeds = [v for _, v in _scalars(workdir, "perf/tokens_per_second")]
    mc = flops.model_config(config)
    counts = flops.param_counts(mc)
    return dict(
        steps=summary["steps"], final_train_loss=summary["final_train_loss"],
        validation_loss=evals[-1][1] if evals else summary["final_validation_loss"],
        first_validation_loss=evals[0][1] if evals else float("nan"),
        validation_bits_per_byte=summary.get("final_validation_bits_per_byte", float("nan")),
        wall_seconds=summary["wall_seconds"],  # of the run's last (or only) process
        best_validation_loss=min(v for _, v in evals) if evals else float("nan"),
        best_validation_step=min(evals, key=lambda e: e[1])[0] if evals else -1,
        # Steady state: the median over logging windows after the first (which holds the compile).
        tokens_per_second=float(np.median(speeds[1:] if len(speeds) > 1 else speeds)) if speeds else 0.0,
        total_params=counts["total"], active_params=counts["active"],
        flops_per_token=flops.train_flops_per_token(mc, config.data.seq_len),
        objective=config.objective.kind,
        unique_tokens=config.data.max_train_tokens,
        tokens_per_step=resolve.step_tokens(config),
    )


def aggregate(variant_runs: list[Run], collected: list[dict]) -> dict:
    """One variant's entry of results.json: per-seed lists of PER_SEED, the rest once."""
    out = dict(run=f"runs/{variant_runs[0].key}", seeds=[r.seed for r in variant_runs])
    out.update({m: [c[m] for c in collected] for m in PER_SEED})
    out.update({m: collected[0][m] for m in ONCE})
    return out


def write_table(section, scale: str, results: dict, out_dir: epath.Path) -> str:
    compared = getattr(section, "COMPARED", tuple(results))
    claim = claims.CLAIMS[section.SECTION]
    outcome, reason = claim.check(results)
    n = min(len(results[v]["seeds"]) for v in compared)
    lines = [f"# Section {section.SECTION}: {section.TITLE} ({scale} scale, {n} seed{'s' * (n > 1)})", "",
             claim.question, "",
             "| variant | run | objective | params total | active | FLOPs/token | steps | validation loss "
             "(nats/token), mean ± std (N) | tokens/s, mean ± std (N) | final train loss, mean |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for variant in compared:
        r = results[variant]
        steps = "/".join(str(s) for s in sorted(set(r["steps"])))
        loss = stats.format_summary(stats.summary(r["validation_loss"]))
        speed = stats.format_summary(stats.summary(r["tokens_per_second"]), digits=0, thousands=True)
        lines.append(f"| {variant} | `{r['run']}` | {r['objective']} | {flops.human(r['total_params'])} | "
                     f"{flops.human(r['active_params'])} | {flops.human(r['flops_per_token'])} | {steps} | "
                     f"{loss} | {speed} | {np.mean(r['final_train_loss']):.4f} |")
    if hasattr(section, "EPOCHS"):
        lines += ["", *repeated_lines(section, results)]
    wall = sum(sum(results[v]["wall_seconds"]) for v in results)
    lines += ["", f"Training wall time of this section's runs: {wall / 60:.1f} min in all "
              "(a run shared with another section counted in each; a resumed run: its last process)."]
    lines += ["", f"**Published:** {claim.published}", "",
              f"**Ours:** {outcome} — {reason}.", "", f"**Rule:** {stats.rule(n)}", ""]
    text = "\n".join(lines)
    (out_dir / "table.md").write_text(text)
    (out_dir / "results.json").write_text(json.dumps(
        dict(section=section.SECTION, scale=scale, seeds=n, rule=stats.rule(n), outcome=outcome,
             reason=reason, results=results), indent=2))
    return text


def repeated_lines(section, results: dict) -> list[str]:
    """Section 2's overfitting table: per variant, its unique tokens and epochs, the lowest validation
    loss and when, and how far the final loss has turned up from it (mean over seeds)."""
    lines = ["Overfitting (validation loss against epochs; `loss_vs_epochs.png`): the lowest validation loss "
             "of each run, the epoch it was reached, and final minus lowest (> 0: the held-out loss turned up).",
             "", "| variant | unique tokens | epochs | lowest validation loss, mean ± std | at epoch (mean) | "
             "final − lowest, mean ± std |", "|---|---|---|---|---|---|"]
    for variant, r in results.items():
        unique = r["unique_tokens"]
        per_epoch = r["tokens_per_step"] / unique
        up = [f - b for f, b in zip(r["validation_loss"], r["best_validation_loss"])]
        lines.append(f"| {variant} | {unique:,} | {np.mean(r['steps']) * per_epoch:.0f} | "
                     f"{stats.format_summary(stats.summary(r['best_validation_loss']))} | "
                     f"{np.mean(r['best_validation_step']) * per_epoch:.1f} | "
                     f"{stats.format_summary(stats.summary(up))} |")
    return lines


def _mean_curve(workdirs: list[epath.PathLike], tags: tuple[str, ...]):
    """(steps, mean, std) over the runs of the first of `tags` each run logged, at the steps all have."""
    curves = []
    for workdir in workdirs:
        points = next((dict(p) for p in (_scalars(workdir, t) for t in tags) if p), None)
        if points:
            curves.append(points)
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if not steps:
        return None
    values = np.array([[c[s] for s in steps] for c in curves])
    std = values.std(0, ddof=1) if len(curves) > 1 else np.zeros(len(steps))
    return np.array(steps), values.mean(0), std


def plot(section, scale: str, workdirs: dict, out_dir: epath.Path) -> epath.Path:
    """Mean over seeds per variant (workdirs: variant -> its seeds' workdirs), shaded ±1 std."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for variant, dirs in workdirs.items():
        for ax, tags, marker in ((ax_train, ("train/loss_window_mean", "train/loss"), None),
                                 (ax_val, ("eval/loss",), "o")):
            curve = _mean_curve(dirs, tags)
            if curve:
                steps, mean, std = curve
                (line,) = ax.plot(steps, mean, marker=marker, label=f"{variant} (n={len(dirs)})")
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax_train.set(title="training loss (window mean)", xlabel="step", ylabel="loss")
    ax_val.set(title="validation loss (nats/token)", xlabel="step")
    for ax in (ax_train, ax_val):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Section {section.SECTION}: {section.TITLE} ({scale}; mean over seeds, ±1 std shaded)")
    fig.tight_layout()
    path = paths.save_png(fig, out_dir / "loss_curves.png")
    plt.close(fig)
    return path


def plot_repeated(section, scale: str, planned: dict, out_dir: epath.Path) -> epath.Path:
    """Section 2: validation loss (mean over seeds, ±1 std) against epochs over the unique tokens and
    against tokens seen, one line per variant; the data budgets differ by line style."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    fig, (ax_epochs, ax_tokens) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {}
    for variant, variant_runs in planned.items():
        curve = _mean_curve([r.workdir for r in variant_runs], ("eval/loss",))
        if not curve:
            continue
        steps, mean, std = curve
        config = variant_runs[0].config
        tokens = steps * resolve.step_tokens(config)
        base = variant.removesuffix("_u6")
        style = "--" if variant != base else "-"
        for ax, x in ((ax_epochs, tokens / config.data.max_train_tokens), (ax_tokens, tokens)):
            (line,) = ax.plot(x, mean, style, marker=".", color=colors.get(base),
                              label=f"{variant} ({config.data.max_train_tokens:,} unique, n={len(variant_runs)})")
            colors[base] = line.get_color()
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax_epochs.set(title="validation loss against epochs", xlabel="epochs over the unique tokens",
                  ylabel="nats/token (AR NLL; diffusion unbiased ELBO)", xscale="log")
    ax_tokens.set(title="validation loss against tokens seen", xlabel="tokens seen")
    for ax in (ax_epochs, ax_tokens):
        ax.grid(alpha=0.3)
    if ax_epochs.get_legend_handles_labels()[0]:
        ax_tokens.legend(*ax_epochs.get_legend_handles_labels(), fontsize=7)
    fig.suptitle(f"Section {section.SECTION}: {section.TITLE} ({scale}; mean over seeds, ±1 std shaded)")
    fig.tight_layout()
    path = paths.save_png(fig, out_dir / "loss_vs_epochs.png")
    plt.close(fig)
    return path


def reproduce(number: int, scale: str, root: str, collect_only: bool = False, steps: int = 0,
              seeds: int = 3, log=print) -> str:
    section = registry.section(number)
    planned = plan(section, scale, root, seeds, steps)
    total, k = sum(len(rs) for rs in planned.values()), 0
    for variant, variant_runs in planned.items():
        runs.check_config(runs.key_dir(root, scale, variant_runs[0].key), variant_runs[0].config_json,
                          write=not collect_only)
        if collect_only:
            continue
        for run in variant_runs:
            k += 1
            name = f"sec{number:02d}/{variant} seed {run.seed}"
            if runs.finished(run.workdir, run.config.train.steps):
                log(f"[{k}/{total}] {name}: finished in {run.workdir}, skipped")
                continue
            log(f"[{k}/{total}] {name}: training in {run.workdir}")
            done = loop.train(run.config, run.workdir, log=lambda msg, n=name: log(f"  [{n}] {msg}"))
            if done.preempted:  # SIGTERM: the run saved its checkpoint; stop the sweep, not just the run
                raise Preempted(f"{name}: stopped by SIGTERM at step {done.steps} (checkpoint saved); the same "
                                "command resumes the sweep from there")
    results = {v: aggregate(rs, [collect(r.workdir, r.config, f"sec{number:02d}/{v} seed {r.seed}")
                                 for r in rs])
               for v, rs in planned.items()}
    out_dir = epath.Path(root) / scale / f"sec{number:02d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    text = write_table(section, scale, results, out_dir)
    compared = getattr(section, "COMPARED", tuple(planned))
    plot(section, scale, {v: [r.workdir for r in planned[v]] for v in compared}, out_dir)
    if hasattr(section, "EPOCHS"):
        plot_repeated(section, scale, planned, out_dir)
    return text


def parse_sections(text: str) -> list[int]:
    """`--section`: "all", "N" or "N,M,..." -> section numbers (each checked against the registry)."""
    if text.strip() == "all":
        return sorted(registry.SECTION_MODULES)
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--section={text!r}: expected 'all', a section number (1-11) or a comma-separated "
                         "list of them") from None
    for number in numbers:
        registry.section(number)
    return numbers


def main(argv):
    del argv
    cli.quiet_logging()
    with cli.user_errors(ValueError, Preempted):
        numbers = parse_sections(_SECTION.value)
        for number in numbers:
            start = time.time()
            print(reproduce(number, _SCALE.value, _WORKDIR.value, _COLLECT.value, _STEPS.value, _SEEDS.value))
            print(f"section {number}: {time.time() - start:.0f} s wall\n", flush=True)
        if len(numbers) > 1:
            overview = summary.summarize(_WORKDIR.value, _SCALE.value)
            (epath.Path(_WORKDIR.value) / _SCALE.value / "overview.md").write_text(overview)
            print(overview)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
