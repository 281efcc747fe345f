"""How clevr_gen compiles its kernels: numba's njit, cached on disk, single-threaded, deterministic.

The compiled code is cached beside the sources (__pycache__) or, where that is read-only, in the
user cache dir (NUMBA_CACHE_DIR overrides both), so only the first process after an install or
an edit compiles; worker processes load the cache. Where no cache dir is writable at all the
kernels are compiled in memory in each process instead of failing.
"""
from __future__ import annotations

import warnings

import numba

# fastmath off: no reassociation or FMA contraction, so every op is a correctly rounded IEEE op
# and the bytes are the same in every run and worker. error_model "numpy": x/0 gives inf/nan as
# in numpy (rays parallel to a slab) instead of raising.
_OPTIONS = dict(fastmath=False, error_model="numpy", nogil=True)


def kernel(func=None, **options):
    """njit with clevr_gen's options, cached when a cache directory is writable.

    `@kernel` or `@kernel(inline="always")` (numba inlines it into its callers, where unused
    results are then optimised away)."""
    if func is None:
        return lambda f: kernel(f, **options)
    try:
        return numba.njit(cache=True, **_OPTIONS, **options)(func)
    except RuntimeError:  # numba: "no locator available" = no writable cache directory
        warnings.warn("numba cannot cache clevr_gen's kernels (no writable cache directory): "
                      "every process compiles them anew (~15 s); set NUMBA_CACHE_DIR to a "
                      "writable directory to avoid it", RuntimeWarning, stacklevel=2)
        return numba.njit(cache=False, **_OPTIONS, **options)(func)
