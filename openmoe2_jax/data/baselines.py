"""What general-purpose compressors reach on the validation text: a floor a language model should beat.

The bits/byte of `text` given `context` is 8 x (|C(context + text)| - |C(context)|) / |text|: the extra
compressed bytes that the validation text adds after the training text, per byte of it. C is one of

  xz -9e   lzma, preset 9 | PRESET_EXTREME (64 MiB dictionary): long-range matches over the context.
  bz2 -9   Burrows-Wheeler in 900 kB blocks: sees only the part of the context in the text's block.

Both use Python's standard library (no external tool). The context is capped at its last
`max_context_bytes` (xz's dictionary is 64 MiB; beyond a few MiB the cost grows, the gain does not).
xz -9e compresses about 0.4 MB/s on one core, so the caller decides when it is worth it
(`config.eval.compressors`).
"""
from __future__ import annotations

import bz2
import lzma
from typing import Callable, Sequence

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "xz": lambda data: lzma.compress(data, preset=9 | lzma.PRESET_EXTREME),
    "bz2": lambda data: bz2.compress(data, 9),
}
LABELS = {"xz": "xz -9e", "bz2": "bz2 -9"}


def bits_per_byte(context: bytes, text: bytes, compressor: str) -> float:
    """Extra compressed bits per byte of `text` after `context` under `compressor` (a COMPRESSORS key)."""
    if compressor not in COMPRESSORS:
        raise ValueError(f"compressor {compressor!r}: expected one of {sorted(COMPRESSORS)}")
    if not text:
        raise ValueError("the text to compress is empty")
    compress = COMPRESSORS[compressor]
    return 8 * (len(compress(context + text)) - len(compress(context))) / len(text)


def baselines(context: bytes, text: bytes, compressors: Sequence[str] = ("xz", "bz2"),
              max_context_bytes: int = 8 << 20) -> dict[str, float]:
    """{compressor: bits/byte of text given the last max_context_bytes of context}."""
    context = context[-max_context_bytes:] if max_context_bytes else b""
    return {name: bits_per_byte(context, text, name) for name in compressors}
