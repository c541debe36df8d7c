"""Workdir paths, local or on a bucket (gs://...), as `etils.epath.Path`.

`epath.Path` reads and writes both (gs:// through fsspec + gcsfs: the `gcs` install extra);
`os.path` does not: `os.path.abspath("gs://b/x")` is `<cwd>/gs:/b/x`.
"""
from __future__ import annotations

import os

from etils import epath


def is_url(path: epath.PathLike) -> bool:
    """Whether `path` names a location by URL (gs://bucket/..., s3://...) rather than a local file."""
    return "://" in os.fspath(path)


def absolute(path: epath.PathLike) -> epath.Path:
    """`path` as an epath.Path: a URL as given, a local path made absolute (orbax wants absolute)."""
    return epath.Path(path) if is_url(path) else epath.Path(os.path.abspath(path))


def save_png(fig, path: epath.Path, dpi: int = 100) -> epath.Path:
    """Writes the matplotlib figure `fig` as a PNG to `path`, local or gs:// (savefig writes into the
    file epath opens); returns `path`."""
    with path.open("wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    return path
