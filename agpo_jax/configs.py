"""Loading config files and checking `--config.a.b=v` overrides before absl applies them.

`ml_collections.config_flags` applies overrides itself, but a mistyped key surfaces as a bare
`AttributeError: "'bb'"` deep in a traceback. `check_overrides` names the whole key, the flag
it came from and the closest existing keys instead.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import pathlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ml_collections import config_dict


class ConfigError(ValueError):
  """A config value is invalid; the message names the key."""


_OVERRIDE = re.compile(r"^--?config\.([A-Za-z0-9_.]+)(?:=(.*))?$")


def load_config_file(path: str) -> config_dict.ConfigDict:
  """Import a config file and call its `get_config()` (`path:arg` passes `arg`)."""
  file, _, arg = path.partition(":")
  file_path = pathlib.Path(file)
  if not file_path.is_file():
    raise FileNotFoundError(f"config file not found: {file}")
  spec = importlib.util.spec_from_file_location(f"_agpo_config_{file_path.stem}", file_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {file} defines no get_config()")
  return module.get_config(arg) if arg else module.get_config()


def flat_keys(cfg: Any, prefix: str = "") -> list[str]:
  """Every dotted key of a (nested) ConfigDict, leaves and inner nodes alike."""
  keys = []
  for name, value in cfg.items():
    key = f"{prefix}{name}"
    keys.append(key)
    if isinstance(value, config_dict.ConfigDict):
      keys.extend(flat_keys(value, key + "."))
  return keys


def check_overrides(cfg: config_dict.ConfigDict, argv: Iterable[str]) -> None:
  """Raise `KeyError` naming every `--config.x.y` flag in `argv` whose key `cfg` lacks."""
  known = set(flat_keys(cfg))
  problems = []
  for arg in argv:
    match = _OVERRIDE.match(arg)
    if not match or match.group(1) in known:
      continue
    key = match.group(1)
    close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join('config.' + c for c in close)}?" if close else ""
    problems.append(f"unknown config key 'config.{key}' (from {arg}){hint}")
  if problems:
    raise KeyError("\n".join(problems))


def config_path_from_argv(argv: Sequence[str]) -> str | None:
  """The value of `--config=PATH` (or `--config PATH`) in argv, if any."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def save_config(cfg: config_dict.ConfigDict, path: pathlib.Path) -> None:
  """Write the resolved config next to a run's outputs (JSON, human-readable)."""
  path.write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=str) + "\n")


def require_choice(cfg: Any, key: str, choices: Iterable[str]) -> str:
  """Return `cfg[key]` if it is one of `choices`, else a ValueError naming the key."""
  value = cfg
  for part in key.split("."):
    value = value[part]
  choices = tuple(choices)
  if value not in choices:
    raise ConfigError(f"config.{key}={value!r} is not one of {choices}")
  return value


def override_keys(argv: Iterable[str]) -> set[str]:
  """The dotted keys (without `config.`) that `--config.x.y=v` flags in `argv` set."""
  return {m.group(1) for m in map(_OVERRIDE.match, argv) if m}


def resolve_presets(cfg: config_dict.ConfigDict, explicit: Iterable[str] = ()) -> None:
  """Write the recipe named by `config.algo.preset` (if any) into `cfg`, in place; keys in
  `explicit` (set on the command line) keep their values."""
  from agpo_jax.algorithms.defaults import _PRESETS, apply_preset

  name = cfg.algo.get("preset", "") if "algo" in cfg else ""
  if not name:
    return
  if name not in _PRESETS:
    raise ConfigError(f"config.algo.preset={name!r} is not one of {tuple(sorted(_PRESETS))}")
  apply_preset(cfg, name, keep=set(explicit))
