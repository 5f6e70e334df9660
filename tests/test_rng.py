"""Philox4x32-10 and the normal transform: known answers, distribution, reproducibility.

Statistical checks are judged in standard-error units with Z = 5 (a correct generator fails
one such check with probability ~6e-7), and each check is shown to reject a deliberately
wrong generator of the same size.
"""

import math

import numpy as np
import pytest
from scipy import special, stats

from harness.rng import INDEPENDENT_STREAM_OFFSET, normals, philox4x32_10, uniform_pair

Z = 5.0
N_DRAWS = 2_000_000

# Random123 known-answer vectors for philox4x32_10 (kat_vectors): counter, key -> output.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    out = philox4x32_10(*[np.uint64(c) for c in counter], *[np.uint64(k) for k in key])
    assert [int(x) for x in out] == list(expected)


def test_uniforms_strictly_inside_unit_interval():
    lo, hi = 1.0, 0.0
    for i in range(2000):
        u0, u1 = uniform_pair(np.uint64(7), np.uint64(0), np.uint64(i), np.uint64(0))
        lo, hi = min(lo, u0, u1), max(hi, u0, u1)
    assert 0.0 < lo < 1e-2 and 1 - 1e-2 < hi < 1.0


def moment_z_scores(x: np.ndarray) -> dict[str, float]:
    """z-scores of the first four moments and of tail frequencies against N(0, 1)."""
    n = x.size
    z = {
        "mean": x.mean() / math.sqrt(1.0 / n),
        "variance": (x.var() - 1.0) / math.sqrt(2.0 / n),
        "skewness": stats.skew(x) / math.sqrt(6.0 / n),
        "excess kurtosis": stats.kurtosis(x) / math.sqrt(24.0 / n),
    }
    for t in (1.0, 2.0, 3.0, 4.0):
        p = special.erfc(t / math.sqrt(2.0))
        z[f"P(|x|>{t:g})"] = (np.mean(np.abs(x) > t) - p) / math.sqrt(p * (1 - p) / n)
    return z


def ks_exceeds(x: np.ndarray, p_value: float = 1e-6) -> bool:
    """KS statistic beyond the Kolmogorov quantile of the given tail probability."""
    d = stats.kstest(x, "norm").statistic
    return math.sqrt(x.size) * d > stats.kstwobign.isf(p_value)


@pytest.fixture(scope="module")
def draws():
    return np.concatenate([normals(seed, N_DRAWS // 2) for seed in (0, 12345)])


def test_normal_moments_and_tails(draws):
    z = moment_z_scores(draws)
    assert max(abs(v) for v in z.values()) < Z, z
    assert not ks_exceeds(draws)


@pytest.mark.parametrize("name,wrong", [
    ("scale 1.006", lambda x: 1.006 * x),
    ("shift 0.005", lambda x: x + 0.005),
    ("tails clipped at 3.7", lambda x: np.clip(x, -3.7, 3.7)),
    ("skewed", lambda x: x + 0.01 * (x * x - 1.0)),
])
def test_same_checks_reject_a_wrong_generator(draws, name, wrong):
    z = moment_z_scores(wrong(draws))
    assert max(abs(v) for v in z.values()) > Z or ks_exceeds(wrong(draws)), (name, z)


def test_streams_and_seeds_are_uncorrelated():
    n = 400_000
    a, b, c = normals(1, n), normals(2, n), normals(1, n, stream=1)
    copy = normals(1, n, stream=INDEPENDENT_STREAM_OFFSET)  # the independent copy of stream 0
    for x, y in ((a, b), (a, c), (a[:-1], a[1:]), (a, copy)):
        assert abs(np.corrcoef(x, y)[0, 1]) * math.sqrt(n) < Z
    # copies of every main stream (ids < 2**31) fit the 32-bit counter word, above them
    assert INDEPENDENT_STREAM_OFFSET >= 2**31 and INDEPENDENT_STREAM_OFFSET + 2**31 - 1 < 2**32


def test_nested_draws_are_prefixes():
    long = normals(42, 100_001)
    assert np.array_equal(long[:1000], normals(42, 1000))
    assert np.array_equal(long[999:1003], normals(42, 4, start=999))


def test_large_seeds_use_both_key_words():
    assert not np.array_equal(normals(1, 8), normals(1 + 2**32, 8))
    assert np.isfinite(normals(2**64 - 1, 8)).all()
