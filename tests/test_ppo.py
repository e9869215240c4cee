"""PPO's pieces against plain reference implementations written from the papers: GAE, the
KL-penalized rewards, whitening, GRPO's group advantages, the clipped losses; and the rollout
schedule's resume."""

import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.data.post_pipeline import prompt_index_batches
from llm_jax.train.advantages import gae, group_advantages, kl_rewards, whiten
from llm_jax.train.ppo import clipped_policy_loss, clipped_value_loss
from llm_jax.train.rollout_schedule import RolloutSchedule


def rollout(seed=0, rows=6, length=16):
    """Rows with a prompt, a response of random length, then padding."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((rows, length), np.float32)
    for row in range(rows):
        start = rng.integers(1, 5)
        mask[row, start:start + rng.integers(1, length - 5)] = 1
    values = rng.normal(size=(rows, length)).astype(np.float32) * mask
    return rng, mask, values


def gae_by_loops(rewards, values, mask, gamma, lam):
    advantages = np.zeros_like(rewards)
    for row in range(len(rewards)):
        steps = np.flatnonzero(mask[row])
        following = 0.0
        for i in reversed(range(len(steps))):
            t = steps[i]
            next_value = values[row, steps[i + 1]] if i + 1 < len(steps) else 0.0
            delta = rewards[row, t] + gamma * next_value - values[row, t]
            following = delta + gamma * lam * following
            advantages[row, t] = following
    return advantages, (advantages + values) * mask


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_equals_the_recursion_written_out(gamma, lam):
    rng, mask, values = rollout()
    rewards = rng.normal(size=mask.shape).astype(np.float32) * mask
    advantages, returns = gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask),
                              gamma, lam)
    expected_adv, expected_ret = gae_by_loops(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(np.asarray(advantages), expected_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(returns), expected_ret, rtol=1e-5, atol=1e-5)
    if lam == 1.0 and gamma == 1.0:  # Monte Carlo: each return is the sum of rewards to come
        cumulative = np.cumsum(rewards[:, ::-1], axis=1)[:, ::-1] * mask
        np.testing.assert_allclose(np.asarray(returns), cumulative, rtol=1e-5, atol=1e-5)


def test_kl_penalty_on_every_token_and_the_score_on_the_last():
    rng, mask, _ = rollout(1)
    logp = -rng.uniform(0, 3, size=mask.shape).astype(np.float32)
    ref = -rng.uniform(0, 3, size=mask.shape).astype(np.float32)
    scores = rng.normal(size=len(mask)).astype(np.float32)
    rewards = np.asarray(kl_rewards(jnp.asarray(scores), jnp.asarray(logp * mask),
                                    jnp.asarray(ref * mask), jnp.asarray(mask), 0.1))
    expected = -0.1 * (logp - ref) * mask
    for row in range(len(mask)):
        expected[row, np.flatnonzero(mask[row])[-1]] += scores[row]
    np.testing.assert_allclose(rewards, expected, rtol=1e-5, atol=1e-6)


def test_whitening_and_group_advantages():
    rng, mask, values = rollout(2)
    white = np.asarray(whiten(jnp.asarray(values * 3 + 1), jnp.asarray(mask)))
    picked = white[mask > 0]
    np.testing.assert_allclose([picked.mean(), picked.std()], [0.0, 1.0], atol=1e-4)
    assert not white[mask == 0].any()
    scores = rng.normal(size=12).astype(np.float32)
    groups = scores.reshape(3, 4)
    expected = (groups - groups.mean(1, keepdims=True)) / (groups.std(1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(np.asarray(group_advantages(jnp.asarray(scores), 4)),
                               expected.reshape(-1), rtol=1e-5)


def test_clipped_losses_equal_the_ppo_paper():
    rng = np.random.default_rng(3)
    old = -rng.uniform(0, 3, size=200)
    new = old + rng.normal(scale=0.5, size=200)
    advantages = rng.normal(size=200)
    loss, clipped = clipped_policy_loss(jnp.asarray(new), jnp.asarray(old),
                                        jnp.asarray(advantages), 0.2)
    ratio = np.exp(new - old)
    surrogate = np.minimum(ratio * advantages, np.clip(ratio, 0.8, 1.2) * advantages)
    np.testing.assert_allclose(np.asarray(loss), -surrogate, rtol=1e-5)
    assert 0 < float(jnp.mean(clipped)) < 1
    values, old_values, returns = rng.normal(size=(3, 200))
    expected = 0.5 * np.maximum((values - returns) ** 2,
                                (old_values + np.clip(values - old_values, -0.2, 0.2)
                                 - returns) ** 2)
    np.testing.assert_allclose(np.asarray(clipped_value_loss(
        jnp.asarray(values), jnp.asarray(old_values), jnp.asarray(returns), 0.2)), expected,
        rtol=1e-5)


def prompts(seed=0):
    return prompt_index_batches(40, split="train", batch_size=4, seed=seed, eval_fraction=0.0)


def test_rollout_schedule_samples_every_k_steps_and_resumes_the_rollout_in_progress():
    schedule = RolloutSchedule(prompts(), updates=3)
    steps = [next(schedule) for _ in range(7)]
    assert [("index" in s, s["update"]) for s in steps] == [
        (True, 0), (False, 1), (False, 2), (True, 0), (False, 1), (False, 2), (True, 0)]
    # a run saved after 4 steps (mid-rollout) samples step 3's prompts again, at update 1
    replay = RolloutSchedule(prompts(), updates=3)
    for _ in range(4):
        next(replay)
    saved = replay.get_state()
    next(replay)
    resumed = RolloutSchedule(prompts(), updates=3)
    resumed.set_state(saved)
    again = next(resumed)
    assert again["update"] == 1 and again["index"].tolist() == steps[3]["index"].tolist()
    assert "index" not in next(resumed) and next(resumed)["index"].tolist() == steps[6][
        "index"].tolist()
