"""`train.instrument`: per-layer activation RMS and attention entropy against transformers'
own hidden states and attention weights; the update ratio against the parameters' change."""

import jax
import numpy as np
import pytest
from sharded_run import BASE, batches
from test_hf_interop import TOKENS, hf_model

from llm_jax.config import load_config
from llm_jax.convert.hf_import import read_hf_checkpoint
from llm_jax.model import Transformer
from llm_jax.parallel.mesh import make_mesh
from llm_jax.train.build import build_training

torch = pytest.importorskip("torch")


def test_sown_activation_rms_and_attention_entropy_equal_transformers(tmp_path):
    model = hf_model(num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2)
    model.set_attn_implementation("eager")  # the attention weights themselves
    with torch.no_grad():  # sharper attention, by a different amount in each layer
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.q_proj.weight.mul_(10.0 * (i + 1))
            layer.self_attn.k_proj.weight.mul_(10.0)
    model.save_pretrained(tmp_path)
    config, params = read_hf_checkpoint(tmp_path)
    with torch.no_grad():
        out = model(torch.tensor(TOKENS), output_hidden_states=True, output_attentions=True)
    # hidden_states: the embeddings, then each block's output (the last after the final norm)
    want_rms = [np.sqrt(np.mean(h.numpy().astype(np.float64) ** 2))
                for h in out.hidden_states[1:-1]]
    want_entropy = [np.mean(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1))
                    for p in (a.numpy().astype(np.float64) for a in out.attentions)]
    _, state = Transformer(config).apply({"params": params}, TOKENS, mutable=["intermediates"])
    sown = state["intermediates"]["layers"]["blocks"]
    np.testing.assert_allclose(sown["activation_rms"][0][:2], want_rms, rtol=1e-5)
    np.testing.assert_allclose(sown["attn"]["attention_entropy"][0], want_entropy, rtol=1e-5)
    assert np.ptp(want_entropy) > 0.1  # the layers differ, so a mix-up would show


def test_update_ratio_is_the_parameters_change_and_training_is_unchanged():
    losses, states = {}, {}
    for instrument in (False, True):
        config = load_config("tiny", [*BASE, f"train.instrument={instrument}"])
        training = build_training(config, make_mesh(config, jax.devices()[:1]),
                                  jax.random.key(0))
        before = jax.device_get(training.state.params)  # the step donates the state
        state, metrics = training.step(training.state, training.put_batch(next(batches(1))))
        losses[instrument], states[instrument] = float(metrics["loss"]), jax.device_get(
            state.params)
    assert losses[True] == losses[False]
    jax.tree.map(np.testing.assert_array_equal, states[True], states[False])
    change = jax.tree.map(np.subtract, states[True], before)

    def norm(tree, layer=None):
        leaves = jax.tree.leaves(tree if layer is None else jax.tree.map(lambda x: x[layer],
                                                                         tree["layers"]))
        return np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in leaves))

    assert float(metrics["update_ratio"]) == pytest.approx(norm(change) / norm(before), rel=1e-4)
    for layer in range(config.model.num_layers):
        assert float(metrics[f"update_ratio/layer{layer}"]) == pytest.approx(
            norm(change, layer) / norm(before, layer), rel=1e-4)
        assert float(metrics[f"activation_rms/layer{layer}"]) > 0
        entropy = float(metrics[f"attn_entropy/layer{layer}"])
        assert 0 < entropy < np.log(32)  # at most uniform over a row's 32 positions
