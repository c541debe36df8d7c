"""Benchmark of the EC top-k implementations on the current backend (a benchmark, not a test).

  python -m openmoe2_jax.kernels.bench_ec_topk [--repeats=5] [--output=topk.json]

Shapes: the paper's batch-level EC (64 experts x 32,768 tokens = 8 sequences of 4096, C = 3072 for
k = 6) and two smaller ones. For each available impl (xla and interpret everywhere; pallas on TPU) it
prints the median time after warm-up and the bytes the selection must move at least (read the
[E, N] float32 scores once, write C values and indices per expert), with the bandwidth that implies.
On a CPU, `interpret` is the kernel's logic compiled by XLA, not the kernel: only a TPU shows the
kernel's own speed.
"""
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from openmoe2_jax.kernels import ec_topk

SHAPES = (("paper: 64 experts x 8x4096 tokens, k=6", 64, 32768, 3072),
          ("small: 16 experts x 4x1024 tokens, k=2", 16, 4096, 512),
          ("tiny: 16 experts x 8x128 tokens, k=2", 16, 1024, 128))


def impls_here():
    return ("xla", "pallas") if jax.default_backend() == "tpu" else ("xla", "interpret")


def time_impl(x, k, impl, repeats):
    f = jax.jit(functools.partial(ec_topk.top_k, k=k, impl=impl))
    t0 = time.perf_counter()
    jax.block_until_ready(f(x))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(x))
        times.append(time.perf_counter() - t0)
    return compile_s, float(np.median(times))


def run(shapes=SHAPES, repeats: int = 5, log=None) -> list[dict]:
    """One row per (shape, impl): median seconds, compile seconds, minimum bytes moved, GB/s."""
    rows = []
    for name, experts, tokens, k in shapes:
        x = jax.random.normal(jax.random.key(0), (experts, tokens), jnp.float32)
        moved = experts * tokens * 4 + experts * k * 8
        for impl in impls_here():
            compile_s, t = time_impl(x, k, impl, repeats)
            row = dict(shape=name, experts=experts, tokens=tokens, k=k, impl=impl, bytes=moved,
                       compile_seconds=compile_s, seconds=t, gb_per_s=moved / t / 1e9)
            rows.append(row)
            if log:
                log(f"{name:42} {impl:10} {moved / 1e6:9.2f} {compile_s:10.2f} {t * 1e3:10.2f} "
                    f"{moved / t / 1e9:8.2f}")
    return rows


def main(argv):
    del argv
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), {jax.device_count()} device(s)")
    print(f"{'shape':42} {'impl':10} {'MB moved':>9} {'compile s':>10} {'median ms':>10} {'GB/s':>8}")
    rows = run(repeats=_REPEATS.value, log=print)
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(dict(backend=jax.default_backend(), rows=rows), f, indent=2)


if __name__ == "__main__":
    from absl import app, flags
    _REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (median reported).")
    _OUTPUT = flags.DEFINE_string("output", "", "Optional JSON file for the rows.")
    from openmoe2_jax import cli  # pylint: disable=import-outside-toplevel
    app.run(main, flags_parser=cli.parse_flags)
