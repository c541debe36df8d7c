"""python -m openmoe2_jax.train --workdir=DIR [--config=FILE[:arg]] [--config.a.b=value ...]

Trains the config (default: the tiny diffusion LM on the bundled corpus) in DIR, resuming from the
latest checkpoint there. The same command runs on CPU and TPU.
"""
from absl import app, flags
from ml_collections import config_flags

from openmoe2_jax import cli, configs
from openmoe2_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", configs.path("tiny"), "Config file (and :arg).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, config and summary.",
                               required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.quiet_logging()
    with cli.user_errors():
        loop.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
