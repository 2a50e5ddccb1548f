"""Token-level advantage mass (algorithms/token_mass.py) against a table worked by hand."""

import numpy as np
import pytest

from agpo_jax.algorithms.token_mass import token_mass_metrics

PAD, EOS = 0, 2


def test_worked_example():
  # Two groups of G = 2. Group 0: rows "5 6 EOS" (A = -1) and "5 7 EOS" (A = +1): token 5 at
  # position 0 and EOS at position 2 are shared. Group 1: "8 EOS" (A = -0.5) and "9 9 9 9" truncated (A = -0.5,
  # masked out of the loss): nothing shared, and the masked row carries no mass.
  tokens = np.array([[5, 6, EOS, PAD], [5, 7, EOS, PAD], [8, EOS, PAD, PAD], [9, 9, 9, 9]])
  lengths = np.array([3, 3, 2, 4])
  truncated = np.array([False, False, False, True])
  advantages = np.array([-1.0, 1.0, -0.5, -0.5])
  loss_mask = np.array([True, True, True, False])
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
