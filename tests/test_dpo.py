"""DPO losses against the published formulas, written here independently, and against TRL's
own loss code on the same log-probs; the objective's reference handling and metrics."""

import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from post_training_factory import MODEL

from llm_jax.config import DpoConfig, load_config
from llm_jax.model import init_params
from llm_jax.train.dpo import dpo_losses, dpo_objective, reply_logprobs
from llm_jax.train.forward import make_forward
from llm_jax.train.preference_batch import split_sides

BETA = 0.3


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def published(loss, pc, pr, rc, rr, nc, nr, eps):
    """Rafailov et al. eq. 7; SLiC-HF's hinge; Azar et al. eq. 17 on per-token averages (as TRL
    normalizes it); Chowdhury et al.'s robust DPO."""
    h = (pc - rc) - (pr - rr)
    if loss == "sigmoid":
        return -log_sigmoid(BETA * h)
    if loss == "hinge":
        return np.maximum(0.0, 1.0 - BETA * h)
    if loss == "ipo":
        return ((pc - rc) / nc - (pr - rr) / nr - 1.0 / (2.0 * BETA)) ** 2
    return ((1 - eps) * -log_sigmoid(BETA * h) - eps * -log_sigmoid(-BETA * h)) / (1 - 2 * eps)


def logps(seed, n=64):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 20, size=(2, n)).astype(np.float64)
    return (*(-rng.uniform(0.5, 3.0, size=(4, n)) * np.concatenate([lengths, lengths])),
            *lengths)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge", "robust"])
def test_losses_equal_the_published_formulas(loss):
    pc, pr, rc, rr, nc, nr = logps(0)
    eps = 0.2 if loss == "robust" else 0.0
    cfg = DpoConfig(beta=BETA, loss=loss, label_smoothing=eps)
    ours = dpo_losses(*(jnp.asarray(x, jnp.float32) for x in (pc, pr, rc, rr)), cfg,
                      jnp.asarray(nc, jnp.float32), jnp.asarray(nr, jnp.float32))
    np.testing.assert_allclose(np.asarray(ours), published(loss, pc, pr, rc, rr, nc, nr, eps),
                               rtol=1e-5, atol=1e-5)


def trl_loss(loss, eps, per_token, completion_mask, ref_chosen, ref_rejected):
    """TRL's DPOTrainer._compute_loss on a model that returns the given per-token log-probs."""
    torch = pytest.importorskip("torch")
    trl = pytest.importorskip("trl")

    def model(**kwargs):
        zeros = torch.zeros_like(per_token)
        return types.SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                                     is_top1=torch.zeros_like(per_token, dtype=torch.bool))

    identity = lambda x: x  # noqa: E731
    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=False), ref_model=model, aux_loss_enabled=False,
        accelerator=types.SimpleNamespace(device="cpu", gather=identity,
                                          gather_for_metrics=identity),
        ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        f_alpha_divergence_coef=1.0, loss_types=[loss], loss_weights=[1.0], beta=BETA,
        label_smoothing=eps, use_weighting=False, _total_train_tokens=0, _tp_size=1,
        _metrics={"eval": collections.defaultdict(list), "train": collections.defaultdict(list)})
    rows, length = completion_mask.shape
    inputs = {"input_ids": torch.zeros((rows, length), dtype=torch.long),
              "attention_mask": torch.ones((rows, length), dtype=torch.long),
              "completion_mask": completion_mask,
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    return float(trl.DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False))


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge", "robust"])
def test_losses_equal_trls(loss):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    pairs, length = 8, 12
    mask = np.zeros((2 * pairs, length + 1), np.float32)
    for row in range(2 * pairs):  # a prompt, then a reply of its own length
        start = rng.integers(2, 6)
        mask[row, start:start + rng.integers(1, length - 5)] = 1
    per_token = -rng.uniform(0.1, 3.0, size=(2 * pairs, length)).astype(np.float32) * mask[:, 1:]
    ref = -rng.uniform(1.0, 20.0, size=(2, pairs)).astype(np.float32)
    eps = 0.1 if loss == "robust" else 0.0
    expected = trl_loss(loss, eps, torch.tensor(per_token), torch.tensor(mask),
                        torch.tensor(ref[0]), torch.tensor(ref[1]))
    sums = per_token.sum(axis=1)
    counts = mask.sum(axis=1)
    ours = dpo_losses(jnp.asarray(sums[:pairs]), jnp.asarray(sums[pairs:]), jnp.asarray(ref[0]),
                      jnp.asarray(ref[1]), DpoConfig(beta=BETA, loss=loss, label_smoothing=eps),
                      jnp.asarray(counts[:pairs]), jnp.asarray(counts[pairs:]))
    np.testing.assert_allclose(float(jnp.mean(ours)), expected, rtol=1e-5)


def preference_batch(config, pairs=4, seed=0):
    """Random (prompt, chosen, rejected) pairs in the layout `PreferenceData` batches have."""
    rng = np.random.default_rng(seed)
    length = config.data.seq_len
    batch = {}
    for side in ("chosen", "rejected"):
        n = rng.integers(10, length, size=pairs)
        real = np.arange(length)[None] < n[:, None]
        batch[f"{side}_tokens"] = np.where(real, rng.integers(4, 299, (pairs, length)), 3)
        batch[f"{side}_segment_ids"] = real.astype(np.int32)
        batch[f"{side}_positions"] = np.where(real, np.arange(length)[None], 0)
        batch[f"{side}_mask"] = (real & (np.arange(length)[None] >= 6)).astype(np.float32)
    return {k: jnp.asarray(v) for k, v in batch.items()}


def test_objective_starts_at_log_2_and_precomputed_reference_matches():
    config = load_config("tiny", MODEL + ["train.objective=dpo", f"dpo.beta={BETA}"])
    forward = make_forward(config)
    objective = jax.jit(dpo_objective(config, forward))
    params = jax.jit(init_params, static_argnums=0)(config.model, jax.random.key(0))
    batch = preference_batch(config)
    loss, sums = objective(params, batch, reference=params)
    np.testing.assert_allclose(float(loss / sums["denominator"]), np.log(2.0), rtol=1e-6)
    assert float(sums["rewards_chosen"]) == 0.0 and float(sums["rewards_accuracies"]) == 0.0

    # a moved policy: the frozen reference and its precomputed log-probs give the same loss
    moved = jax.jit(init_params, static_argnums=0)(config.model, jax.random.key(1))
    with_model = objective(moved, batch, reference=params)
    chosen, rejected = split_sides(jax.jit(reply_logprobs, static_argnums=0)(forward, params,
                                                                             batch))
    precomputed = dict(batch)
    for side, value in (("chosen", chosen), ("rejected", rejected)):
        precomputed[f"{side}_ref_logps"] = jnp.zeros_like(batch[f"{side}_mask"]).at[:, 0].set(
            value)
    with_logps = objective(moved, precomputed)
    np.testing.assert_allclose(float(with_logps[0]), float(with_model[0]), rtol=1e-6)
    margins = float(with_model[1]["rewards_margins"])
    np.testing.assert_allclose(margins, float(with_model[1]["rewards_chosen"])
                               - float(with_model[1]["rewards_rejected"]), rtol=1e-5)
    for side in ("chosen", "rejected"):  # the log-ratio is the reward without beta
        np.testing.assert_allclose(BETA * float(with_model[1][f"logratio_{side}"]),
                                   float(with_model[1][f"rewards_{side}"]), rtol=1e-5)


def test_the_frozen_reference_is_saved_and_restored_with_each_checkpoint(tmp_path):
    """A resumed run compares against the reference it started with, not a new copy."""
    from llm_jax import checkpoint
    from llm_jax.parallel.mesh import make_mesh
    from llm_jax.train.build import build_training

    config = load_config("tiny", MODEL + ["train.objective=dpo", f"run_dir={tmp_path}"])
    mesh = make_mesh(config)
    training = build_training(config, mesh)
    other = jax.tree.map(lambda x: x * 2 + 1, training.state.params)
    state = training.state.replace(reference=other)  # a reference unlike the params
    manager = checkpoint.checkpoint_manager(tmp_path)
    checkpoint.save_train_state(manager, state, {"position": 3}, config.seed)
    manager.wait_until_finished()
    fresh = training.state  # its reference is a copy of the initial params
    restored, data_state = checkpoint.restore_train_state(manager, 0, fresh, training.shardings)
    manager.close()
    assert data_state == {"position": 3}
    leaves = zip(jax.tree.leaves(restored.reference), jax.tree.leaves(other),
                 jax.tree.leaves(fresh.reference))
    for got, saved, new in leaves:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(saved))
        assert got.sharding == new.sharding
    assert not np.array_equal(np.asarray(jax.tree.leaves(fresh.reference)[0]),
                              np.asarray(jax.tree.leaves(other)[0]))
