"""The process pool: the callback contract, hard timeouts, crashes, adversarial input, shutdown."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from agpo_jax.verifiers import (
    CORRECT,
    ERROR,
    INCORRECT,
    STATUSES,
    TIMEOUT,
    UNPARSEABLE,
    Reference,
    VerifierPool,
    default_num_workers,
    InlineVerifier,
    make_verifier,
)
from agpo_jax.defaults import verifier_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 3.0
# Shared CI machines are noisy: a bound is the per-item timeout plus this much.
MARGIN_S = 6.0


@pytest.fixture(scope="module")
def pool():
  with VerifierPool(
      num_workers=2, timeout_s=TIMEOUT_S, math_verify_timeout_s=1, enable_test_hooks=True
  ) as pool:
    yield pool


@contextlib.contextmanager
def _fails_after(seconds: float):
  """Turns a hang (say, a parent that no longer kills stuck workers) into a test failure."""

  def on_alarm(signum, frame):
    raise TimeoutError(f"the pool did not answer within {seconds}s")

  previous = signal.signal(signal.SIGALRM, on_alarm)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def _is_gone(pid: int) -> bool:
  """True once the process no longer exists, not even as a zombie."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  return False


def test_callback_contract_and_stats(pool):
  completions = ["\\boxed{0.5}", "The answer is 3.", "#### 1,000", "\\boxed{4}", "no answer"]
  references = [Reference("\\frac{1}{2}"), Reference("3"), Reference("1000"), "5", Reference("1")]
  rewards, statuses = pool(completions, references)
  assert isinstance(rewards, np.ndarray) and rewards.dtype == np.float32 and rewards.shape == (5,)
  np.testing.assert_array_equal(rewards, [1, 1, 1, 0, 0])
  assert statuses == [CORRECT, CORRECT, CORRECT, INCORRECT, UNPARSEABLE]
  stats = pool.grade(completions, references).stats
  counts = {s: stats[s] for s in STATUSES}
  assert counts == {CORRECT: 3, INCORRECT: 1, UNPARSEABLE: 1, TIMEOUT: 0, ERROR: 0}
  assert stats["num_items"] == 5 and stats["worker_restarts"] == 0
  assert stats["seconds"] > 0 and stats["items_per_s"] > 0
  assert stats["mean_reward"] == pytest.approx(0.6)


def test_grade_returns_extracted_answers_in_order(pool):
  completions = [f"\\boxed{{\\dfrac{{{i}}}{{7}}}}" for i in range(1, 40)]
  grades = pool.grade(completions, [Reference(f"\\frac{{{i}}}{{7}}") for i in range(1, 40)])
  assert [g.answer for g in grades] == [f"\\frac{{{i}}}{{7}}" for i in range(1, 40)]
  assert all(g.status == CORRECT for g in grades)


def test_label_and_exact_kinds(pool):
  rewards, _ = pool(
      ["\\boxed{Relevant}", "\\boxed{Relevant}", "irrelevant"],
      [Reference("relevant", kind) for kind in ("label", "exact", "label")],
  )
  np.testing.assert_array_equal(rewards, [1, 0, 0])


def test_number_kind_grades_as_in_process(pool):
  completions = ["43 - 32 = 11", "\\boxed{1,024}", "so -5", "twelve"]
  references = [Reference(gold, "number") for gold in ("11", "1024", "5", "12")]
  rewards, statuses = pool(completions, references)
  np.testing.assert_array_equal(rewards, [1, 1, 0, 0])
  inline = InlineVerifier("exact")(completions, references)
  np.testing.assert_array_equal(inline[0], rewards)
  assert inline[1] == statuses == ["correct", "correct", "incorrect", "unparseable"]


def test_bad_arguments_are_refused(pool):
  with pytest.raises(ValueError, match="2 completions but 1 references"):
    pool(["a", "b"], [Reference("1")])
  with pytest.raises(ValueError, match="unknown reference kind"):
    pool(["a"], [Reference("1", "python")])
  with pytest.raises(TypeError):
    pool([None], [Reference("1")])
  with pytest.raises(ValueError, match="start_method"):
    VerifierPool(1, start_method="fork")


def test_test_hooks_need_the_constructor_flag():
  with VerifierPool(num_workers=1, timeout_s=TIMEOUT_S) as plain_pool:
    with pytest.raises(ValueError, match="unknown reference kind"):
      plain_pool(["x"], [Reference("", "_test_crash")])


def test_pool_survives_crashes_and_hangs(pool):
  hooks = ["_test_crash", "_test_segfault", "_test_hang"]
  completions, references = [], []
  for hook in hooks:
    completions += ["\\boxed{2}", "x"]
    references += [Reference("2"), Reference("", hook)]
  completions.append("\\boxed{3}")
  references.append(Reference("3"))
  pids_before = set(pool.worker_pids)
  with _fails_after(120):
    verdicts = pool.grade(completions, references)
  assert verdicts.statuses == [CORRECT, ERROR, CORRECT, ERROR, CORRECT, TIMEOUT, CORRECT]
  assert verdicts.stats["worker_restarts"] == 3
  assert len(set(pool.worker_pids) - pids_before) >= 1
  # Still a full pool afterwards.
  rewards, statuses = pool(["\\boxed{1}"] * 4, ["1"] * 4)
  assert statuses == [CORRECT] * 4


def test_hung_worker_with_large_items_behind_it(pool):
  # Items queued behind a hung one must neither block the parent nor be lost.
  pool.wait_until_ready()
  prose = "Some reasoning. " * 2_500  # 40 kB, 1 MB: both bigger than a small pipe buffer
  completions = ["x", prose + "\\boxed{7}", prose * 25 + "\\boxed{8}", "\\boxed{9}"]
  references = [Reference("", "_test_hang"), "7", "8", "9"]
  with _fails_after(120):
    _, statuses = pool(completions, references)
  assert statuses == [TIMEOUT, CORRECT, CORRECT, CORRECT]


def test_interrupted_call_leaves_no_stale_answers(pool):
  pool.wait_until_ready()
  slow = "\\boxed{9^{9^{9^{9}}}}"  # about a second until Math-Verify's own guard gives up
  with pytest.raises(TimeoutError), _fails_after(0.3):
    pool([slow, slow], ["5", "5"])
  _, statuses = pool(["\\boxed{1}", "\\boxed{2}"], ["1", "2"])
  assert statuses == [CORRECT, CORRECT]  # not the slow items' late 'timeout'


ADVERSARIAL = [
    # (name, completion, gold, allowed statuses)
    ("power tower", "\\boxed{9^{9^{9^{9}}}}", "5", {TIMEOUT, INCORRECT}),
    ("huge factorial", "\\boxed{(10^{1000000000})!}", "5", {TIMEOUT, INCORRECT}),
    ("100k nested braces", "\\boxed{" + "{" * 10**5 + "1" + "}" * 10**5 + "}", "1", {UNPARSEABLE}),
    ("deep sqrt nest", "\\boxed{" + "\\sqrt{" * 150 + "2" + "}" * 150 + "}", "2",
     {UNPARSEABLE, TIMEOUT}),
    ("1 MB of open fractions", "\\left(\\frac{" * 80_000, "5", {UNPARSEABLE}),
    ("1 MB of answer phrases", "the answer is " * 75_000, "5", {UNPARSEABLE}),
    ("1 MB of markers", "#### " * 200_000, "5", {UNPARSEABLE}),
    ("1 MB of unclosed math spans", "the answer is " + "\\(" * 500_000, "5", {UNPARSEABLE}),
    ("unbalanced braces", "\\boxed{\\frac{1}{2}", "5", {UNPARSEABLE}),
    ("unbalanced closers", "}{}{\\boxed{{{2}", "2", {UNPARSEABLE}),
    ("empty box", "\\boxed{}", "5", {UNPARSEABLE}),
    ("lone surrogate", "\\boxed{\ud800}", "2", {UNPARSEABLE}),
    ("undecodable bytes, no answer", b"\xff\xfe\xfa\x80", "2", {UNPARSEABLE}),
]


@pytest.mark.parametrize(
    "name, completion, gold, allowed", ADVERSARIAL, ids=[a[0] for a in ADVERSARIAL]
)
def test_adversarial_input_returns_in_bounded_time(pool, name, completion, gold, allowed):
  pool.wait_until_ready()  # a previous kill may have left a worker starting
  start = time.monotonic()
  with _fails_after(120):
    (grade,) = pool.grade([completion], [Reference(gold)])
  elapsed = time.monotonic() - start
  assert grade.status in allowed, grade
  assert grade.reward == 0.0
  assert elapsed < TIMEOUT_S + MARGIN_S


def test_valid_answers_survive_hostile_surroundings(pool):
  megabyte_of_prose = "Let us think. " * 75_000
  completions = [
      megabyte_of_prose + "\\boxed{5}",
      b"\xff\xfe garbage \\boxed{2}",
      "\ud800\udfff junk \\boxed{3}",
  ]
  _, statuses = pool(completions, ["5", "2", "3"])
  assert statuses == [CORRECT] * 3


def test_model_output_is_never_executed(pool, tmp_path):
  marker = tmp_path / "pwned"
  payloads = [
      f"\\boxed{{__import__('os').system('touch {marker}')}}",
      f"#### __import__('os').system('touch {marker}')",
      f"The answer is eval(\"__import__('os').system('touch {marker}')\").",
      f"\\boxed{{exec(\"open('{marker}', 'w')\")}}",
  ]
  for kind in ("math", "exact", "label"):
    _, statuses = pool(payloads, [Reference("5", kind)] * len(payloads))
    assert all(s in (INCORRECT, UNPARSEABLE) for s in statuses), statuses
  assert not marker.exists()


def test_make_verifier_from_config():
  cfg = verifier_config()
  assert cfg.num_workers is None and default_num_workers() == min(os.cpu_count(), 8)
  cfg.num_workers = 1
  with make_verifier(cfg) as verifier:  # math: the isolated worker pool
    assert isinstance(verifier, VerifierPool) and len(verifier.worker_pids) == 1
    rewards, _ = verifier(["\\boxed{0.5}"], ["\\frac{1}{2}"])  # plain strings take cfg.kind
    assert rewards.tolist() == [1.0]
  cfg.kind = "label"
  with make_verifier(cfg) as verifier:  # string kinds: graded in-process
    assert isinstance(verifier, InlineVerifier)
    rewards, _ = verifier(["\\boxed{Yes}"], ["yes"])
    assert rewards.tolist() == [1.0]


def test_close_reaps_every_worker():
  with VerifierPool(num_workers=2, timeout_s=TIMEOUT_S) as closing_pool:
    pids = closing_pool.worker_pids
    closing_pool(["\\boxed{1}"], ["1"])
  assert all(_is_gone(pid) for pid in pids)
  with pytest.raises(RuntimeError, match="closed"):
    closing_pool(["\\boxed{1}"], ["1"])
  closing_pool.close()  # idempotent


def test_interpreter_exits_cleanly_without_close():
  script = textwrap.dedent(
      """
      from agpo_jax.verifiers import VerifierPool
      if __name__ == "__main__":
          pool = VerifierPool(num_workers=2, timeout_s=5)
          print(*pool.worker_pids, flush=True)
          print(pool(["\\\\boxed{1}"], ["1"])[1], flush=True)
      """
  )
  result = subprocess.run(
      [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr
  pid_line, status_line = result.stdout.strip().splitlines()
  assert status_line == "['correct']"
  deadline = time.monotonic() + 10
  while not all(_is_gone(int(pid)) for pid in pid_line.split()) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert all(_is_gone(int(pid)) for pid in pid_line.split())


_ORPHAN_PARENT = textwrap.dedent(
    """
    import sys, threading, time
    from agpo_jax.verifiers import Reference, VerifierPool
    if __name__ == "__main__":
        pools = []
        start = lambda: pools.append(
            VerifierPool(num_workers=1, timeout_s=600, enable_test_hooks=True))
        if sys.argv[1] == "thread":  # started from a thread that then ends
            thread = threading.Thread(target=start)
            thread.start()
            thread.join()
            time.sleep(0.5)
        else:
            start()
        (pool,) = pools
        pids = pool.worker_pids
        statuses = pool(["\\\\boxed{1}"], ["1"])[1]
        print(*pids, statuses == ["correct"] and pool.worker_pids == pids, flush=True)
        threading.Thread(target=pool, args=(["x"], [Reference("", "_test_hang")]),
                         daemon=True).start()  # the worker spins on a hung item
        time.sleep(0.5)
        print("busy", flush=True)
        time.sleep(600)
    """
)


def _is_running(pid: int) -> bool:
  """False once the process has exited (a zombie awaiting its reaper counts as exited)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rpartition(")")[2].split()[0] != "Z"
  except FileNotFoundError:
    return False
  except OSError:
    return not _is_gone(pid)


@pytest.mark.parametrize("started_from", ["main", "thread"])
def test_workers_die_with_a_killed_parent(started_from):
  """SIGKILL the process holding a pool whose worker is busy on a hung item: the worker must
  not outlive it (Linux: the kernel's parent-death signal; everywhere: the watcher thread,
  which alone covers a pool started from a thread that has ended)."""
  parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_PARENT, started_from], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
  pids = []
  try:
    with _fails_after(120):
      *pid_fields, intact = parent.stdout.readline().split()
      pids = [int(pid) for pid in pid_fields]
      assert parent.stdout.readline().strip() == "busy"
    assert intact == "True"  # the worker outlived the thread that started it, and grades
    assert pids and all(_is_running(pid) for pid in pids)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 2.5
    while any(_is_running(pid) for pid in pids) and time.monotonic() < deadline:
      time.sleep(0.05)
    assert not any(_is_running(pid) for pid in pids)
  finally:
    if parent.poll() is None:
      parent.kill()
      parent.wait()
    for pid in pids:
      if _is_running(pid):
        os.kill(pid, signal.SIGKILL)
