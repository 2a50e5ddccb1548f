"""launch_tpu.sh: the gcloud command sequence (--dry-run), input errors, and the remote shell
commands themselves, executed on a simulated worker (a temporary home directory with a fake
venv). A fake `gcloud` on PATH records every call: gcloud is never really run.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import signal
import subprocess
import tarfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch_tpu.sh"
GCLOUD = ["gcloud", "compute", "tpus", "tpu-vm"]

BASE = ["--name", "tpu-a", "--zone", "us-central2-b"]
TRICKY = "--config.tag=it's a \"test\" $HOME; rm -rf x"
OVERRIDES = ["--config.sampling.temperature=0.7", TRICKY]

FAKE_GCLOUD = r"""#!/bin/bash
# Records its arguments (one call per line, \x1f-separated) and pretends to succeed.
{ printf '%s\x1f' gcloud "$@"; printf '\n'; } >> "$GCLOUD_CALLS"
if [ "$4" = describe ]; then
  if [ -n "${FAKE_TPU_STATE:-}" ]; then echo "$FAKE_TPU_STATE"; exit 0; fi
  echo "ERROR: NOT_FOUND" >&2; exit 1
fi
exit 0
"""


@pytest.fixture
def env(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
  (bin_dir / "gcloud").chmod(0o755)
  (tmp_path / "tmp").mkdir()
  e = dict(os.environ)
  e.update(PATH=f"{bin_dir}:{e['PATH']}", GCLOUD_CALLS=str(tmp_path / "gcloud_calls"),
           TMPDIR=str(tmp_path / "tmp"))
  e.pop("FAKE_TPU_STATE", None)
  return e


def launch(env, *args, ok=True):
  proc = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                        timeout=60, check=False)
  if ok:
    assert proc.returncode == 0, proc.stderr
  return proc


def printed(proc) -> list[list[str]]:
  """The commands a run printed ('+ ' lines), as argv lists."""
  return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


def gcloud_calls(env) -> list[list[str]]:
  path = pathlib.Path(env["GCLOUD_CALLS"])
  if not path.exists():
    return []
  return [line.split("\x1f")[:-1] for line in path.read_text().splitlines()]


def verb(argv):
  return argv[4] if argv[:4] == GCLOUD else argv[0]


def flag(argv, name):
  values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def dry(env, *args):
  proc = launch(env, "--dry-run", *args)
  lines = proc.stdout.splitlines()
  assert lines and all(line.startswith("+ ") for line in lines), proc.stdout
  assert not pathlib.Path(env["GCLOUD_CALLS"]).exists(), "--dry-run ran gcloud"
  assert not os.listdir(env["TMPDIR"]), "--dry-run wrote the tarball"
  return printed(proc)


def test_all_dry_run_prints_create_copy_install_run_in_order(env):
  cmds = dry(env, "all", *BASE, "--accelerator", "v4-64", "--spot", "--project", "proj",
             "--config", "configs/x.py", "--workdir", "runs/exp 1", "--", *OVERRIDES)
  assert [verb(c) for c in cmds] == ["describe", "create", "git", "scp", "ssh", "ssh", "ssh"]
  describe, create, archive, scp, extract, install, run = cmds
  for c in (describe, create, scp, extract, install, run):
    assert c[5] == "tpu-a" or verb(c) == "scp"
    assert flag(c, "--zone") == "us-central2-b" and flag(c, "--project") == "proj"
  assert flag(create, "--accelerator-type") == "v4-64"
  assert flag(create, "--version") == "tpu-ubuntu2204-base"
  assert "--spot" in create and "--preemptible" not in create

  # git archive HEAD -> tarball -> every worker.
  assert archive[archive.index("archive"):] == [
      "archive", "--format=tar.gz", "-o", archive[archive.index("-o") + 1], "HEAD"]
  tarball = archive[archive.index("-o") + 1]
  assert scp[5:7] == [tarball, "tpu-a:agpo_jax-code.tar.gz"]
  for c in (scp, extract, install, run):
    assert flag(c, "--worker") == "all"
  assert "tar -xzf ~/agpo_jax-code.tar.gz -C agpo_jax" in flag(extract, "--command")

  setup = flag(install, "--command")
  steps = ["-m venv .venv", "pip install -q -r requirements.txt", "pip install -q -U 'jax[tpu]'"]
  positions = [setup.find(s) for s in steps]
  assert -1 not in positions and positions == sorted(positions), setup

  # The job: the default command, the overrides each one intact word, detached, logged.
  remote = flag(run, "--command")
  words = shlex.split(remote)
  job = ["python", "-m", "agpo_jax.main", "--config=configs/x.py", "--workdir=runs/exp 1",
         "--config.distributed.initialize=True", *OVERRIDES]
  i = words.index("python")
  assert words[i:i + len(job)] == job
  assert words[i - 2:i] == ["setsid", "nohup"]
  assert words[i + len(job):i + len(job) + 2] == [">>", "$log"]
  assert "log=logs/worker-$h.log;" in words and "h=$(hostname);" in words


def test_no_create_uses_existing_tpu(env):
  for accelerator in ([], ["--accelerator", "v4-8"]):
    cmds = dry(env, "all", "--no-create", *accelerator, *BASE, "--", "--config.seed=3")
    assert [verb(c) for c in cmds] == ["git", "scp", "ssh", "ssh", "ssh"]
    assert "--config.seed=3" in shlex.split(flag(cmds[-1], "--command"))


def test_default_run_command(env):
  (run,) = dry(env, "run", *BASE)
  assert verb(run) == "ssh" and flag(run, "--worker") == "all"
  assert ("python -m agpo_jax.main --config=configs/default.py --workdir=runs/default "
          "--config.distributed.initialize=True >> $log" in flag(run, "--command"))


def test_create_reuses_a_ready_tpu_and_creates_a_missing_one(env):
  env["FAKE_TPU_STATE"] = "READY"
  proc = launch(env, "create", *BASE, "--accelerator", "v4-8")
  assert [verb(c) for c in gcloud_calls(env)] == ["describe"]
  assert "already exists" in proc.stderr

  env["FAKE_TPU_STATE"] = "PREEMPTED"
  proc = launch(env, "create", *BASE, "--accelerator", "v4-8", ok=False)
  assert proc.returncode != 0 and "PREEMPTED" in proc.stderr

  del env["FAKE_TPU_STATE"]
  pathlib.Path(env["GCLOUD_CALLS"]).unlink()
  proc = launch(env, "create", *BASE, "--accelerator", "v4-8", "--preemptible")
  calls = gcloud_calls(env)
  assert [verb(c) for c in calls] == ["describe", "create"]
  assert calls == printed(proc)  # what runs is what is printed
  assert "--preemptible" in calls[1]


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_setup_runs_what_it_prints_and_removes_the_tarball(env):
  proc = launch(env, "setup", *BASE)
  cmds = printed(proc)
  assert [verb(c) for c in cmds] == ["git", "scp", "ssh", "ssh"]
  assert gcloud_calls(env) == cmds[1:]
  tarball = cmds[0][cmds[0].index("-o") + 1]
  assert pathlib.Path(tarball).parent == pathlib.Path(env["TMPDIR"])
  assert not os.listdir(env["TMPDIR"])  # removed on exit


@pytest.mark.parametrize("accelerator, runtime", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-128", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e")])
def test_runtime_follows_the_accelerator(env, accelerator, runtime):
  create = dry(env, "create", *BASE, "--accelerator", accelerator)[1]
  assert flag(create, "--version") == runtime
  create = dry(env, "create", *BASE, f"--accelerator={accelerator}", "--runtime=my-image")[1]
  assert flag(create, "--version") == "my-image"


def test_git_url_clones_on_the_workers(env):
  cmds = dry(env, "setup", *BASE, "--git-url", "https://example.com/a b.git", "--git-ref", "v1")
  assert [verb(c) for c in cmds] == ["ssh", "ssh"]
  clone = shlex.split(flag(cmds[0], "--command"))
  assert clone[clone.index("fetch"):clone.index("fetch") + 4] == [
      "fetch", "-q", "https://example.com/a b.git", "v1"]
  assert "FETCH_HEAD" in clone and flag(cmds[0], "--worker") == "all"
  assert "requirements.txt" in flag(cmds[1], "--command")


def test_worktree_tarball_excludes_venvs_and_runs(env):
  tar = dry(env, "setup", *BASE, "--worktree")[0]
  assert tar[:3] == ["tar", "-C", str(ROOT)] and tar[-1] == "."
  for excluded in ("./.git", "./.venv", "./runs"):
    assert f"--exclude={excluded}" in tar


def test_logs_target_one_worker_or_all(env):
  (tail,) = dry(env, "logs", *BASE, "--worker=2")
  assert verb(tail) == "ssh" and flag(tail, "--worker") == "2"
  assert "tail -n 50 logs/worker-$h.log" in flag(tail, "--command")
  (tail,) = dry(env, "logs", *BASE, "--worker", "3", "--lines", "7", "--follow")
  assert flag(tail, "--worker") == "3" and "tail -n 7 -F logs/" in flag(tail, "--command")
  (tail,) = dry(env, "logs", *BASE)
  assert flag(tail, "--worker") == "all"
  mkdir, scp = dry(env, "logs", *BASE, "--worker=2", "--fetch", "out/logs")
  assert mkdir == ["mkdir", "-p", "out/logs"]
  assert scp[:8] == GCLOUD + ["scp", "--recurse", "tpu-a:agpo_jax/logs", "out/logs"]
  assert flag(scp, "--worker") == "2"


def test_stop_and_delete(env):
  (stop,) = dry(env, "stop", *BASE, "--worker=1")
  assert flag(stop, "--worker") == "1" and "kill -TERM --" in flag(stop, "--command")
  (delete,) = dry(env, "delete", *BASE)
  assert delete[:6] == GCLOUD + ["delete", "tpu-a"] and "--quiet" not in delete
  (delete,) = dry(env, "delete", *BASE, "--yes")
  assert "--quiet" in delete


@pytest.mark.parametrize("args, message", [
    (["run", "--name", "tpu-a"], "--zone is required"),
    (["run", "--zone", "z"], "--name is required"),
    (["launch", *BASE], "unknown command 'launch'"),
    ([*BASE], "no command given"),
    (["create", *BASE], "--accelerator is required"),
    (["create", *BASE, "--accelerator", "v4-8", "--spot", "--preemptible"], "exclusive"),
    (["run", *BASE, "--config.seed=1"], "go after '--'"),
    (["logs", *BASE, "--", "--config.seed=1"], "only 'run' and 'all'"),
    (["logs", *BASE, "--worker", "two"], "--worker must be"),
    (["logs", *BASE, "--fetch", "d"], "--worker=i"),
    (["run", *BASE, "--zone"], "--zone needs a value"),
    (["run", "--name", "My_TPU", "--zone", "z"], "is not a TPU name"),
    (["run", *BASE, "--bogus"], "unknown option '--bogus'"),
    (["all", *BASE, "--no-create=yes"], "takes no value"),
])
def test_bad_input_is_named(env, args, message):
  for dry_flag in ([], ["--dry-run"]):
    proc = launch(env, *dry_flag, *args, ok=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert proc.stdout == ""
  assert not pathlib.Path(env["GCLOUD_CALLS"]).exists()


def test_help(env):
  proc = launch(env, "--help")
  assert proc.stdout.startswith("Usage: launch_tpu.sh")
  assert not pathlib.Path(env["GCLOUD_CALLS"]).exists()


# --------------------------------------------------------------------------- on a worker

FAKE_PYTHON311 = r"""#!/bin/bash
# `python3.11 -m venv .venv`: a venv whose python records pip calls and runs a fake job.
[ "$1 $2 $3" = "-m venv .venv" ] || exit 1
mkdir -p .venv/bin
printf 'PATH="%s/.venv/bin:$PATH"\n' "$PWD" > .venv/bin/activate
cat > .venv/bin/python <<'EOF'
#!/bin/bash
if [ "$1 $2" = "-m pip" ]; then shift 2; echo "$*" >> "$HOME/pip.log"; exit 0; fi
if [ "$1" = "-c" ]; then echo "jax fake"; exit 0; fi
printf '%s\0' "$@" > "$HOME/job_argv"
echo "job says hello"
exec sleep 60
EOF
chmod +x .venv/bin/python
"""


def _wait_for(predicate, timeout=10.0):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.02)


def test_remote_commands_work_on_a_simulated_worker(env, tmp_path):
  """The setup, run, logs and stop command strings, executed by bash in a fake worker home."""
  home = tmp_path / "home"
  home.mkdir()
  (tmp_path / "bin" / "python3.11").write_text(FAKE_PYTHON311)
  (tmp_path / "bin" / "python3.11").chmod(0o755)
  code = tmp_path / "code"
  code.mkdir()
  (code / "requirements.txt").write_text("numpy\n")
  with tarfile.open(home / "agpo_jax-code.tar.gz", "w:gz") as tar:
    tar.add(code / "requirements.txt", arcname="requirements.txt")
  worker_env = dict(env, HOME=str(home))

  def on_worker(argv):
    return subprocess.run(["bash", "-c", flag(argv, "--command")], cwd=home, env=worker_env,
                          capture_output=True, text=True, timeout=60, check=False)

  _, _, extract, install, run = dry(env, "all", "--no-create", *BASE, "--config",
                                    "configs/x.py", "--", *OVERRIDES)
  for step in (extract, install):
    proc = on_worker(step)
    assert proc.returncode == 0, proc.stderr
  assert (home / "agpo_jax" / "requirements.txt").exists()
  assert not (home / "agpo_jax-code.tar.gz").exists()
  assert (home / "pip.log").read_text().splitlines() == [
      "install -q -U pip", "install -q -r requirements.txt", "install -q -U jax[tpu]"]

  host = subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
  log = home / "agpo_jax" / "logs" / f"worker-{host}.log"
  pidfile = home / "agpo_jax" / "logs" / f"worker-{host}.pid"
  pid = None
  try:
    proc = on_worker(run)  # returns at once: the job is detached
    assert proc.returncode == 0, proc.stderr
    assert "started pid" in proc.stdout
    pid = int(pidfile.read_text())
    _wait_for(lambda: (home / "job_argv").exists() and "hello" in log.read_text())
    argv = (home / "job_argv").read_text().split("\0")[:-1]
    assert argv == ["-m", "agpo_jax.main", "--config=configs/x.py", "--workdir=runs/default",
                    "--config.distributed.initialize=True", *OVERRIDES]
    assert log.read_text().startswith("=== ")
    assert os.getpgid(pid) == pid  # its own process group (setsid), so stop reaches it all

    again = on_worker(run)
    assert again.returncode != 0 and "already running" in again.stderr

    (tail,) = dry(env, "logs", *BASE, "--worker=0")
    assert f"[{host}] job says hello" in on_worker(tail).stdout

    (stop,) = dry(env, "stop", *BASE)
    assert "sent SIGTERM" in on_worker(stop).stdout

    def gone():
      try:
        os.kill(pid, 0)
      except ProcessLookupError:
        return True
      # A zombie until reaped by init: also gone for our purposes.
      return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    _wait_for(gone)
    assert "no job running" in on_worker(stop).stdout
  finally:
    if pid is not None:
      try:
        os.killpg(pid, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        pass
