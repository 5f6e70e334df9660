"""numba kernels for ELBO gradients of location-scale q (module-level, dispatching on codes).

Load this module with :func:`harness.vi.api.kernels` (``harness.kernel_cache``), never through a
plain import: numba's on-disk cache of a function notices edits of its own file only, and
this module inlines the Philox code of ``harness/rng.py`` and calls the families' jitted
functions; the loaded copy's name carries a digest of every file it imports, so an edit
anywhere gives a new kernel.  Hence the absolute imports.

The functions are module-level and dispatch on small integer codes (``harness.vi.codes``:
target, family, estimator) at run time: the per-sample work is O(d^2) vector arithmetic, so
a well-predicted branch per sample costs nothing.  The per-sample and per-chunk functions
allocate nothing (scratch arrays are passed in), so the CUDA kernel (``harness.vi.cuda``)
calls the very same functions.

Random-number plan (Philox streams of ``harness.rng``; key = the seed):

- eps, the d-dimensional base draw of sample i, is the flat stream of normals:
  eps[i, j] = normal number ``i * d + j`` of stream ``s``, i.e.
  ``normal_pair(k0, k1, (i*d + j) // 2, s)[(i*d + j) % 2]``.  For d = 1 this is exactly the
  scalar convention of the Gaussian-cost kernels.  Nested in N (sample i never depends on N)
  and common to every estimator of a call (paired comparisons).
- minibatch indices of sample i (logistic regression with batch B): uniform number
  ``i * 2*ceil(B/2) + b`` of stream ``s + 1``, index = floor(u * n_data) (with replacement).
- estimate cells use s = 0.  Optimisation (``opt_kernel``): the M samples of step t are
  samples ``t * M + i`` of stream 0; the fresh samples used to record the gradient variance
  and the ELBO at record r are samples 0.. of stream ``2 + 2 r``.
- the independent copy of main stream s is stream ``s + INDEPENDENT_STREAM_OFFSET`` (2**31,
  ``harness.rng``): ``score_function[baseline=optimal]`` draws its independent sample i
  (eps and minibatch) there, by the same rules, in the same loop as the main sample i.  Main
  streams are < 2**31 (records r < 10**9 use at most 2 + 2 r + 1 < 2**31), so the copies
  [2**31, 2**32) collide with none of them and fit Philox's 32-bit counter word.

Accumulated quantities (``sample_quantities``), estimator e at ``offsets[e]``, P components:

- per-sample estimators (``n_moments`` 0 in ``harness.vi.estimators``): P terms g_p.
- ``score_function[baseline=mean]``: 6 per component p, in the order of the 1-D
  ``harness.estimators.score_function.moments_mean``: f~ s_p, f~, s_p, (f~ s_p)^2, f~ s_p^2,
  s_p^2, with f~ = f - f_shift; ``estimate_mean`` forms the estimate and variance.
- ``score_function[baseline=optimal]``: 7 per component, the order of ``moments_optimal``:
  f~ s_p, s_p, (f~ s_p)^2, f~ s_p^2, s_p^2, f~' s'_p^2, s'_p^2 (primes: the independent
  sample); ``estimate_optimal``.
- last: f = log g(z) - log q(z), whose mean is the ELBO estimate.
f_shift is f at eps = 0 (z = mu) with sample 0's minibatch, a per-seed constant: it cancels
exactly from both estimates and only guards the moment sums against cancellation.  Each
chunk computes it (one evaluation of log g per chunk, not counted).

Work decomposition: ``grad_kernel`` runs a range of (seed, chunk) jobs, with chunks that
depend on N only (``harness.backends.cpu.chunking``); each chunk accumulates shifted sums
sequentially (``accumulate_chunk``) and chunks are merged in chunk order
(``harness.backends.cpu.merge_chunks``): bitwise identical for any thread count.
``opt_kernel`` runs a range of seeds; each trajectory is sequential.  ``harness.vi.api``
splits the jobs (seeds) into one contiguous range per thread.  Memory never
depends on N.

Arguments shared by the functions: ``key0, key1`` the seed's Philox key (32-bit values in
uint64; ``keys0, keys1`` per seed); ``tid`` the target code and ``ta, tm, ti`` its float
vector, float matrix and int vector (``harness.vi.targets.TargetData``); ``family`` the
family code; ``n_params`` = P; ``mu`` (d,), ``C`` (d, d) (``mus``, ``Cs`` per seed);
``codes``, ``offsets`` (E,) the estimators and where their quantities start;
``baselines`` (E P,) (per seed: (S, E P)); ``stream`` the main stream.
Parameter vector layout (``theta``, also the order of gradient components): see
``harness.vi.families``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from numba import njit

from harness.kernel_cache import ensure_numba_cache
from harness.rng import INDEPENDENT_STREAM_OFFSET, normal_pair, uniform_pair
from harness.vi.codes import (
    E_REPARAM,
    E_REPARAM_SAMPLED_ENTROPY,
    E_SCORE,
    E_SCORE_EXACT_OPTIMAL,
    E_SCORE_MEAN,
    E_SCORE_OPTIMAL,
    E_STL,
    E_WRONG_BASELINE_INDEX,
    E_WRONG_NO_ENTROPY,
    F_DIAG,
    T_BANANA,
    T_GAUSSIAN,
    T_LOGISTIC,
    T_RIPPLE,
    T_USER,
)
from harness.vi.families import diag, full

# numba picks where to cache each function below when it is defined: a writable place first.
ensure_numba_cache(Path(__file__).parent)

LOG_2PI = math.log(2.0 * math.pi)


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
def log_target(tid, ta, tm, ti, z, idx, grad):
    """log g(z) of target ``tid``; writes grad_z log g(z) into ``grad``.  ``ta``, ``tm``,
    ``ti``: the target's arrays (``harness.vi.targets.TargetData``); ``idx`` holds the
    minibatch indices (logistic regression with ti[0] > 0)."""
    d = z.size
    if tid == T_GAUSSIAN:
        # ta = [m (d), log normaliser], tm = precision P = S^-1
        q = 0.0
        for i in range(d):
            acc = 0.0
            for k in range(d):
                acc += tm[i, k] * (z[k] - ta[k])
            grad[i] = -acc
            q += (z[i] - ta[i]) * acc
        return ta[d] - 0.5 * q
    elif tid == T_LOGISTIC:
        # tm = X (n x D), ta = y (n,) in {0, 1}; prior N(0, I)
        n = tm.shape[0]
        logp = -0.5 * d * LOG_2PI
        for i in range(d):
            grad[i] = -z[i]
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
                grad[i] += w * tm[r, i]
        return logp + scale * ll
    elif tid == T_RIPPLE:
        # log g = log N(z; 0, I) + a sum_i cos(omega z_i); ta = [a, omega]
        a, om = ta[0], ta[1]
        lg = -0.5 * d * LOG_2PI
        for i in range(d):
            lg += -0.5 * z[i] * z[i] + a * math.cos(om * z[i])
            grad[i] = -z[i] - a * om * math.sin(om * z[i])
        return lg
    elif tid == T_BANANA:
        # z0 ~ N(0, s^2), z_i - b (z0^2 - s^2) ~ N(0, 1) for i >= 1; ta = [s, b]; normalised
        s, bb = ta[0], ta[1]
        lg = -0.5 * d * LOG_2PI - math.log(s) - 0.5 * (z[0] / s) ** 2
        grad[0] = -z[0] / (s * s)
        for i in range(1, d):
            r = z[i] - bb * (z[0] * z[0] - s * s)
            lg -= 0.5 * r * r
            grad[i] = -r
            grad[0] += r * 2.0 * bb * z[0]
        return lg
    elif tid == T_USER:
        return user_log_target(z, grad)
    return math.nan


@njit(cache=True)
def user_log_target(z, grad):
    """A user-written target's log g(z) (writing its gradient into ``grad``).  Here a
    placeholder the built-in targets never reach: the kernel module of a user target
    (``harness.vi.targets.user.kernels``) is this source with a definition appended that
    calls the user's functions, and replaces this one (numba looks globals up when it first
    compiles a function, after the whole module has run)."""
    return math.nan


# ----------------------------------------------------------------------------- families

@njit(cache=True)
def _transform(family, mu, C, eps, z, v):
    if family == F_DIAG:
        return diag.transform(mu, C, eps, z, v)
    return full.transform(mu, C, eps, z, v)


@njit(cache=True)
def _inverse(family, mu, C, z, eps, v):
    if family == F_DIAG:
        diag.inverse(mu, C, z, eps, v)
    else:
        full.inverse(mu, C, z, eps, v)


@njit(cache=True)
def _score(family, C, eps, v, out):
    if family == F_DIAG:
        diag.score(C, eps, v, out)
    else:
        full.score(C, eps, v, out)


@njit(cache=True)
def _pathwise(family, C, eps, h, out):
    if family == F_DIAG:
        diag.pathwise(C, eps, h, out)
    else:
        full.pathwise(C, eps, h, out)


@njit(cache=True)
def _add_entropy_gradient(family, C, out):
    if family == F_DIAG:
        diag.add_entropy_gradient(C, out)
    else:
        full.add_entropy_gradient(C, out)


@njit(cache=True)
def _elbo_integrand(tid, ta, tm, ti, family, mu, C, eps, idx, z, v, grad):
    """f = log g(z) - log q(z) at z = mu + C eps; also fills z, v = C^-T eps and grad =
    grad_z log g(z)."""
    logdet = _transform(family, mu, C, eps, z, v)
    sumsq = 0.0
    for i in range(eps.size):
        sumsq += eps[i] * eps[i]
    log_q = -0.5 * sumsq - 0.5 * eps.size * LOG_2PI - logdet
    return log_target(tid, ta, tm, ti, z, idx, grad) - log_q


# ----------------------------------------------------------------------------- one sample

@njit(cache=True)
def work_size(d, n_params, n_terms):
    """Length of the float scratch of ``accumulate_chunk`` (``sample_quantities`` uses all
    but the first 2 d + n_terms)."""
    return 11 * d + 3 * n_params + n_terms


@njit(cache=True)
def sample_quantities(tid, ta, tm, ti, family, n_params, mu, C, eps, idx, eps_ind, idx_ind,
                      codes, offsets, baselines, f_shift, work, out):
    """Every requested estimator's accumulated quantities at base draw ``eps``; returns f.

    Layout of ``out`` and the meaning of ``f_shift``: the module docstring.  ``eps_ind`` /
    ``idx_ind``: the independent sample (read only if a code is E_SCORE_OPTIMAL).
    ``baselines[e * P + p]``: the fixed baseline of E_SCORE_EXACT_OPTIMAL (estimator e,
    component p).  ``work``: float scratch of length >= 9 d + 3 P.
    """
    d, P = mu.size, n_params
    z, G, v = work[0:d], work[d:2 * d], work[2 * d:3 * d]
    eps_z, u, h = work[3 * d:4 * d], work[4 * d:5 * d], work[5 * d:6 * d]
    z_ind, G_ind, v_ind = work[6 * d:7 * d], work[7 * d:8 * d], work[8 * d:9 * d]
    s = work[9 * d:9 * d + P]
    s_ind = work[9 * d + P:9 * d + 2 * P]
    tmp = work[9 * d + 2 * P:9 * d + 3 * P]
    f = _elbo_integrand(tid, ta, tm, ti, family, mu, C, eps, idx, z, v, G)
    out[out.size - 1] = f
    have_score = False
    have_independent = False
    f_ind = 0.0
    for e in range(codes.size):
        code = codes[e]
        o = offsets[e]
        g = out[o:o + P]
        if code == E_REPARAM or code == E_WRONG_NO_ENTROPY:
            # G dz/dlambda + grad log|det C| (the wrong variant drops the entropy gradient)
            _pathwise(family, C, eps, G, g)
            if code == E_REPARAM:
                _add_entropy_gradient(family, C, g)
        elif code == E_STL:
            # the path derivative of log g(z) - log q(z): (G - grad_z log q) dz/dlambda
            for i in range(d):
                h[i] = G[i] + v[i]
            _pathwise(family, C, eps, h, g)
        elif code == E_REPARAM_SAMPLED_ENTROPY:
            # the total derivative of log g(z) - log q(z; lambda) as autodiff of a sampled
            # -log q computes it: the path term (G - grad_z log q(z)) dz/dlambda with
            # grad_z log q = -C^-T eps_z, eps_z = C^-1 (z - mu), plus the score term
            # -d/dlambda log q(z; lambda) at fixed z
            _inverse(family, mu, C, z, eps_z, u)
            for i in range(d):
                h[i] = G[i] + u[i]
            _pathwise(family, C, eps, h, g)
            _score(family, C, eps_z, u, tmp)
            for p in range(P):
                g[p] -= tmp[p]
        else:
            # score function: (f - b) grad_lambda log q(z)
            if not have_score:
                _score(family, C, eps, v, s)
                have_score = True
            if code == E_SCORE:
                for p in range(P):
                    g[p] = f * s[p]
            elif code == E_SCORE_EXACT_OPTIMAL:
                for p in range(P):
                    g[p] = (f - baselines[e * P + p]) * s[p]
            elif code == E_WRONG_BASELINE_INDEX:
                for p in range(P):
                    g[p] = (f - baselines[e * P + (p + 1) % P]) * s[p]
            elif code == E_SCORE_MEAN:
                ft = f - f_shift
                for p in range(P):
                    fs = ft * s[p]
                    q = o + 6 * p
                    out[q] = fs
                    out[q + 1] = ft
                    out[q + 2] = s[p]
                    out[q + 3] = fs * fs
                    out[q + 4] = fs * s[p]
                    out[q + 5] = s[p] * s[p]
            elif code == E_SCORE_OPTIMAL:
                if not have_independent:
                    f_ind = _elbo_integrand(tid, ta, tm, ti, family, mu, C, eps_ind, idx_ind,
                                            z_ind, v_ind, G_ind)
                    _score(family, C, eps_ind, v_ind, s_ind)
                    have_independent = True
                ft = f - f_shift
                ft_ind = f_ind - f_shift
                for p in range(P):
                    fs = ft * s[p]
                    q = o + 7 * p
                    out[q] = fs
                    out[q + 1] = s[p]
                    out[q + 2] = fs * fs
                    out[q + 3] = fs * s[p]
                    out[q + 4] = s[p] * s[p]
                    out[q + 5] = ft_ind * s_ind[p] * s_ind[p]
                    out[q + 6] = s_ind[p] * s_ind[p]
    return f


# ----------------------------------------------------------------------------- draws

@njit(cache=True)
def draw_base(key0, key1, sample, stream, eps):
    """eps of ``sample``: normal numbers sample*d .. sample*d + d - 1 of ``stream``."""
    d = eps.size
    for j in range(d):
        flat = sample * d + j
        if j == 0 or (flat & 1) == 0:
            z0, z1 = normal_pair(key0, key1, flat >> 1, stream)
        eps[j] = z1 if (flat & 1) == 1 else z0


@njit(cache=True)
def draw_minibatch(key0, key1, sample, stream, ti, n_data, idx):
    """Minibatch indices of ``sample`` (if the target is batched): uniform numbers of
    ``stream`` (the main stream + 1), floor(u * n_data), with replacement."""
    batch = ti[0]
    if batch > 0:
        per = (batch + 1) // 2
        for b in range(0, batch, 2):
            u0, u1 = uniform_pair(key0, key1, sample * per + b // 2, stream)
            idx[b] = min(np.int64(u0 * n_data), n_data - 1)
            if b + 1 < batch:
                idx[b + 1] = min(np.int64(u1 * n_data), n_data - 1)


@njit(cache=True)
def _needs_independent(codes):
    for e in range(codes.size):
        if codes[e] == E_SCORE_OPTIMAL:
            return True
    return False


@njit(cache=True)
def _f_at_location(key0, key1, stream, tid, ta, tm, ti, family, mu, C, eps, idx, work):
    """f at eps = 0 (z = mu) with sample 0's minibatch: the shift of the moment sums."""
    d = mu.size
    for j in range(d):
        eps[j] = 0.0
    draw_minibatch(key0, key1, 0, stream + 1, ti, tm.shape[0], idx)
    return _elbo_integrand(tid, ta, tm, ti, family, mu, C, eps, idx, work[0:d],
                           work[d:2 * d], work[2 * d:3 * d])


# ----------------------------------------------------------------------------- chunks

@njit(cache=True)
def accumulate_chunk(key0, key1, first, last, stream, tid, ta, tm, ti, family, n_params, mu,
                     C, codes, offsets, baselines, work, idx_work, row):
    """row = (count, shift[T], sum[T], sum_sq[T]) of the T quantities of samples
    first .. last-1 of one seed (key0, key1), shifted by those of the first sample (guards
    the variance against cancellation).  Scratch: ``work`` float64 of length
    ``work_size(d, n_params, T)``, ``idx_work`` int64 of length 2 max(batch, 1).
    Allocates nothing: the CUDA kernel calls it with slices of device arrays."""
    d = mu.size
    T = (row.size - 1) // 3
    n_data = tm.shape[0]
    eps, eps_ind = work[0:d], work[d:2 * d]
    terms = work[2 * d:2 * d + T]
    scratch = work[2 * d + T:]
    batch = max(ti[0], 1)
    idx, idx_ind = idx_work[0:batch], idx_work[batch:2 * batch]
    independent = _needs_independent(codes)
    f_shift = _f_at_location(key0, key1, stream, tid, ta, tm, ti, family, mu, C, eps, idx,
                             scratch)
    for i in range(first, last):
        draw_base(key0, key1, i, stream, eps)
        draw_minibatch(key0, key1, i, stream + 1, ti, n_data, idx)
        if independent:
            draw_base(key0, key1, i, stream + INDEPENDENT_STREAM_OFFSET, eps_ind)
            draw_minibatch(key0, key1, i, stream + INDEPENDENT_STREAM_OFFSET + 1, ti, n_data,
                           idx_ind)
        sample_quantities(tid, ta, tm, ti, family, n_params, mu, C, eps, idx, eps_ind, idx_ind,
                          codes, offsets, baselines, f_shift, scratch, terms)
        if i == first:
            for k in range(T):
                row[1 + k] = terms[k]
                row[1 + T + k] = 0.0
                row[1 + 2 * T + k] = 0.0
        for k in range(T):
            dv = terms[k] - row[1 + k]
            row[1 + T + k] += dv
            row[1 + 2 * T + k] += dv * dv
    row[0] = last - first


@njit(cache=True, nogil=True)
def grad_kernel(keys0, keys1, n_samples, chunk, stream, tid, ta, tm, ti, family, n_params,
                mus, Cs, codes, offsets, baselines, jobs, out):
    """out[s, c, :] = ``accumulate_chunk`` of chunk c (samples c*chunk ..) of seed s, at
    lambda = (mus[s], Cs[s]), for the jobs ``jobs[0] <= s * n_chunks + c < jobs[1]``;
    ``baselines[s]`` the seed's fixed baselines.  Without the GIL: ``harness.vi.api`` runs
    contiguous ranges of jobs in threads (each job writes its own ``out[s, c]``, so any
    split gives the same bits).  Not numba's ``prange``: its parallel region cost ~7 s of
    compile per kernel (of ~24 s), for every kernel and user target."""
    for job in range(jobs[0], jobs[1]):
        _chunk_job(keys0, keys1, n_samples, chunk, stream, tid, ta, tm, ti, family, n_params,
                   mus, Cs, codes, offsets, baselines, out, job)


@njit(cache=True)
def _chunk_job(keys0, keys1, n_samples, chunk, stream, tid, ta, tm, ti, family, n_params, mus,
               Cs, codes, offsets, baselines, out, job):
    n_chunks = out.shape[1]
    s = job // n_chunks
    c = job - s * n_chunks
    first = c * chunk
    d = mus.shape[1]
    T = (out.shape[2] - 1) // 3
    work = np.empty(work_size(d, n_params, T))
    idx_work = np.zeros(2 * max(ti[0], 1), dtype=np.int64)
    accumulate_chunk(keys0[s], keys1[s], first, min(first + chunk, n_samples), stream, tid, ta,
                     tm, ti, family, n_params, mus[s], Cs[s], codes, offsets, baselines[s],
                     work, idx_work, out[s, c])


@njit(cache=True)
def quantities_at(tid, ta, tm, ti, family, n_params, mu, C, codes, offsets, baselines,
                  f_shift, n_terms, eps_rows, idx_rows, eps_ind_rows, idx_ind_rows):
    """``sample_quantities`` at given draws (row r: eps_rows[r], minibatch idx_rows[r], the
    independent sample eps_ind_rows[r], idx_ind_rows[r]): an array [rows, n_terms].  For
    tests (the stream plan, quadrature of the kernel's terms against closed forms)."""
    d = mu.size
    out = np.empty((eps_rows.shape[0], n_terms))
    work = np.empty(work_size(d, n_params, n_terms))
    for r in range(eps_rows.shape[0]):
        sample_quantities(tid, ta, tm, ti, family, n_params, mu, C, eps_rows[r], idx_rows[r],
                          eps_ind_rows[r], idx_ind_rows[r], codes, offsets, baselines, f_shift,
                          work, out[r])
    return out


# ----------------------------------------------------------------------------- optimisation

@njit(cache=True)
def step_gradient(code, sums, m_samples, n_params, grad):
    """The gradient estimate of one step from the sums of its M samples' quantities: the mean
    for per-sample estimators; for E_SCORE_MEAN and E_SCORE_OPTIMAL the estimate half of
    ``harness.estimators.score_function.estimate_mean`` / ``estimate_optimal`` (the same
    algebra, per component): (sum f~s - sum f~ sum s / M) / (M - 1), and (sum f~s - b~ sum s)
    / M with b~ = sum f~' s'^2 / sum s'^2."""
    M = np.float64(m_samples)
    for p in range(n_params):
        if code == E_SCORE_MEAN:
            q = 6 * p
            grad[p] = (sums[q] - sums[q + 1] * sums[q + 2] / M) / (M - 1.0)
        elif code == E_SCORE_OPTIMAL:
            q = 7 * p
            grad[p] = (sums[q] - sums[q + 5] / sums[q + 6] * sums[q + 1]) / M
        else:
            grad[p] = sums[p] / M


@njit(cache=True, nogil=True)
def opt_kernel(keys0, keys1, n_steps, m_samples, tid, ta, tm, ti, family, n_params, d, code,
               n_terms, theta0, adam, lr, cosine, record_every, min_diag, seeds, rec_theta):
    """Stochastic-gradient ascent on the ELBO from theta0 with one estimator, per seed.

    Step t (0-based) estimates the gradient from M = m_samples draws (samples t*M .. t*M+M-1
    of stream 0; ``baseline=optimal``: also those of its independent copy), then updates
    theta with SGD or Adam (beta1 0.9, beta2 0.999, eps 1e-8, bias-corrected) at rate
    lr * (1 + cos(pi t / n_steps)) / 2 if cosine else lr, then projects theta back into
    the family (``project``).  One pass over the step's draws for every estimator (the
    baselines come from moments: ``step_gradient``); the moment shift of step t is the mean
    f of step t - 1 (step 0: f at z = mu), a constant given the step's draws.  ``n_terms``:
    the number of quantities of ``code`` (P n_moments or P, plus f).
    E_SCORE_EXACT_OPTIMAL is not supported (its b* would change with lambda every step).
    rec_theta[s, r] = theta before step r * record_every (the last record: after all steps),
    for the seeds ``seeds[0] <= s < seeds[1]`` (threads run ranges of seeds, as
    ``grad_kernel`` does jobs).
    """
    for s in range(seeds[0], seeds[1]):
        _optimize_one(keys0[s], keys1[s], n_steps, m_samples, tid, ta, tm, ti, family,
                      n_params, d, code, n_terms, theta0, adam, lr, cosine, record_every,
                      min_diag, rec_theta[s])


@njit(cache=True)
def _optimize_one(key0, key1, n_steps, m_samples, tid, ta, tm, ti, family, n_params, d, code,
                  n_terms, theta0, adam, lr, cosine, record_every, min_diag, rec):
    """One seed's trajectory of ``opt_kernel``; rec[r] = theta at record r."""
    n_rec = rec.shape[0]
    P = n_params
    n_data = tm.shape[0]
    codes = np.array([code], dtype=np.int64)
    offsets = np.zeros(1, dtype=np.int64)
    baselines = np.zeros(P)
    theta = theta0.copy()
    m1 = np.zeros(P)
    m2 = np.zeros(P)
    grad = np.zeros(P)
    mu = np.empty(d)
    C = np.empty((d, d))
    eps = np.empty(d)
    eps_ind = np.empty(d)
    batch = max(ti[0], 1)
    idx = np.zeros(batch, dtype=np.int64)
    idx_ind = np.zeros(batch, dtype=np.int64)
    work = np.empty(work_size(d, P, n_terms))
    terms = np.empty(n_terms)
    sums = np.zeros(n_terms)
    independent = code == E_SCORE_OPTIMAL
    r = 0
    f_shift = 0.0
    for step in range(n_steps + 1):
        if step % record_every == 0 or step == n_steps:
            if r < n_rec:
                rec[r, :] = theta
                r += 1
        if step == n_steps:
            break
        if family == F_DIAG:
            diag.unpack_into(theta, mu, C)
        else:
            full.unpack_into(theta, mu, C)
        if step == 0:
            f_shift = _f_at_location(key0, key1, 0, tid, ta, tm, ti, family, mu, C, eps, idx,
                                     work)
        sums[:] = 0.0
        for i in range(m_samples):
            sample = step * m_samples + i
            draw_base(key0, key1, sample, 0, eps)
            draw_minibatch(key0, key1, sample, 1, ti, n_data, idx)
            if independent:
                draw_base(key0, key1, sample, INDEPENDENT_STREAM_OFFSET, eps_ind)
                draw_minibatch(key0, key1, sample, INDEPENDENT_STREAM_OFFSET + 1, ti, n_data,
                               idx_ind)
            sample_quantities(tid, ta, tm, ti, family, P, mu, C, eps, idx, eps_ind, idx_ind,
                              codes, offsets, baselines, f_shift, work, terms)
            for k in range(n_terms):
                sums[k] += terms[k]
        step_gradient(code, sums, m_samples, P, grad)
        f_shift = sums[n_terms - 1] / m_samples
        rate = lr
        if cosine:
            rate = lr * 0.5 * (1.0 + math.cos(math.pi * step / n_steps))
        for p in range(P):
            gp = grad[p]
            if adam:
                m1[p] = 0.9 * m1[p] + 0.1 * gp
                m2[p] = 0.999 * m2[p] + 0.001 * gp * gp
                mh = m1[p] / (1.0 - 0.9 ** (step + 1))
                vh = m2[p] / (1.0 - 0.999 ** (step + 1))
                theta[p] += rate * mh / (math.sqrt(vh) + 1e-8)
            else:
                theta[p] += rate * gp
        if family == F_DIAG:
            diag.project(theta, d, min_diag)
        else:
            full.project(theta, d, min_diag)
