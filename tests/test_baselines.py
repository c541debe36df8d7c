"""Compressor baselines: the extra bits a text costs after a context, against independent tools."""
import random
import shutil
import subprocess

import pytest

from openmoe2_jax.data import baselines


def _text(n_words, seed):
    rng = random.Random(seed)
    words = ["and", "the", "lord", "said", "unto", "moses", "of", "israel", "in", "that", "day", "he"]
    return " ".join(rng.choice(words) for _ in range(n_words)).encode()


def test_a_repeat_of_the_context_costs_almost_nothing_and_noise_costs_eight_bits():
    context = _text(20_000, 0)
    assert baselines.bits_per_byte(context, context[-5000:], "xz") < 0.1   # one long match
    noise = random.Random(1).randbytes(20_000)
    for name in ("xz", "bz2"):
        assert 7.9 < baselines.bits_per_byte(context, noise, name) < 8.5


def test_context_helps_and_is_capped():
    text = _text(2000, 3)
    with_context = baselines.baselines(_text(20_000, 2), text)
    without = baselines.baselines(b"", text)
    assert with_context["xz"] < without["xz"] and with_context["bz2"] < without["bz2"]
    assert baselines.baselines(_text(20_000, 2), text, max_context_bytes=0) == without


@pytest.mark.skipif(shutil.which("bzip2") is None, reason="no bzip2 program to compare with")
def test_bz2_sizes_equal_the_bzip2_program(tmp_path):
    context, text = _text(5000, 4), _text(1000, 5)
    sizes = []
    for data in (context, context + text):
        path = tmp_path / "x"
        path.write_bytes(data)
        sizes.append(len(subprocess.run(["bzip2", "-9", "-c", str(path)], capture_output=True, check=True).stdout))
    assert baselines.bits_per_byte(context, text, "bz2") == 8 * (sizes[1] - sizes[0]) / len(text)


def test_bad_compressor_or_empty_text_is_refused():
    with pytest.raises(ValueError, match="compressor 'gzip'"):
        baselines.bits_per_byte(b"a", b"b", "gzip")
    with pytest.raises(ValueError, match="empty"):
        baselines.bits_per_byte(b"a", b"", "xz")
