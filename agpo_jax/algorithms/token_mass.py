"""Where the advantage mass of a batch lands, token by token (a diagnostic, not in the loss).

The policy gradient pushes each generated token's log-probability by its completion's
advantage A, so token t of a completion carries mass |A| on the positive (A > 0) or the
negative (A < 0) side. These statistics say which tokens the negative (and positive) mass falls
on: the stop token, the first token, tokens every completion of the group shares at that
position (pushing those down moves every completion of the group, right or wrong), and each
quarter of a completion's own length. They explain how an update reshapes the distribution:
e.g. a negative push concentrated on shared tokens or on the stop token is one the
group-relative comparison cannot attribute to the answer.
"""

from __future__ import annotations

import numpy as np


def group_shared_tokens(tokens: np.ndarray, lengths: np.ndarray, group_size: int) -> np.ndarray:
  """`[N, T]` True at a generated token that every completion of its group long enough to have
  position t has equal at t, when at least two do (groups of `group_size` consecutive rows).

  A push on such a token moves every completion of the group that reaches it alike: it carries
  no information on which completions were right.
  """
  tokens = np.asarray(tokens)
  n, t = tokens.shape
  if n % group_size:
    raise ValueError(f"{n} rows are not groups of {group_size}")
  live = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
  groups = tokens.reshape(-1, group_size, t)
  group_live = live.reshape(-1, group_size, t)
  # All live tokens at a position are equal iff each equals their maximum (tokens are >= 0).
  top = np.where(group_live, groups, -1).max(axis=1, keepdims=True)
  same = np.all((groups == top) | ~group_live, axis=1)  # [N/G, T]
  shared = (same & (group_live.sum(axis=1) >= 2))[:, None, :] & group_live
  return shared.reshape(n, t)


def token_mass_metrics(tokens: np.ndarray, lengths: np.ndarray, truncated: np.ndarray,
                       advantages: np.ndarray, loss_mask: np.ndarray, group_size: int,
                       token_mask: np.ndarray | None = None) -> dict[str, float]:
  """Token-level advantage mass of one batch.

  Args:
    tokens: `[N, T]` generated tokens, groups of `group_size` consecutive rows.
    lengths: `[N]` generated tokens per row, the stop token included.
    truncated: `[N]` True where the row hit the budget without a stop token.
    advantages: `[N]` each completion's advantage.
    loss_mask: `[N]` completions that enter the loss.
    group_size: G.
    token_mask: optional `[N, T]` tokens that enter the loss (e.g. AGPO's
      `mask_shared_tokens` drops shared ones); None: every generated token.

  Returns:
    `neg_mass` / `pos_mass` (Σ over tokens of max(∓A, 0)); for each side `s` in (neg, pos) the
    fraction of its mass on: `s_eos` (the stop token), `s_first` (the first token),
    `s_shared` (a token equal, at that position, in every completion of the group long
    enough to have it, and the group has at least two such), `s_q1` ... `s_q4` (the quarters of
    the completion's own length, by token position). Fractions are 0 when a side has no mass.
  """
  tokens = np.asarray(tokens)
  t = tokens.shape[1]
  lengths = np.asarray(lengths)
  position = np.arange(t)[None, :]
  live = position < lengths[:, None]  # [N, T] generated tokens
  if token_mask is not None:
    live = live & np.asarray(token_mask)
  weight = np.where(np.asarray(loss_mask), np.asarray(advantages, np.float64), 0.0)
  eos = live & (position == lengths[:, None] - 1) & ~np.asarray(truncated)[:, None]
  first = live & (position == 0)
  shared = group_shared_tokens(tokens, lengths, group_size)
  quarter = np.minimum(4 * position // np.maximum(lengths[:, None], 1), 3)
  out = {}
  for side, mass_per_row in (("neg", np.maximum(-weight, 0.0)),
                             ("pos", np.maximum(weight, 0.0))):
    mass = mass_per_row[:, None] * live  # [N, T]
    total = float(mass.sum())
    out[f"{side}_mass"] = total
    share = lambda where: float((mass * where).sum() / total) if total > 0 else 0.0  # noqa: E731
    out[f"{side}_eos"] = share(eos)
    out[f"{side}_first"] = share(first)
    out[f"{side}_shared"] = share(shared)
    for q in range(4):
      out[f"{side}_q{q + 1}"] = share(live & (quarter == q))
  return out
