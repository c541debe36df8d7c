"""Data: tokenizers (tiktoken cl100k, per-run bpe:N), corpus sources, and the grain pipeline."""
