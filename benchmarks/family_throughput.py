"""Throughput of the CPU kernels per family and estimator variant (issue 11's table).

    python benchmarks/family_throughput.py [--families normal bernoulli ...] [--cost quadratic]
                                           [--samples 1e7] [--seeds 8] [--repeats 3]

For every registered family (or those named; sized families at K = 3, ``categorical[K=3]``)
and every estimator variant the registry lets run on it with the cost (default ``quadratic``,
f = (x - k)^2, k = 0.5): the variant alone, every gradient component it is defined for (the
``comps`` column: measure_valued under gamma runs wrt rate only), ``--seeds`` seeds x
``--samples`` samples, warm (compiled or loaded first, then the best of ``--repeats``), all of
numba's threads.  Prints M samples/s and the ratio to the family's cheapest reference
estimator (pathwise where the family is reparameterisable, else the plain score function):
how much each estimator costs over drawing the samples and evaluating f once.  Parameters:
``PARAMS`` below, else 1.0.

Nothing is asserted (speed stays out of the tests); the machine's load is printed at the
start and the end, since other jobs on a shared machine move the absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

# a point inside every family's parameter space (parameters not listed: 1.0)
PARAMS = {"mu": 1.0, "sigma": 1.0, "logit": 0.4, "rate": 1.3, "k": 0.5, "shape": 2.5,
          "a": 2.0, "b": 3.0, "logits[0]": 0.2, "logits[1]": -0.5, "logits[2]": 1.0}


def load() -> str:
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.exists() else "?"


def best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def family_rates(family: str, cost: str, n: int, seeds: int, repeats: int) -> dict:
    """{label: (M samples/s, number of components)} of every variant that runs on (family,
    cost)."""
    from harness import registry
    from harness.backends import cpu

    fam, c = registry.get_family(family), registry.get_cost(cost)
    params = {p: PARAMS.get(p, 1.0) for p in fam.params + c.params}
    labels = [label for name in registry.ESTIMATORS for label in registry.variants(name)
              if registry.combination_problem(label, family, cost) is None]
    rates = {}
    for label in labels:
        components = list(registry.supported_components(label, family, fam.params))

        def run(label=label, n=n, components=components):
            cpu.estimate(family, cost, [label], components, params, n, np.arange(seeds))

        run(n=1000)  # compile or load
        rates[label] = (n * seeds / best_seconds(run, repeats) / 1e6, len(components))
    return rates


def main(argv=None):
    from harness import registry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=sorted(registry.FAMILIES) + [
        factory.name(3) for factory in registry.FAMILY_FACTORIES.values()])
    parser.add_argument("--cost", default="quadratic")
    parser.add_argument("--samples", type=float, default=1e7)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import numba

    print(f"{os.cpu_count()} cores, {numba.get_num_threads()} numba threads, load average "
          f"{load()}; {args.seeds} seeds x {args.samples:.0e} samples, cost {args.cost}, "
          f"every component, warm, best of {args.repeats}", flush=True)
    print(f"{'family':17} {'estimator':44} {'comps':>5} {'M samples/s':>12} "
          f"{'reference / it':>15}")
    for family in args.families:
        rates = family_rates(family, args.cost, int(args.samples), args.seeds, args.repeats)
        reference = "pathwise" if "pathwise" in rates else "score_function"
        for label, (rate, components) in rates.items():
            print(f"{family:17} {label:44} {components:5} {rate:12.1f} "
                  f"{rates[reference][0] / rate:15.2f}"
                  + ("  (reference)" if label == reference else ""), flush=True)
    print(f"load average at the end {load()}")


if __name__ == "__main__":
    main()
