"""Test setup: 8 virtual CPU devices so every sharded path runs without an accelerator.

XLA reads the flag once, at backend start, so it is set before anything imports jax.

Compiling dominates these tests on CPU, and many of them compile the same program again (a
fresh jit of the same step, the eval step before and after a run, the same tiny model in
several files). A persistent compilation cache, fresh for each pytest session and shared by its
xdist workers (they inherit the controller's environment), compiles each program once. Measured
on the 2-core CI machine: the MLM tiny-config run went from 89 to 64 CPU-seconds.
"""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("WANDB_MODE", "disabled")
# glibc keeps freed heap instead of page-faulting XLA's temporaries back in on every call, as the
# `llmos` commands do (llmos_jax/host_memory.py); imports no jax.
from llmos_jax.host_memory import tune_malloc_for_cpu  # noqa: E402

tune_malloc_for_cpu("cpu")
# Set in the controller before the workers start, so all of them see the same directory; the
# process that made it removes it at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="llmos-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)


@pytest.fixture(autouse=True)
def _quick_compile(request):
    """Tests marked quick_compile compile with jax_disable_most_optimizations (XLA's backend at
    -O0, no expensive LLVM passes): their few steps on tiny shapes cost far less than XLA:CPU's
    optimisations do. Measured on the (2,2,2)-mesh tests: the train step compiles in 7 s instead
    of 30 s. Not for tests that train for many steps (those run ~1.5x slower unoptimised)."""
    if request.node.get_closest_marker("quick_compile") is None:
        yield
        return
    import jax  # not at module level: the flags above must be set before jax starts

    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
