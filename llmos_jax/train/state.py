"""The train state: everything a step reads and writes, as one pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """step: optimizer steps taken; params: the differentiated tree; opt_state: optax state;
    rng: the run's base key (a step's key is fold_in(rng, step), so resume reproduces dropout);
    frozen: trees the loss reads but never updates (teacher, reference, reward model)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    frozen: Any
