"""clevr_gen's numba kernels: cached on disk, loaded (not recompiled) by new processes, and still
usable where no cache directory is writable."""
import json
import subprocess
import sys

import pytest

from clevr_gen.jit import kernel
from clevr_gen.pipeline import load_kernels


def test_a_new_process_loads_the_kernels_from_the_cache():
    load_kernels()  # compiles and caches them if this process is the first
    code = """
import json
from numba.core.registry import CPUDispatcher
from clevr_gen import camera, coco, pipeline, render, scene
pipeline.load_kernels()
stats = {f"{m.__name__}.{name}": (sum(d.stats.cache_hits.values()),
                                  sum(d.stats.cache_misses.values()))
         for m in (camera, coco, render, scene) for name, d in vars(m).items()
         if isinstance(d, CPUDispatcher)}
print(json.dumps(stats))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert {name: misses for name, (_, misses) in stats.items() if misses} == {}
    assert stats["clevr_gen.render._trace_kernel"][0] == 1
    assert stats["clevr_gen.render._shade_kernel"][0] == 1


def test_kernels_compile_in_memory_where_nothing_can_be_cached():
    # numba finds no cache directory for code without a source file, as for a read-only install
    # without a writable user cache dir.
    namespace = {}
    exec(compile("def twice(x):\n    return 2 * x\n", "<no source file>", "exec"), namespace)
    with pytest.warns(RuntimeWarning, match="NUMBA_CACHE_DIR"):
        twice = kernel(namespace["twice"])
    assert twice(21) == 42 and twice._cache.__class__.__name__ == "NullCache"
