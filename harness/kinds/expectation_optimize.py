"""``mode: optimize`` for the expectation kind: minimise E_q[f(x)] over the family's parameters
by stochastic gradient descent, with one estimator's gradient, and record the trajectory.

This is the experiment of Grathwohl et al. 2018 (RELAX), Figure 1: on the REBAR/RELAX toy
f(b) = (b - t)^2, b ~ Bernoulli(sigmoid(logit)), how does the logit move under REINFORCE,
REBAR, ARM, a relaxation, ...  Any family, cost and estimator of the kind works the same way.

Per seed s and step i = 0 .. steps - 1 (theta_0 = the grid's point):

    g_i = the estimator's ``samples``-sample estimate of d/dtheta E_q[f] at theta_i
          (``harness.backends.cpu.estimate``, the kernels of ``mode: estimate``),
          on the Philox key ``step_key(s, i)``;
    theta_{i+1} = theta_i - lr_i g_i  (sgd), or the Adam update with the same g_i;
          lr_i = lr (constant) or lr (1 + cos(pi i / steps)) / 2 (cosine);
          a parameter that must be positive is kept >= POSITIVE_FLOOR.

Only the components in ``wrt`` move; the others and the cost's k stay at the point's values.

Random numbers: step i of seed s draws from the key ``s + (i + 1) * 2^32`` (seeds are below
2^32, so key1 = i + 1 >= 1): never the stream of a ``mode: estimate`` cell (key1 = 0), and
never the stream of another step or seed.  Reruns are bitwise identical (the update is plain
float64 arithmetic in a fixed order).

Records (steps 0, record_every, 2 record_every, ..., and the end): theta; the exact objective
E_q[f] at theta (``harness.exact.objective``: quadrature of the cost over the family's rule,
not the kernel); the exact gradient and the estimator's exact per-sample variance at theta
(``harness.exact.references``); and the step's gradient estimate (NaN at the end, where no
step follows).
"""

from __future__ import annotations

import math

import numpy as np

from .. import exact, registry
from ..backends import cpu
from ..errors import HarnessError

POSITIVE_FLOOR = 1e-6      # a positive parameter (a scale, a rate) never goes below this
STEP_KEY_SHIFT = 32        # step i of seed s: key s + (i + 1) << 32


def step_key(seed: int, step: int) -> np.uint64:
    """The Philox key (as the kernels' uint64 seed) of step ``step`` of seed ``seed``."""
    return np.uint64(int(seed) + ((int(step) + 1) << STEP_KEY_SHIFT))


def record_steps(steps: int, record_every: int) -> list[int]:
    """0, record_every, 2 record_every, ... (< steps), and steps."""
    return list(range(0, steps, record_every)) + [steps]


def learning_rate(opt, step: int) -> float:
    if opt.schedule == "cosine":
        return opt.lr * 0.5 * (1.0 + math.cos(math.pi * step / opt.steps))
    return opt.lr


def optimize(family: str, cost, estimator, wrt: tuple[str, ...], params: dict, opt,
             seeds) -> dict:
    """Run the optimisation of every seed; return the records as arrays:
    ``theta`` [S, R, C], ``estimate`` [S, R, C] (the gradient estimate of the step that starts
    at the record; NaN at the last record) and ``steps`` [R] (C = len(wrt))."""
    fam = registry.get_family(family)
    floors = [POSITIVE_FLOOR if comp in fam.positive else -math.inf for comp in wrt]
    records = record_steps(opt.steps, opt.record_every)
    theta = np.full((len(seeds), len(records), len(wrt)), np.nan)
    estimate = np.full_like(theta, np.nan)
    for si, seed in enumerate(seeds):
        if not 0 <= int(seed) < 1 << STEP_KEY_SHIFT:
            raise HarnessError(f"seed {seed} is out of range for mode: optimize (0 <= seed "
                               f"< 2^{STEP_KEY_SHIFT})")
        p = dict(params)
        x = np.array([p[c] for c in wrt], np.float64)
        m = np.zeros_like(x)          # Adam's moment estimates
        v = np.zeros_like(x)
        r = 0
        for i in range(opt.steps + 1):
            if i == records[r]:
                theta[si, r] = x
            if i == opt.steps:
                break
            p.update(zip(wrt, x.tolist()))
            with np.errstate(over="ignore", invalid="ignore"):  # a diverging run: below
                est, _ = cpu.estimate(family, cost, [estimator], wrt, p, opt.samples,
                                      np.array([step_key(seed, i)], np.uint64))
            g = est[0, 0]
            if not np.all(np.isfinite(g)):
                where = ", ".join(f"{c}={x[j]:g}" for j, c in enumerate(wrt))
                raise HarnessError(f"{registry.resolve(estimator).name}: a non-finite gradient "
                                   f"estimate at step {i} of seed {seed} ({where})")
            if i == records[r]:
                estimate[si, r] = g
                r += 1
            lr = learning_rate(opt, i)
            if opt.name == "adam":
                m = 0.9 * m + 0.1 * g
                v = 0.999 * v + 0.001 * g * g
                m_hat = m / (1.0 - 0.9 ** (i + 1))
                v_hat = v / (1.0 - 0.999 ** (i + 1))
                x = x - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
            else:
                x = x - lr * g
            x = np.maximum(x, floors)
    return {"theta": theta, "estimate": estimate, "steps": np.asarray(records, np.int64)}


def trace_references(family: str, cost, estimator, wrt, params: dict, theta: np.ndarray
                     ) -> dict:
    """Exact quantities at every recorded theta [S, R, C]: ``objective`` [S, R] = E_q[f],
    ``grad`` and ``var`` [S, R, C] (the exact gradient and the estimator's exact per-sample
    variance, NaN where it has none), ``source`` (the references' source, one per component)
    and ``estimator_mean`` [S, R, C] (the estimator's own exact expectation)."""
    fam, c = registry.get_family(family), registry.get_cost(cost)
    n_seeds, n_records, _ = theta.shape
    objective = np.empty((n_seeds, n_records))
    grad, var, own = (np.empty(theta.shape) for _ in range(3))
    source = ["none"] * len(wrt)
    for s in range(n_seeds):
        for r in range(n_records):
            p = {**params, **dict(zip(wrt, theta[s, r].tolist()))}
            objective[s, r] = exact.objective(fam, c, p)
            for j, comp in enumerate(wrt):
                ref = exact.references(estimator, comp, family, cost, p)
                grad[s, r, j], var[s, r, j], own[s, r, j] = ref.grad, ref.var, ref.estimator_mean
                source[j] = ref.source
    return {"objective": objective, "grad": grad, "var": var, "source": source,
            "estimator_mean": own}
