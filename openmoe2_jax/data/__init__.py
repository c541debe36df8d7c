"""Data: tokenizer (tiktoken cl100k), corpus sources, and the grain pipeline."""
