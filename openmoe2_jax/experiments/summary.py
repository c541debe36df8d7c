"""One table over every reproduced section of a scale (reads WORKDIR/<scale>/secNN/results.json).

  python -m openmoe2_jax.experiments.summary --workdir=runs --scale=cpu > docs/cpu_study.md
"""
import json

from absl import app, flags
from etils import epath

from openmoe2_jax.experiments import claims, registry, stats


def summarize(root: str, scale: str) -> str:
    lines = [f"# Ablations at the {scale} scale", "",
             "Validation loss in nats/token on the same held-out rows (diffusion: ELBO with fixed masks; "
             "AR: NLL), mean ± sample std over seeds (N); tokens/s is the mean over seeds of each run's "
             "median over logging windows.", "",
             "| section | variant: validation loss (tokens/s) | published | ours |",
             "|---|---|---|---|"]
    rules = set()
    for number, module in sorted(registry.SECTION_MODULES.items()):
        claim = claims.CLAIMS[number]
        path = epath.Path(root) / scale / f"sec{number:02d}" / "results.json"
        if not path.exists():
            lines.append(f"| {number}. {module.TITLE} | not run | {claim.published} | — |")
            continue
        data = json.loads(path.read_text())
        results = data["results"]
        shown = getattr(module, "COMPARED", tuple(results))
        cells = "<br>".join(
            f"{v}: {stats.format_summary(stats.summary(claims.values(results, v)))} "
            f"({stats.summary(claims.values(results, v, 'tokens_per_second')).mean:,.0f})" for v in shown)
        outcome, why = claim.check(results)
        rules.add(stats.rule(min(len(claims.values(results, v)) for v in shown)))
        lines.append(f"| {number}. {module.TITLE} | {cells} | {claim.published} | **{outcome}** ({why}) |")
    for r in sorted(rules):
        lines += ["", f"Rule: {r}"]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    print(summarize(_WORKDIR.value, _SCALE.value), end="")


if __name__ == "__main__":
    _WORKDIR = flags.DEFINE_string("workdir", "runs", "Root of the run directories.")
    _SCALE = flags.DEFINE_string("scale", "cpu", "Scale.")
    from openmoe2_jax import cli  # pylint: disable=import-outside-toplevel
    app.run(main, flags_parser=cli.parse_flags)
