"""Tensors <-> safetensors files: `model.safetensors`, or above a size `model-0000i-of-0000K.safetensors`
shards plus `model.safetensors.index.json` ({metadata: {total_size}, weight_map: {name: file}}), as
Hugging Face writes them.

Writing streams one tensor at a time (converted to the export dtype on its own), so exporting needs
no memory beyond the parameters themselves and one tensor. Reading goes through the `safetensors`
package, an implementation independent of the writer.
"""
from __future__ import annotations

import json
import os
import struct
import sys

import ml_dtypes  # also registers NumPy's bfloat16, which safetensors needs to read BF16 tensors
import numpy as np
from safetensors import safe_open

from openmoe2_jax.export.layout import ExportError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
DTYPES = {"float32": ("F32", np.dtype(np.float32)), "bfloat16": ("BF16", np.dtype(ml_dtypes.bfloat16))}


def shard_name(i: int, count: int) -> str:
    """The i-th (0-based) of `count` shard files."""
    return f"model-{i + 1:05d}-of-{count:05d}.safetensors"


def plan_shards(sizes: dict[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Consecutive tensors (in the given order) packed greedily into shards of at most
    `max_shard_bytes` of data; a tensor larger than that gets a shard of its own."""
    shards, current, used = [], [], 0
    for name, size in sizes.items():
        if current and used + size > max_shard_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    return shards + ([current] if current else [])


def _write_file(path: str, tensors: dict[str, np.ndarray], dtype: str, metadata: dict[str, str]) -> None:
    """One safetensors file: u64 little-endian header size, JSON header (padded with spaces to a
    multiple of 8 bytes), then each tensor's little-endian bytes, row-major, in header order."""
    code, np_dtype = DTYPES[dtype]
    header, offset = {"__metadata__": metadata}, 0
    for name, array in tensors.items():
        size = int(np.prod(array.shape)) * np_dtype.itemsize
        header[name] = dict(dtype=code, shape=list(array.shape), data_offsets=[offset, offset + size])
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for array in tensors.values():
            np.ascontiguousarray(np.asarray(array).astype(np_dtype, copy=False)).tofile(f)


def write(directory: str, tensors: dict[str, np.ndarray], dtype: str, max_shard_bytes: int,
          metadata: dict[str, str] | None = None) -> list[str]:
    """Writes `tensors` ({name: array}, in file order) as `dtype` into `directory`; returns the files."""
    if sys.byteorder != "little":
        raise ExportError("exports are written on little-endian machines only")
    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    itemsize = DTYPES[dtype][1].itemsize
    sizes = {name: int(np.prod(a.shape)) * itemsize for name, a in tensors.items()}
    shards = plan_shards(sizes, max_shard_bytes)
    metadata = dict(metadata or {}, format="np")
    if len(shards) == 1:
        _write_file(os.path.join(directory, SINGLE), tensors, dtype, metadata)
        return [SINGLE]
    names = [shard_name(i, len(shards)) for i in range(len(shards))]
    for file, members in zip(names, shards):
        _write_file(os.path.join(directory, file), {n: tensors[n] for n in members}, dtype, metadata)
    index = dict(metadata=dict(total_size=sum(sizes.values())),
                 weight_map={n: file for file, members in zip(names, shards) for n in members})
    with open(os.path.join(directory, INDEX), "w") as f:
        json.dump(index, f, indent=2)
    return names + [INDEX]


def tensor_files(directory: str) -> dict[str, str]:
    """{tensor name: file} of an export, from the index (checked against the shards' headers) or the
    single file. Raises ExportError naming the file at fault."""
    single, index_path = os.path.join(directory, SINGLE), os.path.join(directory, INDEX)
    if not os.path.exists(index_path):
        if not os.path.exists(single):
            raise ExportError(f"{directory} has neither {SINGLE} nor {INDEX}: not an export directory.")
        with safe_open(single, framework="np") as f:
            return {name: SINGLE for name in f.keys()}
    try:
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{index_path} is not a safetensors index ({e!r})") from e
    for file in sorted(set(weight_map.values())):
        path = os.path.join(directory, file)
        if not os.path.exists(path):
            raise ExportError(f"{index_path} names {file}, which does not exist.")
        with safe_open(path, framework="np") as f:
            held = set(f.keys())
        listed = {n for n, shard in weight_map.items() if shard == file}
        if held != listed:
            diff = sorted(held ^ listed)
            raise ExportError(f"{path} holds other tensors than {INDEX} says (first: {diff[0]}).")
    return dict(weight_map)


def read(directory: str, dtype: str | None = None) -> dict[str, np.ndarray]:
    """{name: array} of an export, as stored (dtype None) or cast to `dtype`."""
    by_file: dict[str, list[str]] = {}
    for name, file in tensor_files(directory).items():
        by_file.setdefault(file, []).append(name)
    tensors = {}
    for file, names in by_file.items():
        with safe_open(os.path.join(directory, file), framework="np") as f:
            for name in names:
                array = f.get_tensor(name)
                tensors[name] = array if dtype is None else array.astype(DTYPES[dtype][1])
    return tensors
