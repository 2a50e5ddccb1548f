"""Token-level advantage mass (algorithms/token_mass.py) against a table worked by hand."""

import types

import numpy as np
import pytest

from agpo_jax.algorithms.token_mass import group_shared_tokens, token_mass_metrics
from agpo_jax.train import rl_step

PAD, EOS = 0, 2


def _table():
  tokens = np.array([[5, 6, EOS, PAD], [5, 7, EOS, PAD], [8, EOS, PAD, PAD], [9, 9, 9, 9]])
  lengths = np.array([3, 3, 2, 4])
  truncated = np.array([False, False, False, True])
  advantages = np.array([-1.0, 1.0, -0.5, -0.5])
  loss_mask = np.array([True, True, True, False])
  return tokens, lengths, truncated, advantages, loss_mask


def test_worked_example():
  # Two groups of G = 2. Group 0: rows "5 6 EOS" (A = -1) and "5 7 EOS" (A = +1): token 5 at
  # position 0 and EOS at position 2 are shared. Group 1: "8 EOS" (A = -0.5) and "9 9 9 9"
  # truncated (A = -0.5, masked out of the loss): nothing shared, and the masked row carries
  # no mass.
  tokens, lengths, truncated, advantages, loss_mask = _table()
  m = token_mass_metrics(tokens, lengths, truncated, advantages, loss_mask, group_size=2)
  # Negative mass: row 0 three tokens x 1 = 3, row 2 two tokens x 0.5 = 1; total 4.
  assert m["neg_mass"] == pytest.approx(4.0)
  assert m["neg_eos"] == pytest.approx((1 + 0.5) / 4)  # the EOS of rows 0 and 2
  assert m["neg_first"] == pytest.approx((1 + 0.5) / 4)  # tokens 5 and 8
  assert m["neg_shared"] == pytest.approx(2 / 4)  # tokens 5 and EOS of row 0
  # Quarters of each row's own length: row 0 (length 3) positions 0, 1, 2 -> q1, q2, q3;
  # row 2 (length 2) positions 0, 1 -> q1, q3.
  assert [m[f"neg_q{q}"] for q in (1, 2, 3, 4)] == pytest.approx([1.5 / 4, 1 / 4, 1.5 / 4, 0])
  # Positive mass: row 1, three tokens x 1.
  assert m["pos_mass"] == pytest.approx(3.0)
  assert (m["pos_eos"], m["pos_first"], m["pos_shared"]) == pytest.approx((1 / 3, 1 / 3, 2 / 3))


def test_no_mass_and_bad_groups():
  tokens = np.array([[5, EOS], [5, EOS]])
  m = token_mass_metrics(tokens, np.array([2, 2]), np.array([False, False]), np.zeros(2),
                         np.ones(2, bool), group_size=2)
  assert m["neg_mass"] == m["pos_mass"] == 0 and m["neg_shared"] == 0
  with pytest.raises(ValueError, match="3 rows are not groups of 2"):
    token_mass_metrics(np.zeros((3, 2), int), np.ones(3, int), np.zeros(3, bool), np.zeros(3),
                       np.ones(3, bool), group_size=2)


def test_group_shared_tokens_worked_example():
  tokens, lengths, *_ = _table()
  # Group 0: token 5 at position 0 and EOS at position 2 in both rows; group 1: nothing (8 vs
  # 9 at position 0, EOS vs 9 at 1; positions 2-3 are reached by one row only).
  np.testing.assert_array_equal(group_shared_tokens(tokens, lengths, 2), [
      [1, 0, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
  # A row that stopped early does not break what the longer rows share: "5 EOS" / "5 6 6 EOS"
  # / "5 6 7 EOS": position 0 by all; position 1 is not (EOS vs 6); position 3 (EOS) is, by
  # the two rows that reach it.
  g = np.array([[5, EOS, PAD, PAD], [5, 6, 6, EOS], [5, 6, 7, EOS]])
  np.testing.assert_array_equal(group_shared_tokens(g, np.array([2, 4, 4]), 3), [
      [1, 0, 0, 0], [1, 0, 0, 1], [1, 0, 0, 1]])
  with pytest.raises(ValueError, match="3 rows are not groups of 2"):
    group_shared_tokens(g, np.array([2, 4, 4]), 2)


def test_token_mask_removes_the_masked_tokens_mass():
  tokens, lengths, truncated, advantages, loss_mask = _table()
  keep = ~group_shared_tokens(tokens, lengths, 2)
  m = token_mass_metrics(tokens, lengths, truncated, advantages, loss_mask, 2, keep)
  # Negative: row 0 keeps token 6 only (mass 1), row 2 both tokens (2 x 0.5); total 2.
  assert m["neg_mass"] == pytest.approx(2.0) and m["neg_shared"] == 0
  assert m["neg_eos"] == pytest.approx(0.5 / 2)  # only row 2's EOS is left
  assert m["pos_mass"] == pytest.approx(1.0)  # row 1: token 7


def test_build_batch_drops_masked_tokens_from_the_loss_only():
  tokens, lengths, truncated, advantages, loss_mask = _table()
  gen_mask = np.arange(4)[None, :] < lengths[:, None]
  rollout = types.SimpleNamespace(
      prompt_tokens=np.full((4, 2), 3), prompt_mask=np.ones((4, 2), bool), tokens=tokens,
      mask=gen_mask, logprobs=np.zeros((4, 4), np.float32))
  plain = rl_step.build_batch(rollout, advantages, loss_mask)
  np.testing.assert_array_equal(plain.completion_mask, gen_mask & loss_mask[:, None])
  keep = ~group_shared_tokens(tokens, lengths, 2)
  masked = rl_step.build_batch(rollout, advantages, loss_mask, keep)
  np.testing.assert_array_equal(masked.completion_mask, [
      [0, 1, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
  # The model still reads every token: input mask and positions are those of the plain batch.
  np.testing.assert_array_equal(masked.input_mask, plain.input_mask)
  np.testing.assert_array_equal(masked.positions, plain.positions)
  np.testing.assert_array_equal(masked.advantages, plain.advantages)


@pytest.mark.parametrize("name,mask", [("agpo", True), ("agpo", False), ("grpo", True)])
def test_rl_loop_masks_shared_tokens_only_for_agpo_with_the_option(tmp_path, monkeypatch, name,
                                                                  mask):
  from tests.test_checkpoint_integrity import _rl, _rl_config  # noqa: PLC0415 (heavy imports)
  # A cold sampler: the groups' completions surely share tokens somewhere.
  cfg = _rl_config(1, **{"algo.name": name, "sampling.temperature": 0.3})
  cfg.algo.agpo.mask_shared_tokens = mask
  build_batch, seen = rl_step.build_batch, []
  def spy(rollout, advantages, loss_mask, token_mask=None):
    batch = build_batch(rollout, advantages, loss_mask, token_mask)
    seen.append((rollout, token_mask, batch))
    return batch
  monkeypatch.setattr(rl_step, "build_batch", spy)
  _rl(cfg, tmp_path)
  (rollout, token_mask, batch), = seen
  if name == "agpo" and mask:
    shared = group_shared_tokens(np.asarray(rollout.tokens), np.asarray(rollout.lengths), 4)
    assert shared.any()
    np.testing.assert_array_equal(token_mask, ~shared)
    assert not (batch.completion_mask & shared).any()
  else:  # the reference loss: every generated token of a kept row
    assert token_mask is None
