"""Sharded initialisation: the only place where logical axis names become mesh shardings.

The recipe (Flax lm1b): eval_shape the init to get shapes and logical names without allocating,
turn names into NamedShardings with the config's rules, then jit the init with those
out_shardings, so every array is born on its devices and no host ever holds the whole model.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from llmos_jax.train.state import TrainState


def boxed_init_fn(model, tx: optax.GradientTransformation, seq_len: int, frozen=None):
    """rng -> TrainState whose params (and optimizer moments) still carry logical-axis boxes."""

    def init(rng):
        params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
        variables = model.init(
            {"params": params_rng, "dropout": dropout_rng}, *model.init_args(seq_len)
        )
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=state_rng,
            frozen=frozen if frozen is not None else {},
        )

    return init


def state_shardings(init_fn, mesh, rules, rng):
    """(abstract unboxed state, NamedSharding tree) without allocating anything."""
    abstract = jax.eval_shape(init_fn, rng)
    logical = nn.get_partition_spec(abstract)
    shardings = nn.logical_to_mesh_sharding(logical, mesh, rules)
    return nn.meta.unbox(abstract), shardings


def init_train_state(model, tx, mesh, rules, seq_len: int, seed: int):
    """Returns (state, shardings): a freshly initialised state, born sharded."""
    rng = jax.random.PRNGKey(seed)
    init_fn = boxed_init_fn(model, tx, seq_len)
    _, shardings = state_shardings(init_fn, mesh, rules, rng)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state = jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=shardings)(rng)
    return state, shardings


def abstract_train_state(model, tx, mesh, rules, seq_len: int, seed: int):
    """ShapeDtypeStructs carrying the target shardings: what a checkpoint restores into."""
    rng = jax.random.PRNGKey(seed)
    abstract, shardings = state_shardings(boxed_init_fn(model, tx, seq_len), mesh, rules, rng)
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return target, shardings
