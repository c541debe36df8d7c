"""Run directories keyed by what the run computes: ROOT/<scale>/runs/<key>/seed<k>/.

key = the first 16 hex digits of the SHA-256 of the config as JSON (sorted keys, compact separators)
without `seed` (the seed is the subdirectory), and with `moe.upcycle_from` of a run that starts from
another run replaced by "run:<that run's key>" (the same seed of it), so keys do not depend on where
ROOT is. No other field is left out, not even logging or checkpoint cadence: two runs share a
directory only if their configs are identical. A field added to the config after runs were keyed is
left out while it has the value that computes what the runs before it computed (ADDED_FIELDS), so
adding an option does not retrain every run already made. Identical
variants of different sections (the `ec` baseline of sections 1 and 3-11) are therefore one run.
ROOT/<scale>/runs/<key>/config.json holds the JSON that was hashed. ROOT is local or gs://... (every
directory here is an etils.epath.Path).
"""
from __future__ import annotations

import hashlib
import json
import os

from etils import epath

KEY_DIGITS = 16

# (section, field): the value under which runs keyed before the field existed compute the same thing.
ADDED_FIELDS = {("objective", "masked_head"): 0.0}


def canonical(config, dependency_key: str = "") -> dict:
    """The config as plain data without `seed`; with `dependency_key`, moe.upcycle_from names it."""
    data = config.to_dict()
    if "seed" not in data:
        raise ValueError(f"config: expected a top-level 'seed' field, got fields {sorted(data)}")
    del data["seed"]
    for (section, field), unchanged in ADDED_FIELDS.items():
        if data.get(section, {}).get(field, unchanged) == unchanged:
            data.get(section, {}).pop(field, None)
    if dependency_key:
        data["moe"]["upcycle_from"] = f"run:{dependency_key}"
    return data


def to_json(data: dict, indent: int | None = None) -> str:
    return json.dumps(data, sort_keys=True, indent=indent, separators=(",", ": ") if indent else (",", ":"))


def run_key(config, dependency_key: str = "") -> str:
    return hashlib.sha256(to_json(canonical(config, dependency_key)).encode()).hexdigest()[:KEY_DIGITS]


def key_dir(root: epath.PathLike, scale: str, key: str) -> epath.Path:
    return epath.Path(root) / scale / "runs" / key


def run_dir(root: epath.PathLike, scale: str, key: str, seed: int) -> epath.Path:
    return key_dir(root, scale, key) / f"seed{seed}"


def seeded(config, seed: int, upcycle_from: epath.PathLike = ""):
    """A copy of `config` with `seed` (and moe.upcycle_from, when given, as a string) set."""
    out = config.copy_and_resolve_references()
    out.seed = seed
    if upcycle_from:
        out.moe.upcycle_from = os.fspath(upcycle_from)
    return out


def finished(workdir: epath.PathLike, steps: int) -> bool:
    """Whether the run in `workdir` has a summary.json of at least `steps` steps (an interrupted run
    has none, or fewer)."""
    path = epath.Path(workdir) / "summary.json"
    if not path.exists():
        return False
    return json.loads(path.read_text())["steps"] >= steps


def check_config(directory: epath.PathLike, text: str, write: bool) -> None:
    """Makes sure `directory`/config.json holds `text` (writes it first when `write` and it is absent)."""
    directory = epath.Path(directory)
    path = directory / "config.json"
    if not path.exists():
        if write:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return
    if json.loads(path.read_text()) != json.loads(text):
        raise ValueError(f"{path}: holds a different config than the one its key "
                         f"{directory.name} was computed from; expected the same (move that "
                         "directory away)")
