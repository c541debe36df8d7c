"""Run or collect one ablation section and write its table and loss-curve plot.

  python -m openmoe2_jax.reproduce --section=3 --scale=tiny --workdir=runs/
  python -m openmoe2_jax.reproduce --section=3 --scale=paper --workdir=gs://bucket/runs --collect_only

Runs every variant of the section in WORKDIR/<scale>/secNN/<variant> (a finished run is skipped, an
interrupted one resumes from its checkpoint), then reads each workdir — the summary, the TensorBoard
logs and the config — and writes WORKDIR/<scale>/secNN/table.md, results.json and loss_curves.png,
with the published conclusion beside ours. `--collect_only` only reads (for runs done elsewhere).
Validation loss = the trainer's final evaluation (diffusion: ELBO with fixed masks; AR: NLL), in
nats/token on the same held-out rows for every variant.
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from openmoe2_jax import cli, errors, flops
from openmoe2_jax.configs import scales
from openmoe2_jax.experiments import registry
from openmoe2_jax.train import loop

_SECTION = flags.DEFINE_integer("section", None, "Ablation section (1-11).", required=True)
_SCALE = flags.DEFINE_enum("scale", "tiny", list(scales.SCALES), "Scale of every variant.")
_WORKDIR = flags.DEFINE_string("workdir", "runs", "Root of the run directories.")
_COLLECT = flags.DEFINE_bool("collect_only", False, "Only read existing workdirs and write the table.")
_STEPS = flags.DEFINE_integer("steps", 0, "Override the scale's training steps (0 = keep).")


def variant_configs(section, scale: str, root: str, steps: int = 0) -> dict:
    """{variant: config} in run order (dependencies first), with dependency workdirs filled in."""
    depends = getattr(section, "DEPENDS", {})
    order = sorted(section.VARIANTS, key=lambda v: (v in depends, list(section.VARIANTS).index(v)))
    out = {}
    for variant in order:
        config = section.VARIANTS[variant](scales.get(scale))
        if steps:
            config.train.steps = max(steps // 4, 2) if variant in depends.values() and steps >= 8 else steps
            config.train.warmup_steps = min(config.train.warmup_steps, config.train.steps)
        if variant in depends:
            config.moe.upcycle_from = run_dir(root, scale, section.SECTION, depends[variant])
        out[variant] = config
    return out


def run_dir(root: str, scale: str, section: int, variant: str) -> str:
    return os.path.join(root, scale, f"sec{section:02d}", variant)


def _scalars(workdir: str, tag: str) -> list[tuple[int, float]]:
    tb = os.path.join(workdir, "tensorboard")
    if not os.path.isdir(tb):
        return []
    acc = EventAccumulator(tb)
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def collect(workdir: str, config) -> dict:
    """What the table needs from one finished run."""
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        raise errors.CheckpointError(f"{workdir} has no summary.json: the run has not finished.")
    with open(path) as f:
        summary = json.load(f)
    evals = _scalars(workdir, "eval/loss")
    speeds = [v for _, v in _scalars(workdir, "perf/tokens_per_second")]
    mc = flops.model_config(config)
    counts = flops.param_counts(mc)
    return dict(
        steps=summary["steps"], final_train_loss=summary["final_train_loss"],
        validation_loss=evals[-1][1] if evals else summary["final_validation_loss"],
        first_validation_loss=evals[0][1] if evals else float("nan"),
        # Steady state: the median over logging windows after the first (which holds the compile).
        tokens_per_second=float(np.median(speeds[1:] if len(speeds) > 1 else speeds)) if speeds else 0.0,
        total_params=counts["total"], active_params=counts["active"],
        flops_per_token=flops.train_flops_per_token(mc, config.data.seq_len),
        objective=config.objective.kind,
    )


def write_table(section, scale: str, results: dict, out_dir: str) -> str:
    compared = getattr(section, "COMPARED", tuple(results))
    agrees, why = section.direction(results)
    lines = [f"# Section {section.SECTION}: {section.TITLE} ({scale} scale)", "",
             section.QUESTION, "",
             "| variant | objective | params total | active | FLOPs/token | steps | final train loss | "
             "validation loss (nats/token) | tokens/s |", "|---|---|---|---|---|---|---|---|---|"]
    for variant in compared:
        r = results[variant]
        lines.append(f"| {variant} | {r['objective']} | {flops.human(r['total_params'])} | "
                     f"{flops.human(r['active_params'])} | {flops.human(r['flops_per_token'])} | {r['steps']} | "
                     f"{r['final_train_loss']:.4f} | {r['validation_loss']:.4f} | {r['tokens_per_second']:,.0f} |")
    lines += ["", f"**Published:** {section.PUBLISHED}", "",
              f"**Agrees with the paper's direction?** {'yes' if agrees else 'no'} — {why}.", ""]
    text = "\n".join(lines)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(dict(section=section.SECTION, scale=scale, agrees=agrees, results=results), f, indent=2)
    return text


def plot(section, scale: str, workdirs: dict, out_dir: str) -> str:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for variant, workdir in workdirs.items():
        train = _scalars(workdir, "train/loss_window_mean") or _scalars(workdir, "train/loss")
        val = _scalars(workdir, "eval/loss")
        if train:
            ax_train.plot(*zip(*train), label=variant)
        if val:
            ax_val.plot(*zip(*val), marker="o", label=variant)
    ax_train.set(title="training loss (window mean)", xlabel="step", ylabel="loss")
    ax_val.set(title="validation loss (nats/token)", xlabel="step")
    for ax in (ax_train, ax_val):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Section {section.SECTION}: {section.TITLE} ({scale})")
    fig.tight_layout()
    path = os.path.join(out_dir, "loss_curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def reproduce(number: int, scale: str, root: str, collect_only: bool = False, steps: int = 0,
              log=print) -> str:
    section = registry.section(number)
    configs = variant_configs(section, scale, root, steps)
    workdirs = {v: run_dir(root, scale, number, v) for v in configs}
    for variant, config in configs.items():
        if collect_only:
            continue
        summary = os.path.join(workdirs[variant], "summary.json")
        if os.path.exists(summary):
            with open(summary) as f:
                if json.load(f)["steps"] >= config.train.steps:
                    log(f"sec{number:02d}/{variant}: finished, skipped")
                    continue
        log(f"sec{number:02d}/{variant}: training in {workdirs[variant]}")
        loop.train(config, workdirs[variant], log=lambda msg, v=variant: log(f"  [{v}] {msg}"))
    results = {v: collect(workdirs[v], configs[v]) for v in configs}
    out_dir = os.path.join(root, scale, f"sec{number:02d}")
    os.makedirs(out_dir, exist_ok=True)
    text = write_table(section, scale, results, out_dir)
    plot(section, scale, {v: workdirs[v] for v in getattr(section, "COMPARED", tuple(configs))}, out_dir)
    return text


def main(argv):
    del argv
    cli.quiet_logging()
    with cli.user_errors(ValueError):
        print(reproduce(_SECTION.value, _SCALE.value, _WORKDIR.value, _COLLECT.value, _STEPS.value))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
