"""Configs as code (ml_collections). `base.py` is the paper default; `default.py` the CPU default (README command 1).

Every config file defines `get_config(arg=None)` and can be passed to any CLI as
`--config=configs/default.py` with `--config.model.num_layers=4`-style overrides.
"""
import os

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


def path(name: str) -> str:
    """Absolute path of a packaged config file, e.g. path("default") (usable as a --config default)."""
    return os.path.join(CONFIG_DIR, f"{name}.py")
