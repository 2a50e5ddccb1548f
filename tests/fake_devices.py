"""Run a script in a subprocess with 8 fake CPU devices (the device count must be set before JAX
starts, so multi-device checks cannot run in the test process) and read back its findings: the
script prints one line `RESULT <json>`."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(devices: int = 8) -> dict:
  """This environment with `devices` fake CPU devices and JAX on the CPU."""
  out = dict(os.environ, JAX_PLATFORMS="cpu")
  out["XLA_FLAGS"] = (out.get("XLA_FLAGS", "")
                      + f" --xla_force_host_platform_device_count={devices}").strip()
  return out


def result(stdout: str) -> dict:
  """The JSON of the last `RESULT ` line of a script's output."""
  line = [l for l in stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def run(script: str, *args: str, timeout: int = 600) -> dict:
  """Run `script` (Python source) from the repository root on 8 fake devices; its RESULT."""
  proc = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, env=env(),
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return result(proc.stdout)
