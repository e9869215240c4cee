"""The chunked, fused output projection + cross-entropy equals the plain one, value and
gradients, and never builds the whole logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.train.fused_cross_entropy import chunk_length, fused_cross_entropy_sums
from llm_jax.train.losses import cross_entropy_sums


def inputs(batch=3, length=20, d_model=16, vocab=50, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(0), 4)
    hidden = jax.random.normal(keys[0], (batch, length, d_model)).astype(dtype)
    kernel = (jax.random.normal(keys[1], (d_model, vocab)) * 0.3).astype(dtype)
    targets = jax.random.randint(keys[2], (batch, length), 0, vocab)
    mask = (jax.random.uniform(keys[3], (batch, length)) > 0.3).astype(jnp.float32)
    return hidden, kernel, targets, mask


def plain(hidden, kernel, targets, mask, z_loss):
    logits = (hidden @ kernel).astype(jnp.float32)
    return cross_entropy_sums(logits, targets, mask, z_loss)


@pytest.mark.parametrize("z_loss, chunk", [(0.0, 5), (1e-2, 8), (1e-2, 64)])
def test_values_and_gradients_equal_the_plain_loss(z_loss, chunk):
    hidden, kernel, targets, mask = inputs()
    # Weigh the two sums differently so that a mixed-up gradient shows.
    weigh = lambda sums: sums[0] + 3.0 * sums[1]
    want = jax.value_and_grad(lambda h, k: weigh(plain(h, k, targets, mask, z_loss)),
                              argnums=(0, 1))(hidden, kernel)
    fused = lambda h, k: weigh(fused_cross_entropy_sums(h, k, targets, mask, z_loss, chunk))
    got = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(hidden, kernel)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, atol=1e-5)
    sums = fused_cross_entropy_sums(hidden, kernel, targets, mask, z_loss, chunk)
    np.testing.assert_allclose(sums, plain(hidden, kernel, targets, mask, z_loss), rtol=1e-5)


def test_bfloat16_hidden_states_keep_their_dtype_in_gradients():
    hidden, kernel, targets, mask = inputs(dtype=jnp.bfloat16)
    loss = lambda h, k: fused_cross_entropy_sums(h, k, targets, mask, 0.0, 4)[0]
    grads = jax.grad(loss, argnums=(0, 1))(hidden, kernel)
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16]
    want = jax.grad(lambda h: plain(h.astype(jnp.float32), kernel.astype(jnp.float32),
                                    targets, mask, 0.0)[0])(hidden)
    np.testing.assert_allclose(grads[0].astype(jnp.float32), want, atol=0.02)


def _temp_bytes(loss, hidden, kernel) -> int:
    """Scratch memory of the compiled gradient, from XLA's own memory analysis."""
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(hidden, kernel).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_no_array_as_large_as_the_logits_is_made():
    batch, length, vocab = 2, 64, 2048
    hidden, kernel, targets, mask = inputs(batch=batch, length=length, vocab=vocab)
    logits_bytes = batch * length * vocab * 4  # [B, T, V] in fp32
    fused = lambda h, k: fused_cross_entropy_sums(h, k, targets, mask, 0.0, 8)[0]
    whole = lambda h, k: plain(h, k, targets, mask, 0.0)[0]
    # Measured: 0.27x the logits' size fused (chunks of 8 positions), 2.0x unfused.
    assert _temp_bytes(whole, hidden, kernel) >= logits_bytes  # the analysis sees the logits
    assert _temp_bytes(fused, hidden, kernel) < 0.5 * logits_bytes


@pytest.mark.parametrize("length, chunk, expected", [(256, 64, 64), (100, 64, 50), (7, 64, 7),
                                                      (13, 4, 1)])
def test_chunks_divide_the_sequence(length, chunk, expected):
    assert chunk_length(length, chunk) == expected
