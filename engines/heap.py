"""Give freed heap memory back to the operating system between frame batches.

glibc's malloc keeps what a program frees in its arenas (one per thread that allocates: FFmpeg's
decoder threads, torch's intra-op threads, ours) and reuses it, but it rarely returns pages from the
middle of a heap. Over a long job the freed-but-kept part grows with fragmentation, and so does the
peak resident set size, although the live memory does not (docs/benchmarks.md, "Memory").
`malloc_trim(0)` hands the free pages of every arena back. With jemalloc or tcmalloc preloaded the
allocator does this itself and glibc's arenas stay empty, so the call costs next to nothing.
"""

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS; True if any were (False also where unsupported)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
