"""Config fields renamed since a run may have saved its config.json, and how to read the old names.

`upgrade` is applied to every saved config before it is merged over the current defaults
(runtime/restore.load_config), so old workdirs resume, evaluate and export under the new names; the
command line names the new field when an override uses an old one (cli).
"""
from __future__ import annotations


def _groups_to_group_tokens(groups: int, saved: dict) -> int:
    """moe.num_groups (groups per step; 0 = one per batch shard) as moe.group_tokens (0 = the same)."""
    return saved["train"]["batch_size"] * saved["data"]["seq_len"] // groups if groups else 0


def _same(value, saved: dict):
    del saved
    return value


# old dotted name -> (current dotted name, the old value and the saved config -> the current value)
RENAMED = {
    "moe.num_groups": ("moe.group_tokens", _groups_to_group_tokens),
    "moe.router": ("moe.gate", _same),             # the gate function ("router" also names a weight)
    "moe.z_loss": ("moe.z_loss_coef", _same),      # the coefficient (z_loss is the loss's value)
}


# what to say beside the new name when its value is not the old one's
HINTS = {"moe.group_tokens": " (tokens per routing group: train.batch_size x data.seq_len / the old "
                             "num_groups; 0 as before)"}


def new_name(old: str) -> str | None:
    """The current dotted name of a field renamed from `old` (e.g. 'moe.router'), else None."""
    return RENAMED[old][0] if old in RENAMED else None


def upgrade(saved: dict) -> dict:
    """A saved config (nested plain data, edited in place) with every old field under its current name."""
    for old, (new, convert) in RENAMED.items():
        section, key = old.split(".")
        if key in saved.get(section, {}):
            new_section, new_key = new.split(".")
            saved[new_section][new_key] = convert(saved[section].pop(key), saved)
    return saved
