"""Read an export back into our parameter tree: the inverse of writer.write_export."""
from __future__ import annotations

import json
import os

from openmoe2_jax.export import files, layout, writer
from openmoe2_jax.export.layout import ExportError
from openmoe2_jax.models.transformer import ModelConfig
from openmoe2_jax.runtime import restore


def read_config(directory: str) -> dict:
    """An export's config.json, checked to be one (format and version)."""
    path = os.path.join(directory, writer.CONFIG)
    if not os.path.exists(path):
        raise ExportError(f"{directory} has no {writer.CONFIG}: not an export directory.")
    try:
        with open(path) as f:
            config = json.load(f)
    except ValueError as e:
        raise ExportError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(config, dict) or config.get("format") != layout.FORMAT:
        raise ExportError(f"{path} is not an {layout.FORMAT} config (its `format` should say so).")
    if config.get("format_version") != layout.FORMAT_VERSION:
        raise ExportError(f"{path} has format_version {config.get('format_version')!r}; this version "
                          f"reads {layout.FORMAT_VERSION}.")
    return config


def load_export(directory: str, dtype: str | None = None,
                expect: ModelConfig | None = None) -> tuple[dict, dict]:
    """(config.json's content, our nested params as NumPy arrays) of an export.

    dtype: None keeps the stored dtype; `float32` casts (exactly: an export of float32 parameters
    loads back bit-identical). The tensors must be exactly those the config describes (names and
    shapes), and those of `expect` (a ModelConfig) when given; otherwise ExportError names them.
    """
    config = read_config(directory)
    if dtype is not None and dtype not in files.DTYPES:
        raise ExportError(f"dtype {dtype!r}: expected one of {', '.join(files.DTYPES)}")
    try:
        described = layout.model_config(config)
    except (KeyError, TypeError) as e:
        raise ExportError(f"{os.path.join(directory, writer.CONFIG)} lacks or misstates a field: "
                          f"{e!r}") from e
    tensors = files.read(directory, dtype)
    found = {n: tuple(a.shape) for n, a in tensors.items()}
    where = f"the tensors of {directory}"
    for model_cfg, what in ((described, "its config.json"), (expect, "the model expected")):
        if model_cfg is not None:
            abstract = layout.flatten(restore.abstract_params(model_cfg))
            shapes = {n: tuple(a.shape) for n, a in abstract.items()}
            try:
                layout.check_tensors(found, shapes, where)
            except ExportError as e:
                raise ExportError(f"{e} (compared with {what})") from None
    return config, layout.unflatten(tensors)
