"""python -m openmoe2_jax.train --workdir=DIR [--config=FILE[:arg] | --experiment=ID [--scale=S]] [--config.a.b=value ...]

Trains the config (default: configs/default.py, a small diffusion MoE on the bundled corpus; or the
experiment ID secNN/variant at a scale, see configs/scales.py) in DIR, resuming from the
latest checkpoint there. The same command runs on CPU and TPU.
"""
from absl import app, flags

from openmoe2_jax import cli, configs
from openmoe2_jax.train import loop

_CONFIG = cli.define_config_file(
    "config", configs.path("default"),
    "Config file (and :arg); or instead --experiment=secNN/variant (or a study run name) [--scale=cpu].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, config and summary.",
                               required=True)
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for a multi-process "
                                   "run started by hand (on a TPU VM pod this is discovered).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "With --coordinator_address: processes in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "With --coordinator_address: this process's index.")


def initialize_distributed() -> None:
    """jax.distributed.initialize() for multi-process runs: explicit (flags; CPU collectives over
    gloo, for tests on one machine) or discovered on a multi-host TPU VM. Before any other JAX call."""
    import os  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    if _COORDINATOR.value:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
        jax.distributed.initialize()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.quiet_logging()
    initialize_distributed()
    with cli.user_errors():
        loop.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
