"""Formulations of the matmuls and causal attention that XLA:CPU runs faster; same math.

Chosen by config (`model.matmul_impl="dense2d"`, `model.attention_impl="causal_blocks"`), off by
default: they were measured on CPU only (docs/benchmarks.md: the cpu-ref training step, 1,003 ->
725 ms with scan_layers=False), and the explicit transpose and the optimization barrier below
would block fusions that GPU and TPU compilers make.

* `einsum_2d`: a layer's einsum as ONE 2-D matmul [prod(batch), prod(contracted)] @
  [prod(contracted), prod(out)]. The einsum's separate batch dims (B, T) otherwise reach XLA:CPU
  as 3-D/4-D dots whose gradients need transposed copies of the activations.
* `_matmul`: its weight gradient multiplies a materialised copy of x^T. Autodiff's x^T @ dy
  reaches XLA:CPU as a dot contracting dimension 0 of x, which its matmul kernel runs at about
  half the speed of a row-major one; the barrier keeps XLA from folding the transpose back.
* `causal_block_attention`: causal self-attention in query blocks, block i against keys
  [0, end of block i) only, so the upper-triangle blocks that the causal mask zeroes are never
  computed (10 of 16 blocks' work at 4 blocks). Exact whenever the mask is causal (segment
  restrictions on top are fine); a prefix-LM or bidirectional mask is not, which is why the
  config allows it for the causal-LM objective only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


@jax.custom_vjp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    return x @ w


def _matmul_fwd(x, w):
    return x @ w, (x, w)


def _matmul_bwd(res, g):
    x, w = res
    dx = g @ w.T  # a transposed right-hand side is fast already
    dw = jax.lax.optimization_barrier(x.T) @ g
    return dx.astype(x.dtype), dw.astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def einsum_2d(equation: str, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """jnp.einsum(equation, x, kernel) as one 2-D matmul when the equation is a plain layer
    ("batch dims, contracted dims" x "contracted dims, output dims", in that order, e.g.
    "BTD,DNH->BTNH"); any other equation goes to jnp.einsum unchanged."""
    lhs, rest = equation.replace(" ", "").split(",")
    rhs, out = rest.split("->")
    contracted = [a for a in lhs if a in rhs and a not in out]
    batch = [a for a in lhs if a not in contracted]
    kept = [a for a in rhs if a not in contracted]
    plain = (
        lhs == "".join(batch + contracted)
        and rhs == "".join(contracted + kept)
        and out == "".join(batch + kept)
    )
    if not plain:
        return jnp.einsum(equation, x, kernel)
    lead, kshape = x.shape[: len(batch)], kernel.shape[len(contracted) :]
    y = _matmul(x.reshape(math.prod(lead), -1), kernel.reshape(-1, math.prod(kshape)))
    return y.reshape(*lead, *kshape)


def causal_block_attention(q, k, v, mask, blocks: int = 4) -> jax.Array:
    """jax.nn.dot_product_attention(q, k, v, mask=mask) for a causal `mask` [B, 1|N, T, T], in
    `blocks` query blocks; falls back to the plain call when T does not split into blocks of at
    least 16 (short sequences gain nothing)."""
    t = q.shape[1]
    if k.shape[1] != t or t % blocks or t // blocks < 16:
        return jax.nn.dot_product_attention(q, k, v, mask=mask)
    size = t // blocks
    outs = []
    for i in range(blocks):
        rows, end = slice(i * size, (i + 1) * size), (i + 1) * size
        outs.append(
            jax.nn.dot_product_attention(
                q[:, rows], k[:, :end], v[:, :end], mask=mask[:, :, rows, :end]
            )
        )
    return jnp.concatenate(outs, axis=1)
