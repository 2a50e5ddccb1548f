"""Whether a plan fits a device, and which settings make it fit.

`check_fits` refuses a plan whose peak exceeds the device memory (`PlanDoesNotFit`, naming
every component); `suggest` searches rollout chunks, remat and gradient micro-batches for
settings that fit; `min_rollout_chunks` finds the fewest `sampling.rollout_chunks` that fit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agpo_jax.memory_plan.estimates import GiB
from agpo_jax.memory_plan.plan import MemoryPlan, plan_from_config


class PlanDoesNotFit(MemoryError):
  """A plan's peak exceeds the device memory; the message lists every component."""


def check_fits(plan: MemoryPlan, device_bytes: int, fraction: float = 1.0) -> MemoryPlan:
  """Raise `PlanDoesNotFit` unless the plan's peak fits in `fraction` of `device_bytes`.

  The message lists every component and, when more rollout chunks and/or remat would make the
  plan fit, says which config keys to set (see `suggest`).

  Args:
    plan: the plan to check.
    device_bytes: memory of one device.
    fraction: the share of `device_bytes` the plan may use.

  Returns:
    The plan, when it fits.
  """
  usable = int(device_bytes * fraction)
  if plan.peak > usable:
    lines = [f"{label}: {value / GiB:.2f} GiB ({value} bytes)"
             for label, value in plan.components()]
    hint = suggest(plan, usable)
    raise PlanDoesNotFit(
        f"peak {plan.peak / GiB:.2f} GiB per device exceeds the {usable / GiB:.2f} GiB usable "
        f"of {device_bytes / GiB:.2f} GiB ({plan.peak} > {usable} bytes); "
        f"mesh {plan.mesh}; " + "; ".join(lines)
        + (f"; suggestion: {hint}" if hint else
           "; no rollout_chunks, remat or num_microbatches setting fits: use more devices, "
           "another mesh, or fewer rows"))
  return plan


def rollout_chunk_options(batch_prompts: int, dp: int) -> list[int]:
  """Valid `sampling.rollout_chunks` for a batch: each generate call must hold a whole number
  of prompts per data-parallel device, so the divisors of batch_prompts / dp, ascending."""
  if batch_prompts % dp:
    raise ValueError(f"{batch_prompts} prompts do not split over the {dp} data-parallel "
                     "devices (mesh data x fsdp)")
  per_device = batch_prompts // dp
  return [c for c in range(1, per_device + 1) if per_device % c == 0]


def min_rollout_chunks(plan_for_chunks: Callable[[int], MemoryPlan], batch_prompts: int,
                       dp: int, device_bytes: int) -> int | None:
  """Smallest `sampling.rollout_chunks` whose plan (`plan_for_chunks(chunks)`) has its peak
  within `device_bytes`, among `rollout_chunk_options`; None if none does (e.g. the train
  phase alone does not fit)."""
  for chunks in rollout_chunk_options(batch_prompts, dp):
    if plan_for_chunks(chunks).peak <= device_bytes:
      return chunks
  return None


def min_rollout_chunks_from_config(config: Any, axis_sizes: dict[str, int], device_bytes: int,
                                   **kwargs) -> int | None:
  """`min_rollout_chunks` for a run config; kwargs go to `plan_from_config` (prompt_len,
  tokenizer_vocab_size)."""
  plan = plan_from_config(config, axis_sizes, **kwargs)
  return min_rollout_chunks(lambda c: plan_from_config(config, axis_sizes, rollout_chunks=c,
                                                       **kwargs),
                            config.train.batch_prompts, _dp(plan.mesh), device_bytes)


def _dp(axis_sizes: dict[str, int]) -> int:
  return axis_sizes.get("data", 1) * axis_sizes.get("fsdp", 1)


def suggest(plan: MemoryPlan, device_bytes: int) -> str | None:
  """Config settings under which the run fits in `device_bytes`, as command-line flags.

  Tries, in order, and returns the first that fits: more rollout chunks alone (the fewest
  that fit); remat (if off), with the fewest rollout chunks that then fit; more gradient
  micro-batches (the fewest that fit), with chunks; remat and micro-batches, with chunks. None
  if nothing fits, or if the plan does not record its inputs. Only sampling of the rollout
  batch is chunked: a plan whose `sample_rows` exceeds the rollout batch (an evaluation call)
  gets no chunk suggestion.
  """
  if not plan.inputs or plan.peak <= device_bytes:
    return None
  dp = _dp(plan.mesh)
  try:
    chunk_options = rollout_chunk_options(plan.rows_per_step // plan.num_samples, dp)
  except ValueError:
    chunk_options = [1]
  current_chunks = plan.rollout_chunks
  num_micro = plan.rows_per_update // plan.micro_batch_rows
  micro_options = [m for m in range(num_micro + 1, plan.rows_per_update // dp + 1)
                   if plan.rows_per_update % m == 0 and (plan.rows_per_update // m) % dp == 0]

  def with_chunks(p: MemoryPlan) -> tuple[MemoryPlan, int | None] | None:
    """The plan `p` with the fewest rollout chunks (>= the current) that fit, or None."""
    if p.peak <= device_bytes:
      return p, None
    if p.train_total > device_bytes or plan.sample_rows > plan.rows_per_step:
      return None
    for chunks in chunk_options:
      if chunks > current_chunks:
        chunked = p.replan(sample_rows=plan.rows_per_step // chunks)
        if chunked.peak <= device_bytes:
          return chunked, chunks
    return None

  remats = [False] if plan.remat else [False, True]
  candidates = ([(remat, None) for remat in remats]
                + [(remat, micro) for remat in remats for micro in micro_options])
  for remat, micro in candidates:
    changes = {}
    if remat:
      changes["remat"] = True
    if micro is not None:
      changes["micro_batch_rows"] = plan.rows_per_update // micro
    found = with_chunks(plan.replan(**changes) if changes else plan)
    if found is None:
      continue
    flags = ["--config.model.remat=True"] if remat else []
    if micro is not None:
      flags.append(f"--config.train.num_microbatches={micro}")
    if found[1] is not None:
      flags.append(f"--config.sampling.rollout_chunks={found[1]}")
    return " ".join(flags)
  return None
