"""numba kernels for ELBO gradients of location-scale q (module-level, cached, deterministic).

Unlike the 1-D Gaussian-cost kernels (``harness.backends.cpu``), which are generated per
(cost, estimators) combination, the ELBO kernels are *module-level* functions that dispatch
on small integer codes (target, family, estimator) at run time.  The per-sample work is
O(d^2) vector/matrix arithmetic, so a well-predicted branch per sample costs nothing, and a
module-level kernel is exactly what numba's on-disk cache handles correctly (no factories, no
closures over other jitted functions: DESIGN.md, "Pitfalls").  A new target, family or
estimator is one branch here plus one registry entry (``harness.vi.targets``,
``harness.vi.families``, ``harness.vi.estimators``).

Random-number plan (Philox streams of ``harness.rng``; key = the seed):

- eps, the d-dimensional base draw of sample i, is the flat stream of normals:
  eps[i, j] = normal number ``i * d + j`` of stream ``s``, i.e.
  ``normal_pair(k0, k1, (i*d + j) // 2, s)[(i*d + j) % 2]``.  For d = 1 this is exactly the
  scalar convention of the Gaussian-cost kernels.  Nested in N (sample i never depends on N)
  and common to every estimator of a call (paired comparisons).
- minibatch indices of sample i (logistic regression with batch B): uniform number
  ``i * 2*ceil(B/2) + b`` of stream ``s + 1``, index = floor(u * n_data) (with replacement).
- variance-study cells use s = 0.  Optimisation (``opt_kernel``): the M samples of step t
  are samples ``t * M + i`` of stream 0; the fresh samples used to record the gradient
  variance and the ELBO at record r are samples 0.. of stream ``2 + 2 r``.
- ``score_function[baseline=optimal]`` estimates its baselines from an *independent* set of
  draws: those of main stream s (eps and minibatch indices, by the rules above) are taken
  from stream ``s + STREAM_BASELINE`` (and ``s + STREAM_BASELINE + 1``), STREAM_BASELINE =
  2**31.  Main streams are < 2**31 (records r < 10**9 use at most 2 + 2 r + 1 < 2**31), so
  the baseline streams [2**31, 2**32) collide with none of them and fit the 32-bit Philox
  counter word.  Variance cell: stream 2**31; step t of ``opt_kernel``: samples t*M + i of
  stream 2**31; record r: stream 2**31 + 2 + 2 r.

Work decomposition: ``grad_kernel`` runs ``prange`` over (seed, chunk) with a chunk size
that depends on N only; each chunk accumulates shifted sums sequentially and chunks are
merged in chunk order (``harness.backends.cpu.merge_chunks``), so results are bitwise
identical for any thread count.  ``opt_kernel`` runs ``prange`` over seeds; each seed's
trajectory is sequential.  Memory never depends on N.

Parameter vector layout (``theta``, also the order of gradient components):
  diag: mu[0..d-1], log_sigma[0..d-1];  full: mu[0..d-1], then L[i, j] for i = 0..d-1,
  j = 0..i (row-major lower triangle) at offset d + i (i + 1) / 2 + j.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from numba import njit, prange

from ..kernel_cache import ensure_numba_cache
from ..rng import normal_pair, uniform_pair

# numba picks where to cache each function below when it is defined: a writable place first.
ensure_numba_cache(Path(__file__).parent)

# target codes
T_GAUSSIAN = 0
T_LOGISTIC = 1
T_RIPPLE = 2
T_BANANA = 3
# family codes
F_DIAG = 0
F_FULL = 1
# estimator codes
E_REPARAM = 0
E_REPARAM_SAMPLED_ENTROPY = 1
E_STL = 2
E_SCORE = 3
E_SCORE_LOO = 4
E_WRONG_NO_ENTROPY = 5   # deliberately wrong (entropy gradient dropped): tests only
E_SCORE_OPT = 6          # baseline: optimal (per-component b^_j from the baseline stream)
E_SCORE_EXACT_OPT = 7    # baseline: exact_optimal (per-component exact b*_j)
E_BSTAR_NUM = 8          # internal: f s_j^2 (numerator of b*_j = E[f s_j^2] / E[s_j^2])
E_BSTAR_DEN = 9          # internal: s_j^2 (denominator)

STREAM_BASELINE = 2 ** 31

LOG_2PI = math.log(2.0 * math.pi)

# numba's on-disk cache of these kernels is invalidated only when *this* file changes, not
# when the inlined random-number code does (DESIGN.md, "Pitfalls").  So this file records a
# digest of harness/rng.py and harness/scalar_math.py; tests/test_vi.py fails when they
# change until the digest here is updated, and that edit invalidates the stale cache.
DEPENDENCY_DIGEST = "06fe066f7ba70d14"


def n_params(family: int, d: int) -> int:
    return 2 * d if family == F_DIAG else d + d * (d + 1) // 2


# ----------------------------------------------------------------------------- targets

@njit(cache=True)
def _softplus(x):
    if x > 0.0:
        return x + math.log1p(math.exp(-x))
    return math.log1p(math.exp(x))


@njit(cache=True)
def _sigmoid(x):
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@njit(cache=True)
def target_eval(tid, ta, tm, ti, z, idx, G):
    """log g(z); writes grad_z log g(z) into G.  ``idx`` holds minibatch indices (used when
    ti[0] > 0 for logistic regression)."""
    d = z.size
    if tid == T_GAUSSIAN:
        # ta = [m (d), log normaliser], tm = precision P = S^-1
        q = 0.0
        for i in range(d):
            acc = 0.0
            for k in range(d):
                acc += tm[i, k] * (z[k] - ta[k])
            G[i] = -acc
            q += (z[i] - ta[i]) * acc
        return ta[d] - 0.5 * q
    elif tid == T_LOGISTIC:
        # tm = X (n x D), ta = y (n,) in {0, 1}; prior N(0, I)
        n = tm.shape[0]
        logp = -0.5 * d * LOG_2PI
        for i in range(d):
            G[i] = -z[i]
            logp -= 0.5 * z[i] * z[i]
        batch = ti[0]
        m = batch if batch > 0 else n
        scale = n / m
        ll = 0.0
        for b in range(m):
            r = idx[b] if batch > 0 else b
            eta = 0.0
            for i in range(d):
                eta += tm[r, i] * z[i]
            ll += ta[r] * eta - _softplus(eta)
            w = scale * (ta[r] - _sigmoid(eta))
            for i in range(d):
                G[i] += w * tm[r, i]
        return logp + scale * ll
    elif tid == T_RIPPLE:
        # log g = log N(z; 0, I) + a sum_i cos(omega z_i); ta = [a, omega]
        a, om = ta[0], ta[1]
        lg = -0.5 * d * LOG_2PI
        for i in range(d):
            lg += -0.5 * z[i] * z[i] + a * math.cos(om * z[i])
            G[i] = -z[i] - a * om * math.sin(om * z[i])
        return lg
    else:
        # banana (Haario et al.): z0 ~ N(0, s^2), z_i - b (z0^2 - s^2) ~ N(0, 1) for i >= 1;
        # ta = [s, b]; normalised
        s, bb = ta[0], ta[1]
        lg = -0.5 * d * LOG_2PI - math.log(s) - 0.5 * (z[0] / s) ** 2
        G[0] = -z[0] / (s * s)
        for i in range(1, d):
            r = z[i] - bb * (z[0] * z[0] - s * s)
            lg -= 0.5 * r * r
            G[i] = -r
            G[0] += r * 2.0 * bb * z[0]
        return lg


# ----------------------------------------------------------------------------- one sample

@njit(cache=True)
def sample_terms(tid, ta, tm, ti, family, mu, C, eps, idx, codes, f_total, n_total, bases,
                 work, out):
    """Every requested estimator's per-sample gradient term at base draw ``eps``.

    ``out[e * P + p]`` = term of estimator ``codes[e]`` for component p; ``out[E * P]`` =
    the ELBO sample f = log g(z) - log q(z).  The E_SCORE_LOO baseline is the mean of the
    other samples' f, (f_total - f) / (n_total - 1), with f_total the sum of f over all
    n_total samples; n_total <= 0.0 (a float64, like f_total) means a fixed baseline
    f_total (exact references).  E_SCORE_OPT and E_SCORE_EXACT_OPT use the fixed
    per-component baseline ``bases[e * P + p]``.  E_BSTAR_NUM / E_BSTAR_DEN (internal) give
    f s_p^2 and s_p^2, s = grad_lambda log q, whose means form b*_p.
    ``work`` is (5, d) scratch.  Returns f.
    """
    d = mu.size
    P = d + d if family == F_DIAG else d + d * (d + 1) // 2
    z, G, v, ep, u = work[0], work[1], work[2], work[3], work[4]
    sumsq = 0.0
    logdet = 0.0
    if family == F_DIAG:
        for i in range(d):
            z[i] = mu[i] + C[i, i] * eps[i]
            v[i] = eps[i] / C[i, i]                    # C^-T eps = -grad_z log q
            logdet += math.log(C[i, i])
            sumsq += eps[i] * eps[i]
    else:
        for i in range(d):
            acc = mu[i]
            for j in range(i + 1):
                acc += C[i, j] * eps[j]
            z[i] = acc
            logdet += math.log(C[i, i])
            sumsq += eps[i] * eps[i]
        for i in range(d - 1, -1, -1):                 # v = L^-T eps (back substitution)
            acc = eps[i]
            for k in range(i + 1, d):
                acc -= C[k, i] * v[k]
            v[i] = acc / C[i, i]
    logg = target_eval(tid, ta, tm, ti, z, idx, G)
    logq = -0.5 * sumsq - 0.5 * d * LOG_2PI - logdet
    f = logg - logq
    n_est = codes.size
    out[n_est * P] = f
    baseline = f_total if n_total <= 0.0 else (f_total - f) / (n_total - 1.0)

    for e in range(n_est):
        code = codes[e]
        o = e * P
        if code == E_REPARAM_SAMPLED_ENTROPY:
            # the literal total derivative of log g(z) - log q(z; lambda), as autodiff of a
            # sampled -log q computes it: eps' = C^-1 (z - mu), u = C^-T eps' = -grad_z log q;
            # path term (G + u) dz/dlambda, plus the score term -d/dlambda log q at fixed z.
            if family == F_DIAG:
                for i in range(d):
                    ep[i] = (z[i] - mu[i]) / C[i, i]
                    u[i] = ep[i] / C[i, i]
            else:
                for i in range(d):
                    acc = z[i] - mu[i]
                    for k in range(i):
                        acc -= C[i, k] * ep[k]
                    ep[i] = acc / C[i, i]
                for i in range(d - 1, -1, -1):
                    acc = ep[i]
                    for k in range(i + 1, d):
                        acc -= C[k, i] * u[k]
                    u[i] = acc / C[i, i]
            for i in range(d):
                out[o + i] = (G[i] + u[i]) - u[i]
            if family == F_DIAG:
                for i in range(d):
                    s = C[i, i]
                    out[o + d + i] = (G[i] + u[i]) * eps[i] * s - (u[i] * ep[i] * s - 1.0)
            else:
                for i in range(d):
                    base = o + d + i * (i + 1) // 2
                    for j in range(i + 1):
                        t = (G[i] + u[i]) * eps[j] - u[i] * ep[j]
                        if j == i:
                            t += 1.0 / C[i, i]
                        out[base + j] = t
        elif code == E_SCORE or code == E_SCORE_LOO or code >= E_SCORE_OPT:
            # the score s = grad_lambda log q into out[o:o+P], then the weight per component
            for i in range(d):
                out[o + i] = v[i]                      # d/dmu log q = C^-T eps
            if family == F_DIAG:
                for i in range(d):
                    out[o + d + i] = eps[i] * eps[i] - 1.0
            else:
                for i in range(d):
                    base = o + d + i * (i + 1) // 2
                    for j in range(i + 1):
                        s = v[i] * eps[j]
                        if j == i:
                            s -= 1.0 / C[i, i]
                        out[base + j] = s
            if code == E_SCORE:
                for p in range(P):
                    out[o + p] *= f
            elif code == E_SCORE_LOO:
                w = f - baseline
                for p in range(P):
                    out[o + p] *= w
            elif code == E_BSTAR_NUM:
                for p in range(P):
                    out[o + p] *= f * out[o + p]
            elif code == E_BSTAR_DEN:
                for p in range(P):
                    out[o + p] *= out[o + p]
            else:
                for p in range(P):
                    out[o + p] *= f - bases[o + p]
        else:
            # pathwise family: reparam (analytic entropy), stl (path derivative only),
            # wrong_no_entropy (reparam without the entropy gradient)
            stl = code == E_STL
            for i in range(d):
                out[o + i] = G[i] + v[i] if stl else G[i]
            ent = 1.0 if code == E_REPARAM else 0.0
            if family == F_DIAG:
                for i in range(d):
                    gi = G[i] + v[i] if stl else G[i]
                    out[o + d + i] = gi * eps[i] * C[i, i] + ent
            else:
                for i in range(d):
                    gi = G[i] + v[i] if stl else G[i]
                    base = o + d + i * (i + 1) // 2
                    for j in range(i + 1):
                        out[base + j] = gi * eps[j]
                    out[base + i] += ent / C[i, i]
    return f


# ----------------------------------------------------------------------------- draws

@njit(inline="always")
def _draw(key0, key1, sample, d, stream, eps, ti, n_data, idx):
    """eps of ``sample`` (flat normal stream), and its minibatch indices if batched."""
    for j in range(d):
        fl = sample * d + j
        if j == 0 or (fl & 1) == 0:
            z0, z1 = normal_pair(key0, key1, fl >> 1, stream)
        eps[j] = z1 if (fl & 1) == 1 else z0
    batch = ti[0]
    if batch > 0:
        per = (batch + 1) // 2
        for b in range(0, batch, 2):
            u0, u1 = uniform_pair(key0, key1, sample * per + b // 2, stream + 1)
            idx[b] = min(np.int64(u0 * n_data), n_data - 1)
            if b + 1 < batch:
                idx[b + 1] = min(np.int64(u1 * n_data), n_data - 1)


# ----------------------------------------------------------------------------- kernels

@njit(parallel=True, cache=True)
def grad_kernel(keys0, keys1, n_samples, chunk, stream, tid, ta, tm, ti, family, mus, Cs,
                codes, f_sums, bases, out):
    """out[s, c, :] = (count, shift[T], sum[T], sum_sq[T]) of chunk c of seed s, T = E*P + 1.

    Seed s estimates at (mus[s], Cs[s]).  ``f_sums[s]`` is the sum over the seed's N samples
    of f = log g - log q (the first pass, needed only by E_SCORE_LOO, whose baseline for
    sample i is (f_sums[s] - f_i) / (N - 1)).  ``bases[s, e * P + p]`` is the fixed baseline
    of E_SCORE_OPT / E_SCORE_EXACT_OPT (estimator e, component p) for seed s.
    """
    n_seeds, n_chunks = out.shape[0], out.shape[1]
    for job in prange(n_seeds * n_chunks):
        # the body is one call: a small parallel region compiles much faster
        s = job // n_chunks
        c = job - s * n_chunks
        first = c * chunk
        _chunk_sums(keys0[s], keys1[s], first, min(first + chunk, n_samples), n_samples,
                    stream, tid, ta, tm, ti, family, mus[s], Cs[s], codes, f_sums[s],
                    bases[s], out[s, c])


@njit(cache=True)
def _chunk_sums(key0, key1, first, last, n_samples, stream, tid, ta, tm, ti, family, mu, C,
                codes, f_sum, bases, row):
    """row = (count, shift[T], sum[T], sum_sq[T]) of samples first..last-1, shifted by the
    terms of the first (guards the variance against cancellation)."""
    d = mu.size
    T = (row.size - 1) // 3
    n_data = tm.shape[0]
    eps = np.empty(d)
    idx = np.zeros(max(ti[0], 1), dtype=np.int64)
    work = np.empty((5, d))
    t = np.empty(T)
    shift = np.empty(T)
    acc = np.zeros(T)
    acc2 = np.zeros(T)
    for i in range(first, last):
        _draw(key0, key1, i, d, stream, eps, ti, n_data, idx)
        sample_terms(tid, ta, tm, ti, family, mu, C, eps, idx, codes, f_sum,
                     np.float64(n_samples), bases, work, t)
        if i == first:
            for k in range(T):
                shift[k] = t[k]
        for k in range(T):
            dv = t[k] - shift[k]
            acc[k] += dv
            acc2[k] += dv * dv
    row[0] = last - first
    for k in range(T):
        row[1 + k] = shift[k]
        row[1 + T + k] = acc[k]
        row[1 + 2 * T + k] = acc2[k]


@njit(cache=True)
def theta_to_lambda(family, theta, mu, C):
    """Unpack the parameter vector into mu and the scale matrix C (diag: exp(log_sigma))."""
    d = mu.size
    for i in range(d):
        mu[i] = theta[i]
    C[:, :] = 0.0
    if family == F_DIAG:
        for i in range(d):
            C[i, i] = math.exp(theta[d + i])
    else:
        for i in range(d):
            base = d + i * (i + 1) // 2
            for j in range(i + 1):
                C[i, j] = theta[base + j]


@njit(parallel=True, cache=True)
def opt_kernel(keys0, keys1, n_steps, m_samples, tid, ta, tm, ti, family, d, code, theta0,
               adam, lr, cosine, record_every, min_diag, rec_theta):
    """Stochastic-gradient ascent on the ELBO from theta0 with one estimator, per seed.

    Step t (0-based) estimates the gradient from M = m_samples draws (samples t*M .. t*M+M-1
    of stream 0), then updates theta with SGD or Adam (beta1 0.9, beta2 0.999, eps 1e-8,
    bias-corrected) at rate lr * (1 + cos(pi t / n_steps)) / 2 if cosine else lr.  For the
    full family the diagonal of L is projected onto [min_diag, inf) after each step.
    E_SCORE_LOO makes a first pass over the step's draws for the sum of f; E_SCORE_OPT first
    estimates b^_p = sum f' s'_p^2 / sum s'_p^2 from samples t*M .. t*M+M-1 of the baseline
    stream STREAM_BASELINE (independent of the step's draws).  E_SCORE_EXACT_OPT is not
    supported here (its b* would change with lambda at every step).
    rec_theta[s, r] = theta before step r * record_every (the last record: after all steps).
    """
    for s in prange(rec_theta.shape[0]):
        _optimize_one(keys0[s], keys1[s], n_steps, m_samples, tid, ta, tm, ti, family, d, code,
                      theta0, adam, lr, cosine, record_every, min_diag, rec_theta[s])


@njit(cache=True)
def _optimize_one(key0, key1, n_steps, m_samples, tid, ta, tm, ti, family, d, code, theta0,
                  adam, lr, cosine, record_every, min_diag, rec):
    """One seed's trajectory of ``opt_kernel``; rec[r] = theta at record r."""
    n_rec = rec.shape[0]
    P = theta0.size
    n_data = tm.shape[0]
    codes = np.array([code], dtype=np.int64)
    theta = theta0.copy()
    m1 = np.zeros(P)
    m2 = np.zeros(P)
    g = np.zeros(P)
    mu = np.empty(d)
    C = np.empty((d, d))
    eps = np.empty(d)
    idx = np.zeros(max(ti[0], 1), dtype=np.int64)
    work = np.empty((5, d))
    t = np.empty(P + 1)
    bcodes = np.array([E_BSTAR_NUM, E_BSTAR_DEN], dtype=np.int64)
    tb = np.empty(2 * P + 1)
    num = np.zeros(P)
    den = np.zeros(P)
    bases = np.zeros(P)
    r = 0
    for step in range(n_steps + 1):
        if step % record_every == 0 or step == n_steps:
            if r < n_rec:
                rec[r, :] = theta
                r += 1
        if step == n_steps:
            break
        theta_to_lambda(family, theta, mu, C)
        fsum = 0.0
        if code == E_SCORE_LOO:
            for i in range(m_samples):
                _draw(key0, key1, step * m_samples + i, d, 0, eps, ti, n_data, idx)
                fsum += sample_terms(tid, ta, tm, ti, family, mu, C, eps, idx, codes[:0],
                                     0.0, 0.0, bases, work, t)
        elif code == E_SCORE_OPT:
            num[:] = 0.0
            den[:] = 0.0
            for i in range(m_samples):
                _draw(key0, key1, step * m_samples + i, d, STREAM_BASELINE, eps, ti, n_data,
                      idx)
                sample_terms(tid, ta, tm, ti, family, mu, C, eps, idx, bcodes, 0.0, 0.0,
                             bases, work, tb)
                for p in range(P):
                    num[p] += tb[p]
                    den[p] += tb[P + p]
            for p in range(P):
                bases[p] = num[p] / den[p]
        g[:] = 0.0
        for i in range(m_samples):
            _draw(key0, key1, step * m_samples + i, d, 0, eps, ti, n_data, idx)
            sample_terms(tid, ta, tm, ti, family, mu, C, eps, idx, codes, fsum,
                         np.float64(m_samples), bases, work, t)
            for p in range(P):
                g[p] += t[p]
        rate = lr
        if cosine:
            rate = lr * 0.5 * (1.0 + math.cos(math.pi * step / n_steps))
        for p in range(P):
            gp = g[p] / m_samples
            if adam:
                m1[p] = 0.9 * m1[p] + 0.1 * gp
                m2[p] = 0.999 * m2[p] + 0.001 * gp * gp
                mh = m1[p] / (1.0 - 0.9 ** (step + 1))
                vh = m2[p] / (1.0 - 0.999 ** (step + 1))
                theta[p] += rate * mh / (math.sqrt(vh) + 1e-8)
            else:
                theta[p] += rate * gp
        if family == F_FULL:
            for i in range(d):
                k = d + i * (i + 1) // 2 + i
                if theta[k] < min_diag:
                    theta[k] = min_diag


@njit(cache=True)
def terms_at(tid, ta, tm, ti, family, mu, C, codes, baseline, bases, eps_rows, idx_rows):
    """Terms at given base draws (rows of ``eps_rows``): for tests and references
    (``baseline``: the fixed E_SCORE_LOO baseline; ``bases``: as in ``sample_terms``)."""
    d = mu.size
    P = d + d if family == F_DIAG else d + d * (d + 1) // 2
    T = codes.size * P + 1
    out = np.empty((eps_rows.shape[0], T))
    work = np.empty((5, d))
    for r in range(eps_rows.shape[0]):
        sample_terms(tid, ta, tm, ti, family, mu, C, eps_rows[r], idx_rows[r], codes,
                     baseline, 0.0, bases, work, out[r])
    return out
