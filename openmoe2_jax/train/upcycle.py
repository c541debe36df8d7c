"""Upcycling (docs/science.md §2, ablation 7): initialise an MoE run from a dense run's checkpoint.

Everything but the FFNs (embedding, attention, norms, head) is copied. In each MoE layer:
  copy   every routed expert is the dense FFN (needs expert_mlp_dim = the dense width) — Megatron's
         recipe;
  slice  the dense FFN's F hidden units are cut into F / f consecutive slices of width f; routed
         expert e is slice (e mod F / f). With k = F / f experts per token (and no scaling factors),
         a token whose experts cover every slice once gets the dense FFN back up to the gate weights.
         (The original's fine-grained method was not published; this is our documented choice.)
The router is fresh (random). Shared experts keep their random gate/up weights but start with a zero
down-projection, so at step 0 they add nothing: with `copy` and post-softmax gates (which sum to 1),
every token chosen by at least one expert gets exactly the dense FFN's output.
Dense layers of the MoE model (first_dense_layers) copy the dense FFN directly.
"""
from __future__ import annotations

import json

import numpy as np
import orbax.checkpoint as ocp

from openmoe2_jax.models.transformer import unstacked
from openmoe2_jax.runtime import paths
from openmoe2_jax.runtime.checkpoint import CheckpointError, Checkpoints


def load_dense_params(workdir: str) -> dict:
    """The params of the latest checkpoint in a dense run's workdir (local or gs://), as numpy arrays."""
    run = paths.absolute(workdir)
    ckpt_dir = run / "checkpoints"
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"config.moe.upcycle_from = {workdir!r}: no checkpoints directory at "
                              f"{ckpt_dir} (expected the workdir of a finished dense run).")
    config_path = run / "config.json"
    if config_path.exists():
        ffn = json.loads(config_path.read_text()).get("model", {}).get("ffn", "dense")
        if ffn != "dense":
            raise CheckpointError(f"config.moe.upcycle_from = {workdir!r} is an MoE run "
                                  f"(model.ffn = {ffn!r}); upcycling starts from a dense run.")
    step = Checkpoints(ckpt_dir, None, False, read_only=True).latest_step()
    if step is None:
        raise CheckpointError(f"config.moe.upcycle_from = {workdir!r}: {ckpt_dir} holds no checkpoint.")
    restored = ocp.StandardCheckpointer().restore(ckpt_dir / str(step) / "state")
    return unstacked(restored["params"], scan_from=0)   # a dense run with model.scan_layers: every layer


def _expect(name, got, want):
    if tuple(got) != tuple(want):
        raise CheckpointError(f"upcycling: dense {name} has shape {tuple(got)}, the MoE config needs "
                              f"{tuple(want)}: the two runs must share every non-FFN shape.")


def upcycle_params(moe_params: dict, dense_params: dict, method: str) -> dict:
    """New MoE params (numpy) from freshly initialised `moe_params` and a dense model's params."""
    out = {}
    for name, value in moe_params.items():
        if not name.startswith("layer_"):
            if name not in dense_params:
                raise CheckpointError(f"upcycling: the dense checkpoint has no {name}")
            out[name] = _copy_checked(name, dense_params[name], value)
            continue
        dense_layer = dense_params.get(name)
        if dense_layer is None:
            raise CheckpointError(f"upcycling: the dense checkpoint has no {name}")
        layer = {}
        for part, sub in value.items():
            if part == "moe":
                layer[part] = _upcycle_ffn(sub, dense_layer["ffn"], method, name)
            else:
                layer[part] = _copy_checked(f"{name}/{part}", dense_layer[part], sub)
        out[name] = layer
    return out


def _upcycle_ffn(moe: dict, dense: dict, method: str, layer: str) -> dict:
    E, d, f = np.shape(moe["w_gate"])
    d_dense, F = np.shape(dense["w_gate"])
    if d_dense != d:
        raise CheckpointError(f"upcycling {layer}: dense width {d_dense} != MoE width {d}")
    if method == "copy":
        if F != f:
            raise CheckpointError(
                f"upcycling {layer} by copy needs config.moe.expert_mlp_dim = the dense FFN width {F}, "
                f"got {f}; use config.moe.upcycle_method = 'slice' for fine-grained experts.")
        starts = [0] * E
    else:
        if F % f:
            raise CheckpointError(f"upcycling {layer} by slice needs expert_mlp_dim {f} to divide the "
                                  f"dense FFN width {F}.")
        starts = [(e % (F // f)) * f for e in range(E)]
    new = dict(_to_numpy(moe))
    new["w_gate"] = np.stack([np.asarray(dense["w_gate"])[:, s:s + f] for s in starts])
    new["w_up"] = np.stack([np.asarray(dense["w_up"])[:, s:s + f] for s in starts])
    new["w_down"] = np.stack([np.asarray(dense["w_down"])[s:s + f, :] for s in starts])
    if "shared" in new:
        new["shared"] = dict(new["shared"], w_down=np.zeros_like(new["shared"]["w_down"]))
    if "shared_w_down" in new:
        new["shared_w_down"] = np.zeros_like(new["shared_w_down"])
    return new


def _copy_checked(name, dense, template):
    """`dense` as numpy, after checking it has `template`'s tree and shapes."""
    if isinstance(template, dict):
        if not isinstance(dense, dict) or set(dense) != set(template):
            raise CheckpointError(f"upcycling: dense {name} has entries "
                                  f"{sorted(dense) if isinstance(dense, dict) else type(dense)}, "
                                  f"the MoE config needs {sorted(template)}")
        return {k: _copy_checked(f"{name}/{k}", dense[k], template[k]) for k in template}
    _expect(name, np.shape(dense), np.shape(template))
    return np.asarray(dense)


def _to_numpy(tree):
    return {k: _to_numpy(v) if isinstance(v, dict) else np.asarray(v) for k, v in tree.items()}
