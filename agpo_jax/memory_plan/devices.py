"""The accelerator catalogue: memory per chip, device names and mesh specs of the command line.

TPU names: `v4-N` and `v5p-N` count TensorCores, two per chip, so a v4-64 is 32 chips and a
v5p-32 is 16 chips (cloud.google.com/tpu/docs/types-topologies, /v4, /v5p); v5e and v6e chips
have one TensorCore, so their names count chips. `DEVICES` holds the HBM per chip.
"""

from __future__ import annotations

import dataclasses

from agpo_jax.memory_plan.estimates import GiB
from agpo_jax.sharding import rules

# HBM per chip, nominal. TPU: cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e} (v4 "32 GiB"; v5e
# "16 GB", v5p "95 GB", v6e "32 GB", taken here as GiB). GPUs: the product names (an H100 80GB
# reports about 79.6 GiB, an H200 about 140 GiB); JAX on GPU preallocates only 75% of it
# unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise.
DEVICES: dict[str, int] = {
    "v4": 32 * GiB,
    "v5e": 16 * GiB,
    "v5p": 95 * GiB,
    "v6e": 32 * GiB,
    "a100-40gb": 40 * GiB,
    "a100-80gb": 80 * GiB,
    "h100-80gb": 80 * GiB,
    "h200": 140 * GiB,
}
# TensorCores per chip, for accelerator names that count TensorCores ("v4-64" = 32 chips).
TENSORCORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
_ALIASES = {"v5litepod": "v5e", "h100": "h100-80gb", "a100": "a100-80gb"}


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
  """`chips` accelerators of one `kind`, each with `bytes_per_chip` of memory."""

  kind: str
  chips: int
  bytes_per_chip: int

  def __str__(self) -> str:
    return f"{self.chips} x {self.kind} ({self.bytes_per_chip / GiB:.0f} GiB each)"


def parse_devices(spec: str) -> DeviceSpec:
  """"v4-64" (64 TensorCores = 32 chips), "v5p-32", "v5e-16", "8xh100-80gb", "h100-80gb:8"."""
  text = spec.strip().lower()
  count = None
  if "x" in text.split("-")[0] and text.split("x", 1)[0].isdigit():
    count_text, text = text.split("x", 1)
    count = int(count_text)
  elif ":" in text:
    text, count_text = text.split(":", 1)
    count = int(count_text)
  kind = _ALIASES.get(text, text)
  if kind not in DEVICES:
    name, _, cores = text.rpartition("-")
    name = _ALIASES.get(name, name)
    if name not in TENSORCORES_PER_CHIP or not cores.isdigit():
      raise ValueError(f"unknown device {spec!r}; known: {sorted(DEVICES)} (TPUs as "
                       "v4-64 / v5p-32 / v5e-16, GPUs as 8xh100-80gb)")
    per_chip = TENSORCORES_PER_CHIP[name]
    if int(cores) % per_chip:
      raise ValueError(f"{spec}: {cores} TensorCores is not a whole number of chips")
    return DeviceSpec(name, int(cores) // per_chip, DEVICES[name])
  return DeviceSpec(kind, count or 1, DEVICES[kind])


def parse_mesh(text: str, chips: int) -> dict[str, int]:
  """"fsdp=-1,tensor=4" -> {"data": 1, "fsdp": chips // 4, "tensor": 4} (unnamed axes are 1;
  fsdp takes the remaining chips unless another axis is -1)."""
  given = {}
  for part in filter(None, text.replace(" ", "").split(",")):
    key, _, value = part.partition("=")
    if key not in rules.MESH_AXES:
      raise ValueError(f"mesh axis {key!r} is not one of {rules.MESH_AXES}")
    given[key] = int(value)
  sizes = dict(data=1, fsdp=1, tensor=1)
  sizes.update(given)
  if -1 not in sizes.values() and "fsdp" not in given:
    sizes["fsdp"] = -1
  return dict(zip(rules.MESH_AXES, rules.mesh_shape(sizes, chips)))
