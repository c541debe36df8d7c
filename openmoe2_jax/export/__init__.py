"""Checkpoints that leave JAX: a run's parameters as safetensors + config.json + tokenizer, read back
into our tree, and a NumPy reference forward pass written from the exported files alone.

    python -m openmoe2_jax.export --workdir=RUN --out=DIR [--step=N] [--dtype=bfloat16]

writer.export_workdir / write_export write an export, reader.load_export reads one back into our
parameter tree, reference.forward computes logits from the files. The format (tensor names, layouts,
config.json) is documented in docs/export.md. Only eval/harness.py (the lm_eval model) imports this package.
"""
from openmoe2_jax.export.layout import ExportError, model_config
from openmoe2_jax.export.reader import load_export
from openmoe2_jax.export.writer import export_workdir, write_export

__all__ = ["ExportError", "export_workdir", "load_export", "model_config", "write_export"]
