"""python -m openmoe2_jax.train --workdir=DIR [--config=FILE[:arg]] [--config.a.b=value ...]

Trains the config (default: the tiny diffusion LM on the bundled corpus) in DIR, resuming from the
latest checkpoint there. The same command runs on CPU and TPU.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from openmoe2_jax import configs, errors
from openmoe2_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", configs.path("tiny"), "Config file (and :arg).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, config and summary.",
                               required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and XLA log every save at INFO
    try:
        loop.train(_CONFIG.value, _WORKDIR.value)
    except errors.USER_ERRORS as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    app.run(main)
