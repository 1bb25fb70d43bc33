"""The device mesh (data, fsdp, tensor) and the logical-axis rules that map onto it."""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llmos_jax.config import mesh_shape

AXES = ("data", "fsdp", "tensor")


def make_mesh(config, devices=None) -> Mesh:
    """A mesh of all (or the given) devices shaped by config.mesh.

    jax.make_mesh orders devices so that the innermost axis (tensor) stays within the fastest
    interconnect (a TPU ring, an NVLink island); an explicit device list is reshaped as given.
    """
    devices = list(devices) if devices is not None else jax.devices()
    sizes = mesh_shape(config, len(devices))
    shape = tuple(sizes[a] for a in AXES)
    # Auto axes: the compiler propagates shardings from the in/out shardings and the logical
    # constraints (Explicit axes, jax.make_mesh's newer default, turn every constraint into an
    # assert).
    auto = (jax.sharding.AxisType.Auto,) * len(AXES)
    if devices == jax.devices():
        return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=auto)


def axis_rules(config) -> tuple:
    """The logical -> mesh axis rules as a tuple of (logical, mesh-axes) pairs."""
    return tuple(
        (name, tuple(m) if isinstance(m, list) else m) for name, m in config.mesh.axis_rules
    )


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules):
    """Active while tracing: activations' logical constraints resolve against this mesh."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch arrays [B, ...]: rows split over every data-parallel axis."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def host_to_global(batch: dict, mesh: Mesh) -> dict:
    """Turns this host's slice of the global batch into global arrays sharded over the mesh."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }
