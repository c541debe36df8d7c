"""Generation: masked-diffusion sampling (LLaDA-style) and AR sampling for the baselines.

Diffusion. The canvas is the prompt followed by `length` mask tokens, split into blocks of
`block_length` (block = whole canvas is pure diffusion) filled left to right. Each block gets
steps / num_blocks steps; at each step the model predicts every position, a token x0 is drawn per
masked position (argmax at temperature 0, else Gumbel-max with the noise in float64 on the host, as
low-precision Gumbel noise degrades samples), and the n most confident masked positions of the current
block are fixed, with n spread evenly over the block's steps. Confidence is the model's probability of
x0 (low-confidence remasking) or uniform noise (random remasking). More steps = more compute for the
same parameters ("diffusion steps scaling"); steps = length fixes one token per forward pass. The text
is cut at the first EOT.

AR. Greedy or temperature sampling, one token per forward pass over the fixed-size canvas (no KV cache:
simple and exact, O(length^2) compute).
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class Sample:
    tokens: list[int]            # generated ids, cut at the first EOT
    text: str
    forward_passes: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / max(self.seconds, 1e-9)


def _num_transfer(masked_in_block: int, steps: int) -> list[int]:
    """How many tokens to fix at each of `steps` steps: as even as possible, summing to the count."""
    base, extra = divmod(masked_in_block, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _draw(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """x0 per row of logits [n, V] (float64 Gumbel-max when temperature > 0)."""
    if temperature <= 0:
        return logits.argmax(-1)
    u = rng.random(logits.shape)  # float64
    gumbel = -np.log(-np.log(np.clip(u, 1e-300, 1.0)))
    return (logits.astype(np.float64) / temperature + gumbel).argmax(-1)


def diffusion_generate(forward, prompt: list[int], length: int, steps: int, block_length: int,
                       mask_id: int, num_ids: int, eot_id: int, temperature: float = 0.0,
                       remasking: str = "low_confidence", seed: int = 0, decode=None,
                       progress=None) -> Sample:
    """forward: tokens [1, L] int -> logits [1, L, V] (jitted by the caller).
    progress(passes done, passes in all): called after each forward pass."""
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"remasking = {remasking!r}: expected low_confidence or random")
    if length % block_length:
        raise ValueError(f"length {length} must be a multiple of block_length {block_length}")
    num_blocks = length // block_length
    if steps % num_blocks or steps < num_blocks:
        raise ValueError(f"steps {steps} must be a positive multiple of the {num_blocks} blocks")
    rng = np.random.default_rng(seed)
    canvas = np.asarray(list(prompt) + [mask_id] * length, np.int32)[None]
    start, passes, t0 = len(prompt), 0, time.time()
    for block in range(num_blocks):
        lo, hi = start + block * block_length, start + (block + 1) * block_length
        for n in _num_transfer(block_length, steps // num_blocks):
            logits = np.array(forward(jnp.asarray(canvas)), np.float32)[0]  # [L, V], writable
            passes += 1
            if progress:
                progress(passes, steps)
            logits[:, num_ids:] = -np.inf                                # never the mask id or padding
            masked = np.where(canvas[0, lo:hi] == mask_id)[0] + lo
            if n == 0 or len(masked) == 0:
                continue
            x0 = _draw(logits[masked], temperature, rng)
            if remasking == "low_confidence":
                z = logits[masked] - logits[masked].max(-1, keepdims=True)
                p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
                confidence = p[np.arange(len(masked)), x0]
            else:
                confidence = rng.random(len(masked))
            chosen = np.argsort(-confidence, kind="stable")[:n]
            canvas[0, masked[chosen]] = x0[chosen]
    return _finish(canvas[0, start:], eot_id, passes, time.time() - t0, decode)


def ar_generate(forward, prompt: list[int], length: int, eot_id: int, num_ids: int,
                temperature: float = 0.0, seed: int = 0, decode=None, progress=None) -> Sample:
    """forward: tokens [1, L] int -> logits [1, L, V] of a causal model.
    progress(passes done, at most `length` passes): called after each forward pass."""
    if not prompt:
        prompt = [eot_id]  # AR needs a first token to condition on: EOT separates documents
    rng = np.random.default_rng(seed)
    canvas = np.asarray(list(prompt) + [eot_id] * length, np.int32)[None]
    start, passes, t0 = len(prompt), 0, time.time()
    for pos in range(start, start + length):
        logits = np.array(forward(jnp.asarray(canvas)), np.float32)[0, pos - 1]  # later slots unseen
        passes += 1
        if progress:
            progress(passes, length)
        logits[num_ids:] = -np.inf
        canvas[0, pos] = _draw(logits[None], temperature, rng)[0]
        if canvas[0, pos] == eot_id:
            break
    return _finish(canvas[0, start:], eot_id, passes, time.time() - t0, decode)


def _finish(generated: np.ndarray, eot_id: int, passes: int, seconds: float, decode) -> Sample:
    ids = [int(i) for i in generated]
    if eot_id in ids:
        ids = ids[:ids.index(eot_id)]
    return Sample(tokens=ids, text=decode(ids) if decode else "", forward_passes=passes, seconds=seconds)


def make_forward(model, params):
    """A jitted tokens -> logits function of a trained model."""
    apply = jax.jit(lambda p, t: model.apply({"params": p}, t))
    return lambda tokens: apply(params, tokens)
