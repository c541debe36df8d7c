"""`python -m openmoe2_jax.launch ACTION --name=... --zone=...` (see the package's docstring)."""
import shlex
import subprocess
import sys

from absl import app, flags

from openmoe2_jax import cli
from openmoe2_jax.launch import ACTIONS, commands

_NAME = flags.DEFINE_string("name", None, "TPU VM (node) name.")
_ZONE = flags.DEFINE_string("zone", None, "GCP zone, e.g. us-east5-a.")
_PROJECT = flags.DEFINE_string("project", "", "GCP project (default: gcloud's).")
_ACCELERATOR = flags.DEFINE_string("accelerator", "v5p-8", "Accelerator type, e.g. v5p-256, v5litepod-64.")
_RUNTIME = flags.DEFINE_string("runtime", "v2-alpha-tpuv5", "TPU software version.")
_SPOT = flags.DEFINE_bool("spot", False, "create: spot capacity through queued resources.")
_REPO = flags.DEFINE_string("repo", ".", "setup: the git checkout whose committed HEAD is copied to the workers.")
_PYTHON = flags.DEFINE_string("python", "3.12", "setup: the Python of the workers' virtualenv (3.11-3.13).")
_CONFIG = flags.DEFINE_string("config", "configs/base.py", "run: config file[:arg], relative to the repository.")
_EXPERIMENT = flags.DEFINE_string("experiment", "", "run: an experiment ID (secNN/variant or a study run "
                                  "name) instead of --config; needs --scale.")
_SCALE = flags.DEFINE_string("scale", "", "run: the scale of --experiment (paper, small, cpu, smoke).")
_WORKDIR = flags.DEFINE_string("workdir", None, "run: workdir (gs:// for pods).")
_OVERRIDES = flags.DEFINE_multi_string("override", [], "run: config.a.b=value overrides.")
_FOLLOW = flags.DEFINE_bool("follow", False, "logs: keep streaming.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the gcloud commands instead of running them.")


def main(argv):
    if len(argv) != 2 or argv[1] not in ACTIONS:
        raise app.UsageError(f"usage: python -m openmoe2_jax.launch {{{'|'.join(ACTIONS)}}} --name=... --zone=...")
    try:
        lines = commands(argv[1], _NAME.value, _ZONE.value, _PROJECT.value, _ACCELERATOR.value,
                         _RUNTIME.value, _SPOT.value, _REPO.value, _CONFIG.value, _WORKDIR.value,
                         _OVERRIDES.value, _FOLLOW.value, _PYTHON.value, _EXPERIMENT.value, _SCALE.value)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if argv[1] == "setup" and subprocess.run(["git", "-C", _REPO.value, "status", "--porcelain", "--untracked-files=no"],
                                             capture_output=True, text=True).stdout.strip():
        print(f"warning: {_REPO.value} has uncommitted changes; setup copies its committed HEAD only", file=sys.stderr)
    for line in lines:
        print(shlex.join(line))
        if not _DRY_RUN.value:
            code = subprocess.call(line)
            if code:
                sys.exit(code)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
