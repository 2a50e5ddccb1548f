"""Checkpoint integrity and the update guard in the training loops.

A corrupt newest checkpoint is skipped on resume (the run continues exactly as one resumed from
the previous step on purpose); a run whose loss turns NaN never saves mid-way through its
skipped updates and stops naming the last good checkpoint; the gradient-norm spike guard skips
and counts a spike and nothing else.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agpo_jax import checkpointing, configs
from agpo_jax.models import transformer
from agpo_jax.train import rl_step, state_io
from agpo_jax.train import state as state_lib
from agpo_jax.train.rl import train_rl
from agpo_jax.train.sft import train_sft
from agpo_jax.verifiers import make_verifier
from tests.test_checkpointing import _data_files, _flip_16_bytes, _truncate
from tests.test_train import _setup, _tiny_config


def _reference_median(accepted):
  """What the guard compares with: the median of the last 32 accepted non-zero norms."""
  return float(np.median(accepted[-state_lib.GRAD_NORM_WINDOW:]))


def test_grad_norm_window_median_matches_numpy():
  rng = np.random.default_rng(0)
  window = rng.uniform(0.1, 5.0, state_lib.GRAD_NORM_WINDOW).astype(np.float32)
  median = jax.jit(state_lib.grad_norm_median)
  assert np.isinf(median(window, 0))
  for count in (1, 2, 3, 8, 31, 32, 33, 100):
    recorded = window[:min(count, len(window))]
    np.testing.assert_allclose(median(window, count), np.median(recorded), rtol=1e-6)


def test_spike_guard_skips_a_planted_spike_counts_it_and_nothing_else():
  params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
  guard = state_lib.UpdateGuard(spike_factor=10.0, spike_warmup=3)
  state = state_lib.TrainState.create(params, optax.adam(1e-2), guard)
  apply = jax.jit(state_lib.apply_if_finite)
  direction = {"w": jnp.full((4, 3), 0.5), "b": jnp.full(3, -0.5)}  # norm sqrt(15) / 2
  unit = float(optax.tree.norm(direction))
  # Normal updates (norms within a factor 3 of each other), a zero gradient (not recorded),
  # a planted spike (50x), more normal ones, a 9x update that is no spike, a non-finite one.
  scales = [1.0, 1.3, 0.7, 2.0, 0.0, 50.0, 1.1, 0.9, 9.0, float("nan"), 1.0]
  accepted, decisions = [], []
  for scale in scales:
    grads = jax.tree.map(lambda g, s=scale: g * s, direction)
    before = jax.tree.map(np.array, state.params)
    state, applied = apply(state, grads, jnp.float32(1.0))
    norm = scale * unit
    spike = len(accepted) >= 3 and norm > 10.0 * _reference_median(accepted)
    expected = bool(np.isfinite(norm)) and not spike
    decisions.append(bool(applied))
    assert bool(applied) == expected, (scale, accepted)
    if not expected:
      for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)
    elif norm > 0:
      accepted.append(norm)
  assert decisions == [True] * 5 + [False] + [True] * 3 + [False, True]
  assert int(state.skipped) == 2 and int(state.consecutive_skips) == 0
  assert int(state.grad_norm_count) == len(accepted) == 8
  np.testing.assert_allclose(state.grad_norms[:8], accepted, rtol=1e-6)


def test_update_that_makes_parameters_non_finite_is_skipped():
  params = {"w": jnp.ones(3)}
  state = state_lib.TrainState.create(params, optax.sgd(float("inf")))
  state, applied = jax.jit(state_lib.apply_if_finite)(state, {"w": jnp.ones(3)},
                                                       jnp.float32(1.0))
  assert not bool(applied) and int(state.skipped) == 1
  np.testing.assert_array_equal(state.params["w"], np.ones(3))


def test_loops_build_their_guard_from_their_config_block(tmp_path, monkeypatch):
  cfg = _tiny_config(**{"sft.spike_factor": 3.0, "sft.spike_warmup": 5,
                        "train.spike_factor": 7.0, "train.spike_warmup": 2})
  tokenizer, model_cfg, task = _setup(cfg)
  guards = []

  class Stop(Exception):
    pass

  def create_state(params, tx, shardings=None, guard=None):
    guards.append(guard)
    raise Stop

  monkeypatch.setattr(state_lib, "create_state", create_state)
  with pytest.raises(Stop):
    train_sft(cfg, tmp_path / "sft", model_cfg, tokenizer, task.split("train"), params={})
  with pytest.raises(Stop):
    train_rl(cfg, tmp_path / "rl", model_cfg, tokenizer, task.split("train"), None, {})
  assert guards == [state_lib.UpdateGuard(3.0, 5), state_lib.UpdateGuard(7.0, 2)]
  monkeypatch.undo()
  # Bad settings are refused naming the key, before any work.
  cfg = _tiny_config(**{"sft.spike_factor": 0.5})
  with pytest.raises(configs.ConfigError, match=r"config\.sft\.spike_factor=0\.5"):
    train_sft(cfg, tmp_path / "sft", model_cfg, tokenizer, task.split("train"), params={})
  cfg = _tiny_config(**{"train.spike_warmup": 0})
  with pytest.raises(configs.ConfigError, match=r"config\.train\.spike_warmup=0"):
    train_rl(cfg, tmp_path / "rl", model_cfg, tokenizer, task.split("train"), None, {})


def _rl(cfg, workdir, verifier=None):
  tokenizer, model_cfg, task = _setup(cfg)
  params = transformer.init_params(model_cfg, jax.random.key(cfg.seed, impl=cfg.prng_impl))
  with make_verifier(cfg.verifier) as inline:
    return train_rl(cfg, workdir, model_cfg, tokenizer, task.split("train"),
                    verifier or inline, params)


def _rl_config(steps, **overrides):
  # The shapes of test_train's CLI runs (8 prompts x 4 samples, 1 layer): one compile serves
  # both through the session's compilation cache.
  return _tiny_config(workdir_steps=steps, **{"train.checkpoint_every": 1, **overrides})


# A failed tensorstore read leaves orbax's other pending reads to be collected unawaited.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_resume_skips_corrupt_checkpoints_and_continues_as_from_the_good_one(tmp_path, caplog):
  """Steps 2-4 corrupt three ways: the run resumes from step 1 and ends with the parameters of
  the uninterrupted run (which a run resumed from step 1 on purpose reproduces bit for bit:
  tests/test_train.py::test_resume_after_sigkill_is_bit_identical)."""
  straight = _rl(_rl_config(4, **{"train.max_to_keep": 4}), tmp_path)
  checkpoints = tmp_path / "checkpoints"
  assert sorted(int(p.name) for p in checkpoints.iterdir()) == [1, 2, 3, 4]
  _flip_16_bytes(_data_files(checkpoints / "4")[0])  # 16 bytes of array data
  _truncate(_data_files(checkpoints / "3")[0])  # a truncated file
  (checkpoints / "2" / "meta" / "metadata").write_text('{"iterator": [0,')  # torn JSON

  caplog.clear()
  resumed = _rl(_rl_config(4, **{"train.max_to_keep": 2}), tmp_path)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  for step in (2, 3, 4):
    assert any(f"checkpoint step {step} in {checkpoints} is corrupt: {checkpoints / str(step)}"
               in w for w in warnings), warnings
  assert any("restored checkpoint step 1" in w and "[2, 3, 4]" in w for w in warnings)
  assert resumed.steps_done == 4
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  # The corrupt steps are kept aside, the good ones rotated as usual.
  names = sorted(p.name for p in checkpoints.iterdir())
  assert names == ["2.corrupt", "3", "3.corrupt", "4", "4.corrupt"]

  # Nothing left that verifies: one line naming each step, before any training.
  _flip_16_bytes(_data_files(checkpoints / "4")[0])
  (checkpoints / "3" / "integrity" / "metadata").unlink()
  with pytest.raises(checkpointing.CorruptCheckpoint) as info:
    _rl(_rl_config(8), tmp_path)
  message = str(info.value)
  assert "\n" not in message and "(steps [3, 4])" in message and str(checkpoints) in message


def test_nan_loss_run_stops_naming_the_last_good_checkpoint_and_keeps_it(tmp_path, caplog,
                                                                         monkeypatch):
  cfg = _rl_config(8, **{"train.max_to_keep": 1, "train.max_consecutive_skips": 2})
  tokenizer, model_cfg, _ = _setup(cfg)
  # From step 3 on, the batch's advantages are NaN: so is the loss.
  build_batch, calls = rl_step.build_batch, []
  def nan_from_step_3(rollout, advantages, loss_mask, token_mask=None):
    calls.append(1)
    if len(calls) >= 3:
      advantages = np.full_like(advantages, np.nan)
    return build_batch(rollout, advantages, loss_mask, token_mask)
  monkeypatch.setattr(rl_step, "build_batch", nan_from_step_3)
  with pytest.raises(FloatingPointError) as info:
    _rl(cfg, tmp_path)
  checkpoints = tmp_path / "checkpoints"
  message = str(info.value)
  assert "2 consecutive updates were skipped" in message and "from step 3 to step 4" in message
  assert f"The last good checkpoint is step 2: {checkpoints / '2'}" in message
  # Steps 3-4 were skipped: nothing saved then, so max_to_keep=1 kept step 2.
  assert sorted(p.name for p in checkpoints.iterdir()) == ["2"]
  assert "not saving checkpoint step 3: the last 1 update(s) were skipped" in caplog.text
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [l["skipped_total"] for l in lines] == [0, 0, 1, 2]
  # The kept checkpoint verifies, is finite, and holds the guard's window of the 2 updates.
  with checkpointing.Checkpointer(checkpoints) as ckpt:
    state = state_lib.TrainState.create(
        transformer.init_params(model_cfg, jax.random.key(0, impl=cfg.prng_impl)),
        state_lib.make_optimizer(cfg.optim, 8))
    restored, _, _ = state_io.restore_state(ckpt, state, {}, jax.random.key(0, impl="rbg"))
  assert int(restored.step) == 2 and int(restored.grad_norm_count) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored.params))
  np.testing.assert_allclose(restored.grad_norms[:2], [l["grad_norm"] for l in lines[:2]],
                             rtol=1e-6)


def test_save_state_refuses_mid_skip_and_restore_names_an_older_state_layout(tmp_path, caplog):
  params = {"w": jnp.ones(3)}
  state = state_lib.TrainState.create(params, optax.sgd(0.1))
  with checkpointing.Checkpointer(tmp_path) as ckpt:
    skipping = state.replace(step=jnp.int32(3), consecutive_skips=jnp.int32(1))
    assert not state_io.save_state(ckpt, skipping, {"iterator": [0, 0]})
    assert ckpt.all_steps() == [] and "not saving checkpoint step 3" in caplog.text
    # A checkpoint of the TrainState before the grad-norm window existed.
    old = {"step": state.step, "params": params, "opt_state": state.opt_state,
           "skipped": state.skipped, "consecutive_skips": state.consecutive_skips}
    assert ckpt.save(1, old, {"iterator": [0, 0]})
    with pytest.raises(ValueError, match=r"missing from the checkpoint: \['grad_norm_count', "
                                         r"'grad_norms'\]"):
      state_io.restore_state(ckpt, state, {})
