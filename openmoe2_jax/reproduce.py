"""python -m openmoe2_jax.reproduce --section=N --scale=cpu --workdir=runs/ [--seeds=3] [--collect_only]

(The command lives in openmoe2_jax/experiments/reproduce.py.)
"""
from absl import app

from openmoe2_jax.experiments.reproduce import main

if __name__ == "__main__":
    from openmoe2_jax import cli  # pylint: disable=import-outside-toplevel
    app.run(main, flags_parser=cli.parse_flags)
