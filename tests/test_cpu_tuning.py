"""harness.cpu_tuning: 512-bit vectors on AVX-512 hosts, opt-out, and the same numbers."""

import json
import os
import subprocess
import sys

import llvmlite.binding as ll
import numpy as np
import pytest

HAS_AVX512 = "+avx512f" in ll.get_host_cpu_features().flatten().split(",")

# prints (what prefer_wide_vectors did, the widest <N x double> of a simple jitted loop)
PROBE = """
import json, re, sys
{before}
import harness
from harness import cpu_tuning
from numba import njit

@njit(error_model="numpy", fastmath={{"contract"}})
def axpy(a, x, y):
    for i in range(x.size):
        y[i] += a * x[i]

import numpy as np
x = np.ones(64)
axpy(2.0, x, x.copy())
ir = axpy.inspect_llvm(axpy.signatures[0])
print(json.dumps([cpu_tuning.prefer_wide_vectors(),
                  max([1] + [int(w) for w in re.findall(r"<(\\d+) x double>", ir)])]))
"""


def _probe(before: str = "", **env) -> list:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("NUMBA_CPU_FEATURES", "HARNESS_VECTOR_WIDTH")}
    environment.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], env=environment,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_too_late_once_numba_has_jitted_and_the_users_features_win():
    # the user's numba target was set up before harness was imported: nothing changes
    what, _ = _probe(before="from numba import njit\nnjit(lambda: 1)()")
    assert what == ("too-late" if HAS_AVX512 else "no-avx512")
    what, _ = _probe(NUMBA_CPU_FEATURES=ll.get_host_cpu_features().flatten())
    assert what == "user-features"


# what prefer_wide_vectors did, the widest vector of a jitted loop, and one cell's numbers
CELL = PROBE.replace("print(json.dumps(", """
from harness.backends import cpu
est, var = cpu.estimate("normal", "cos", ["score_function[baseline=optimal]",
                                          "measure_valued[coupling=false]"], ["mu"],
                        {{"mu": 0.3, "sigma": 1.2, "k": 1.5}}, 5001, np.arange(3))
np.save(sys.argv[1], np.stack([est, var]))
print(json.dumps(""")


@pytest.mark.skipif(not HAS_AVX512, reason="the host has no AVX-512F")
def test_avx512_hosts_get_512_bit_vectors_the_same_numbers_and_can_opt_out(tmp_path):
    # a copy-stream baseline, shared extra draws and a branch-free cos: the numbers of 512-bit
    # and native (256-bit) kernels must be bitwise equal (fixed lane order, "contract" only)
    results, probes = [], []
    for width in ("wide", "native"):
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_CPU_FEATURES"}
        env.update(HARNESS_VECTOR_WIDTH=width, HARNESS_COMPILE_WORKERS="1",
                   HARNESS_KERNEL_DIR=str(tmp_path / width / "kernels"),
                   NUMBA_CACHE_DIR=str(tmp_path / width / "numba"))
        out = tmp_path / f"{width}.npy"
        stdout = subprocess.run([sys.executable, "-c", CELL.format(before=""), str(out)],
                                env=env, check=True, capture_output=True, text=True).stdout
        probes.append(json.loads(stdout.strip().splitlines()[-1]))
        results.append(np.load(out))
    assert probes[0] == ["wide", 8]
    # numba's own choice on this host; on Intel cores LLVM prefers 256-bit vectors
    assert probes[1][0] == "native" and probes[1][1] in (4, 8)
    assert np.isfinite(results[0]).all()
    assert np.array_equal(results[0], results[1])
