"""The CPU formulations (llmos_jax/models/cpu_kernels.py) compute what the plain ones do:
values and gradients against jnp.einsum / jax.nn.dot_product_attention, and a few training
steps of the model with both options, single-device and on a (2,2,2) mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmos_jax.config import ConfigError
from llmos_jax.config_checks import validate
from llmos_jax.models import cpu_kernels
from tests.helpers import tiny_config
from tests.test_sharding import _run

# The model's own equations (attention q/k/v and out, MLP, LM head) and one that is not a plain
# layer (falls back to jnp.einsum).
EQUATIONS = {
    "BTD,DNH->BTNH": ((2, 8, 16), (16, 4, 8)),
    "BTNH,NHD->BTD": ((2, 8, 4, 8), (4, 8, 16)),
    "BTD,DF->BTF": ((2, 8, 16), (16, 32)),
    "BTD,VD->BTV": ((2, 8, 16), (24, 16)),
}


@pytest.mark.parametrize("equation", sorted(EQUATIONS))
def test_einsum_2d_equals_einsum_with_gradients(equation):
    xs, ks = EQUATIONS[equation]
    kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x, k = jax.random.normal(kx, xs), jax.random.normal(kk, ks)
    out_shape = jnp.einsum(equation, x, k).shape
    g = jax.random.normal(kg, out_shape)

    def loss(f):
        return lambda x, k: jnp.sum(f(equation, x, k) * g)

    np.testing.assert_allclose(
        cpu_kernels.einsum_2d(equation, x, k), jnp.einsum(equation, x, k), rtol=1e-5, atol=1e-5
    )
    got = jax.grad(loss(cpu_kernels.einsum_2d), argnums=(0, 1))(x, k)
    ref = jax.grad(loss(jnp.einsum), argnums=(0, 1))(x, k)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_causal_block_attention_equals_plain_with_segments_and_gqa():
    b, t, n, kv, h = 2, 64, 4, 2, 8
    kq, kk, kv_, kg = jax.random.split(jax.random.PRNGKey(1), 4)
    q = jax.random.normal(kq, (b, t, n, h))
    k = jax.random.normal(kk, (b, t, kv, h))
    v = jax.random.normal(kv_, (b, t, kv, h))
    seg = jnp.where(jnp.arange(t) < 23, 1, 2)[None].repeat(b, 0)  # two documents per row
    causal = jnp.tril(jnp.ones((t, t), bool))
    mask = (causal & (seg[:, :, None] == seg[:, None, :]))[:, None]
    g = jax.random.normal(kg, (b, t, n, h))

    def loss(f):
        return lambda q, k, v: jnp.sum(f(q, k, v, mask=mask) * g)

    blocks = lambda q, k, v, mask: cpu_kernels.causal_block_attention(q, k, v, mask)
    np.testing.assert_allclose(
        blocks(q, k, v, mask), jax.nn.dot_product_attention(q, k, v, mask=mask), atol=1e-5
    )
    got = jax.grad(loss(blocks), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(jax.nn.dot_product_attention), argnums=(0, 1, 2))(q, k, v)
    for a, r in zip(got, ref):
        np.testing.assert_allclose(a, r, atol=1e-5)


def _config(**model):
    c = tiny_config("llama", **model)
    c.data.seq_len = 64  # four query blocks of 16: the blocked path runs
    c.optim.lr = 1e-2  # the params move visibly over the steps
    return c


@pytest.mark.quick_compile
def test_cpu_options_train_like_the_default_and_shard_like_one_device():
    # (scan_layers=False, which the CPU configs also set, initialises differently: not compared.)
    cpu = dict(matmul_impl="dense2d", attention_impl="causal_blocks")
    plain, _ = _run(_config(), jax.devices()[:1])
    fast, _ = _run(_config(**cpu), jax.devices()[:1])
    assert plain[-1] < plain[0]
    np.testing.assert_allclose(fast, plain, rtol=1e-5)
    c = _config(**cpu)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
    sharded, _ = _run(c, jax.devices()[:8])
    np.testing.assert_allclose(sharded, fast, rtol=1e-5)


def test_causal_blocks_refused_for_objectives_that_see_ahead():
    c = tiny_config()
    c.model.attention_impl = "causal_blocks"
    validate(c, num_devices=1)  # the causal LM: fine
    c.objective.name = "prefix_lm"
    with pytest.raises(ConfigError, match=r"^model\.attention_impl: .*prefix_lm"):
        validate(c, num_devices=1)
