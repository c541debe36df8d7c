"""One table over every reproduced section of a scale (reads WORKDIR/<scale>/secNN/results.json).

  python -m openmoe2_jax.experiments.summary --workdir=runs --scale=tiny > docs/tiny_results.md
"""
import json
import os

from absl import app, flags

from openmoe2_jax.experiments import registry



def summarize(root: str, scale: str) -> str:
    lines = [f"# Ablations at the {scale} scale", "",
             "Validation loss in nats/token on the same held-out rows (diffusion: ELBO with fixed masks; "
             "AR: NLL); tokens/s is the median over logging windows of each run.", "",
             "| section | variant: validation loss (tokens/s) | published | agrees with the paper's direction? |",
             "|---|---|---|---|"]
    for number, module in sorted(registry.SECTION_MODULES.items()):
        path = os.path.join(root, scale, f"sec{number:02d}", "results.json")
        if not os.path.exists(path):
            lines.append(f"| {number}. {module.TITLE} | not run | {module.PUBLISHED} | — |")
            continue
        with open(path) as f:
            data = json.load(f)
        shown = getattr(module, "COMPARED", tuple(data["results"]))
        cells = "<br>".join(f"{v}: {data['results'][v]['validation_loss']:.4f} "
                            f"({data['results'][v]['tokens_per_second']:,.0f})" for v in shown)
        _, why = module.direction(data["results"])
        lines.append(f"| {number}. {module.TITLE} | {cells} | {module.PUBLISHED} | "
                     f"{'yes' if data['agrees'] else 'no'} ({why}) |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    print(summarize(_WORKDIR.value, _SCALE.value), end="")


if __name__ == "__main__":
    _WORKDIR = flags.DEFINE_string("workdir", "runs", "Root of the run directories.")
    _SCALE = flags.DEFINE_string("scale", "tiny", "Scale.")
    from openmoe2_jax import cli  # pylint: disable=import-outside-toplevel
    app.run(main, flags_parser=cli.parse_flags)
