"""Experiment IDs -> configs. An ID is `secNN/variant` (e.g. `sec03/ec`), one per ablation variant of
docs/science.md §4, each at a scale (paper | small | cpu | smoke). The original run names of the study
(`{dense|moetopk|moeec}_{tokens}_{epochs}e_{size}_{difflm|ar}[_{variant}]`) are aliases.
"""
from __future__ import annotations

import importlib
import pkgutil

from openmoe2_jax.configs import ablations, scales

SECTION_MODULES = {}
for _info in sorted(pkgutil.iter_modules(ablations.__path__), key=lambda m: m.name):
    if _info.name.startswith("sec"):
        _module = importlib.import_module(f"{ablations.__name__}.{_info.name}")
        SECTION_MODULES[_module.SECTION] = _module

ALIASES = {
    "dense_100b_1e_1b7_difflm": "sec01/dense_1b7",
    "dense_100b_1e_8b_difflm": "sec01/dense_8b",
    "moetopk_100b_1e_8b1b7a_difflm": "sec01/tc",
    "moeec_100b_1e_8b1b7a_difflm": "sec01/ec",
    "dense_1b_96e_1b_ar": "sec02/ar_dense_1b",
    "dense_1b_96e_8b_ar": "sec02/ar_dense_8b",
    "moetopk_1b_96e_8b1a_ar": "sec02/ar_moe_8b1a",
    "dense_1b_96e_1b_difflm": "sec02/dlm_dense_1b",
    "dense_1b_96e_8b_difflm": "sec02/dlm_dense_8b",
    "moetopk_1b_96e_8b1a_difflm": "sec02/dlm_moe_8b1a",
    "moeec_100b_1e_8b1b7a_difflm_lbl": "sec04/ec_lbl",
    "moeec_100b_1e_8b1b7a_difflm_noshared": "sec05/ec_noshared",
    "moeec_100b_1e_8b1b7a_difflm_16e": "sec06/ec_16e",
    "moeec_100b_1e_8b1b7a_difflm_256e": "sec06/ec_256e",
    "moeec_100b_1e_8b1b7a_difflm_upcycle": "sec07/ec_upcycle",
    "moeec_100b_1e_8b1b7a_difflm_skiplayer": "sec08/ec_skiplayer",
    "moetopk_100b_1e_8b1b7a_difflm_scalingfactor": "sec09/tc_scalingfactor",
    "moeec_100b_1e_8b1b7a_difflm_scalingfactor": "sec09/ec_scalingfactor",
    "moeec_100b_1e_8b1b7a_difflm_seq": "sec10/ec_seq",
    "moeec_100b_1e_8b1b7a_difflm_sigmoid": "sec11/ec_sigmoid",
}


def section(number: int):
    if number not in SECTION_MODULES:
        raise ValueError(f"section {number}: expected one of {sorted(SECTION_MODULES)}")
    return SECTION_MODULES[number]


def all_ids() -> list[str]:
    return [f"sec{n:02d}/{v}" for n, m in sorted(SECTION_MODULES.items()) for v in m.VARIANTS]


def resolve(experiment_id: str) -> tuple[int, str]:
    """`secNN/variant` or an alias -> (section number, variant)."""
    experiment_id = ALIASES.get(experiment_id, experiment_id)
    try:
        sec, variant = experiment_id.split("/")
        number = int(sec.removeprefix("sec"))
    except ValueError:
        raise ValueError(f"experiment {experiment_id!r}: expected secNN/variant or an alias "
                         f"({', '.join(sorted(ALIASES)[:3])}, ...)") from None
    if variant not in section(number).VARIANTS:
        raise ValueError(f"experiment {experiment_id!r}: section {number} has "
                         f"{sorted(section(number).VARIANTS)}")
    return number, variant


def get_config(experiment_id: str, scale: str = "cpu"):
    number, variant = resolve(experiment_id)
    return section(number).VARIANTS[variant](scales.get(scale))
