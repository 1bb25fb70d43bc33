"""Test setup: 8 virtual CPU devices so every sharded path runs without an accelerator.

XLA reads the flag once, at backend start, so it is set before anything imports jax.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("WANDB_MODE", "disabled")
