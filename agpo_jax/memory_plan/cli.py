"""The command line: `python -m agpo_jax.memory_plan --preset ... --devices ... --mesh ...`.

Plans a preset on machines you may not have, over one or more meshes, with and without remat,
and reports for each the fewest `sampling.rollout_chunks` that fit.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from agpo_jax.memory_plan.devices import parse_devices, parse_mesh
from agpo_jax.memory_plan.estimates import GiB
from agpo_jax.memory_plan.fit import min_rollout_chunks, rollout_chunk_options
from agpo_jax.memory_plan.plan import plan_memory
from agpo_jax.models.config import PRESETS


def main(argv: Sequence[str] | None = None) -> int:
  """Print one table row per mesh and remat setting (and each plan's table with --verbose).

  Args:
    argv: the arguments (default: `sys.argv[1:]`); `--help` lists them.

  Returns:
    The exit status, 0.
  """
  parser = argparse.ArgumentParser(
      prog="python -m agpo_jax.memory_plan",
      description="Per-device memory plan of an RL run (defaults: the reference protocol).")
  parser.add_argument("--preset", default="qwen2.5-math-7b", choices=sorted(PRESETS))
  parser.add_argument("--devices", default="v4-64",
                      help="v4-64, v5p-32, 8xh100-80gb, ... (TPU v4/v5p names count "
                           "TensorCores: v4-64 = 32 chips)")
  parser.add_argument("--mesh", action="append",
                      help="e.g. fsdp=-1 or fsdp=-1,tensor=4 (repeatable; default: pure fsdp "
                           "and fsdp x tensor=2, 4, 8)")
  parser.add_argument("--param-dtype", default=None, help="default: the preset's (float32)")
  parser.add_argument("--dtype", default="bfloat16", help="compute dtype (default bfloat16)")
  parser.add_argument("--prompt-len", type=int, default=1024)
  parser.add_argument("--response-len", type=int, default=3072)
  parser.add_argument("--batch-prompts", type=int, default=1024)
  parser.add_argument("--num-samples", type=int, default=8)
  parser.add_argument("--num-minibatches", type=int, default=4)
  parser.add_argument("--micro-rows-per-device", type=int, default=1,
                      help="rows per device per micro-batch (sets num_microbatches)")
  parser.add_argument("--remat", choices=("on", "off", "both"), default="both")
  parser.add_argument("--kl", action="store_true", help="keep reference params (KL term)")
  parser.add_argument("--rollout-chunks", type=int, default=0,
                      help="sampling.rollout_chunks to plan (default: the smallest that fits)")
  parser.add_argument("--device-gib", type=float, default=0.0,
                      help="usable GiB per chip (default: the device's nominal HBM; on GPUs JAX "
                           "preallocates 75%% unless XLA_PYTHON_CLIENT_MEM_FRACTION is set)")
  parser.add_argument("--verbose", action="store_true", help="print every plan's table")
  args = parser.parse_args(argv)

  device = parse_devices(args.devices)
  preset = PRESETS[args.preset]
  model_cfg = dataclasses.replace(preset, param_dtype=args.param_dtype or preset.param_dtype,
                                  dtype=args.dtype)
  meshes = args.mesh or ["fsdp=-1"] + [f"fsdp=-1,tensor={t}" for t in (2, 4, 8)
                                        if device.chips % t == 0 and device.chips > t]
  rows_per_step = args.batch_prompts * args.num_samples
  rows_per_update = rows_per_step // args.num_minibatches
  remats = {"on": [True], "off": [False], "both": [True, False]}[args.remat]
  cap = int(args.device_gib * GiB) if args.device_gib > 0 else device.bytes_per_chip
  print(f"{args.preset}, {device}; {args.batch_prompts} prompts x {args.num_samples} samples "
        f"= {rows_per_step} rows/step, {rows_per_update} rows/update, "
        f"{args.micro_rows_per_device} row(s)/device per micro-batch; prompt {args.prompt_len} "
        f"+ response {args.response_len}; params {model_cfg.param_dtype}, compute "
        f"{model_cfg.dtype}")
  print("GiB per device. sample@1 = the whole rollout batch in one generate call; chunks = "
        "the smallest sampling.rollout_chunks that fits (or the one given), sample@chunks its "
        "sample phase, peak the larger phase.")
  print(f"{'mesh':<20}{'remat':<6}{'micro':>6}{'resident':>9}{'train':>8}{'sample@1':>9}"
        f"{'chunks':>7}{'sample@chunks':>14}{'peak':>8}  verdict on {cap / GiB:.4g} GiB")
  for mesh_text in meshes:
    try:
      axis_sizes = parse_mesh(mesh_text, device.chips)
    except ValueError as e:
      print(f"{mesh_text:<20}skipped: {e}")
      continue
    dp = axis_sizes["data"] * axis_sizes["fsdp"]
    micro_rows = min(args.micro_rows_per_device * dp, rows_per_update)
    label = " ".join(f"{k}={v}" for k, v in axis_sizes.items() if v > 1) or "1 device"
    for remat in remats:
      def plan_for(chunks, remat=remat):
        return plan_memory(
            model_cfg, axis_sizes, prompt_len=args.prompt_len, response_len=args.response_len,
            rows_per_step=rows_per_step, rows_per_update=rows_per_update,
            micro_batch_rows=micro_rows, sample_rows=rows_per_step // chunks,
            num_samples=args.num_samples, remat=remat, ref_params=args.kl, name=args.preset)
      try:
        whole = plan_for(1)
        if args.rollout_chunks:
          chunks = args.rollout_chunks
          plan = plan_for(chunks)
        else:
          chunks = min_rollout_chunks(plan_for, args.batch_prompts, dp, cap)
          plan = plan_for(chunks if chunks else rollout_chunk_options(args.batch_prompts,
                                                                      dp)[-1])
      except ValueError as e:
        print(f"{label:<20}{'on' if remat else 'off':<6}skipped: {e}")
        continue
      if plan.peak <= cap:
        verdict = f"fits with rollout_chunks={plan.rollout_chunks}"
      elif plan.train_total > cap:
        verdict = "DOES NOT FIT: the train phase alone exceeds the device"
      else:
        verdict = (f"DOES NOT FIT even at rollout_chunks={plan.rollout_chunks} "
                   f"({plan.sample_rows_per_device} row(s)/device per call)")
      g = lambda b: f"{b / GiB:.2f}"  # noqa: E731
      print(f"{label:<20}{'on' if remat else 'off':<6}"
            f"{rows_per_update // plan.micro_batch_rows:>6}{g(plan.resident):>9}"
            f"{g(plan.train_total):>8}{g(whole.sample_total):>9}"
            f"{(chunks or '-')!s:>7}{g(plan.sample_total):>14}{g(plan.peak):>8}  {verdict}")
      if args.verbose:
        print(plan.format(cap))
  return 0
