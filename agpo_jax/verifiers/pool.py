"""Verification in long-lived worker processes, with a hard per-item deadline.

Each worker owns one `MathGrader` (Math-Verify's first parse in a process costs ~130 ms, so
workers live for the whole run) and talks to the parent over its own pipe, one item at a time.
The parent stamps each item with a wall-clock deadline when it hands it out; a worker that
misses it is killed (SIGKILL) and replaced, a worker that dies is replaced, and either way only
that item is lost (status `timeout` or `error`) while the others keep scoring. Signal-based
timeouts are not the bound here: they do not work off the main thread, and a C extension
stuck in a big-integer power never returns to the interpreter to notice them.

Workers are started with 'spawn' (or 'forkserver'), never 'fork': forking a parent that has
initialised JAX's thread pools deadlocks.

Workers die with their parent, even mid-item (a worker stuck in a hung parse never reads the
closed pipe): on Linux the kernel kills them when the parent exits (`PR_SET_PDEATHSIG`), and
everywhere a watcher thread in the worker exits it once its parent process is gone.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import weakref
from multiprocessing import connection
from typing import Sequence

import numpy as np

from agpo_jax.verifiers.grades import (
    ERROR,
    REFERENCE_KINDS,
    TIMEOUT,
    Grade,
    Reference,
    Verdicts,
)
from agpo_jax.verifiers.labels import STRING_KINDS, grade_string
from agpo_jax.verifiers.math_answers import MathGrader  # Math-Verify itself loads in workers

# Reference kinds that make a worker misbehave on purpose, accepted only by a pool built with
# enable_test_hooks=True: a reference comes from the task, never from model output.
TEST_HOOK_KINDS = ("_test_crash", "_test_segfault", "_test_hang")

_STARTUP_FAILURE = (
    "verifier workers keep dying during startup (see their stderr above). With 'spawn' each "
    "worker re-imports the caller's main module: a script must start work under "
    "`if __name__ == '__main__':`."
)


def default_num_workers() -> int:
  return max(1, min(os.cpu_count() or 1, 8))


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------


def _as_text(completion: str | bytes) -> str:
  """Model output as valid Unicode: undecodable bytes and lone surrogates become U+FFFD."""
  if isinstance(completion, bytes):
    return completion.decode("utf-8", errors="replace")
  try:
    completion.encode("utf-8")
    return completion
  except UnicodeEncodeError:
    return completion.encode("utf-8", errors="replace").decode("utf-8")


def _grade_one(
    grader: MathGrader, completion, gold: str, kind: str, options: dict, test_hooks: bool
) -> Grade:
  try:
    text = _as_text(completion)
    if kind == "math":
      grade = grader.grade(text, gold)
    elif kind in STRING_KINDS:
      grade = grade_string(text, gold, kind, max_answer_chars=options["max_answer_chars"])
    elif test_hooks and kind == "_test_crash":
      os._exit(3)
    elif test_hooks and kind == "_test_segfault":
      os.kill(os.getpid(), signal.SIGSEGV)
    elif test_hooks and kind == "_test_hang":
      while True:
        pass
    else:
      grade = Grade(0.0, ERROR, "", f"unknown reference kind {kind!r}")
  except BaseException as e:  # noqa: BLE001  (MemoryError under the rlimit, a stray alarm)
    if isinstance(e, SystemExit):
      raise
    grade = Grade(0.0, ERROR, "", f"{type(e).__name__}: {str(e)[:200]}")
  limit = options["max_answer_chars"]
  return grade._replace(answer=grade.answer[:limit], detail=grade.detail[:500])


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# How often the watcher thread checks that the parent is alive.
PARENT_POLL_S = 0.2


def _watch_parent(parent_pid: int) -> None:
  """Kills this process once its parent is gone (it is then reparented: `getppid` changes)."""
  while os.getppid() == parent_pid:
    time.sleep(PARENT_POLL_S)
  os.kill(os.getpid(), signal.SIGKILL)


def _exit_with_parent(parent_pid: int | None, kernel_signal: bool) -> None:
  """Makes this worker die when its parent process does.

  Args:
    parent_pid: the parent's pid as the parent saw it (None: whatever `getppid` says now,
      for a worker started through a fork server).
    kernel_signal: ask Linux for SIGKILL when the parent exits (`PR_SET_PDEATHSIG`). The
      kernel sends it when the *thread* that started the worker exits, so the parent asks for
      it only from its main thread; the watcher thread covers the rest (and other systems). The
      watcher needs the GIL, which a C extension stuck in one call may hold: the kernel signal
      does not.
  """
  if kernel_signal and sys.platform.startswith("linux"):
    try:
      libc = ctypes.CDLL(None, use_errno=True)
      libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the watcher alone
      pass
  if parent_pid is None:
    parent_pid = os.getppid()
  elif os.getppid() != parent_pid:  # the parent died before the signal was asked for
    os.kill(os.getpid(), signal.SIGKILL)
  threading.Thread(target=_watch_parent, args=(parent_pid,), name="agpo-verifier-parent-watch",
                   daemon=True).start()


def _worker_main(conn, options: dict, memory_limit_mb: int, test_hooks: bool,
                 parent_pid: int | None = None, kernel_signal: bool = False) -> None:
  _exit_with_parent(parent_pid, kernel_signal)
  # Ctrl-C reaches the whole process group; the parent decides when workers stop.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  grader = MathGrader(**options)
  grader.equivalent("0.5", "\\frac{1}{2}")  # pay Math-Verify's first-call cost before work
  if memory_limit_mb > 0:
    import resource

    limit = memory_limit_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  conn.send(("ready", os.getpid()))
  while True:
    try:
      message = conn.recv()
    except (EOFError, OSError):  # the parent is gone
      return
    if message is None:
      return
    task_id, completion, gold, kind = message
    conn.send((task_id, _grade_one(grader, completion, gold, kind, options, test_hooks)))


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Worker:
  process: multiprocessing.process.BaseProcess
  conn: connection.Connection
  started: float
  ready: bool = False
  # Items handed out, oldest first: the head is being graded and has the deadline; the one
  # behind it waits in the socket so that the worker never idles between items.
  tasks: collections.deque = dataclasses.field(default_factory=collections.deque)
  deadline: float = math.inf


def _stop_worker(worker: _Worker, grace_s: float) -> None:
  if worker.tasks:  # possibly hung: no point asking nicely
    worker.process.kill()
  worker.process.join(grace_s)
  if worker.process.is_alive():
    worker.process.kill()
    worker.process.join()
  worker.conn.close()
  worker.process.close()  # its sentinel fd: a long run replaces many workers


def _shutdown(workers: list[_Worker]) -> None:
  for worker in workers:
    try:
      worker.conn.send(None)
    except (OSError, ValueError):
      pass
  deadline = time.monotonic() + 5.0
  for worker in workers:
    _stop_worker(worker, max(0.0, deadline - time.monotonic()))
  workers.clear()


class VerifierPool:
  """The verifier callback: `pool(completions, references) -> (rewards, statuses)`.

  Args:
    num_workers: worker processes (default min(cpu_count, 8)).
    timeout_s: hard wall-clock limit per item, from hand-out to answer, enforced by killing
      the worker.
    default_kind: the kind given to references passed as plain strings.
    math_verify_timeout_s: Math-Verify's inner `signal.alarm` guard (whole seconds); cheaper
      than a kill when it works.
    max_answer_chars: longer extracted answers are `unparseable` without parsing.
    string_fast_path: accept equal normalised strings without calling Math-Verify.
    cache_size: parsed answers and verdicts each worker keeps (see `MathGrader`).
    start_method: 'spawn' or 'forkserver' ('fork' is refused: it deadlocks under JAX).
    memory_limit_mb: address-space limit per worker (RLIMIT_AS); 0 disables it.
    startup_timeout_s: a worker not ready within this is replaced.
    enable_test_hooks: accept the `TEST_HOOK_KINDS` references (tests only).

  `grade` returns `Verdicts`: the grades with the call's stats (the count of each status,
  `seconds`, `items_per_s`, `mean_reward`, `worker_restarts`) for the training loop to log.
  """

  def __init__(
      self,
      num_workers: int | None = None,
      timeout_s: float = 10.0,
      *,
      default_kind: str = "math",
      math_verify_timeout_s: int = 3,
      max_answer_chars: int = 1000,
      string_fast_path: bool = True,
      cache_size: int = 4096,
      start_method: str = "spawn",
      memory_limit_mb: int = 4096,
      startup_timeout_s: float = 120.0,
      enable_test_hooks: bool = False,
  ):
    if start_method not in ("spawn", "forkserver"):
      raise ValueError(f"start_method must be 'spawn' or 'forkserver', got {start_method!r}")
    if default_kind not in REFERENCE_KINDS:
      raise ValueError(f"default_kind must be one of {REFERENCE_KINDS}, got {default_kind!r}")
    if timeout_s <= 0:
      raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
    if self.num_workers < 1:
      raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    self.timeout_s = float(timeout_s)
    self.default_kind = default_kind
    self.startup_timeout_s = float(startup_timeout_s)
    self._kinds = REFERENCE_KINDS + (TEST_HOOK_KINDS if enable_test_hooks else ())
    self._options = dict(
        math_verify_timeout_s=int(math_verify_timeout_s),
        max_answer_chars=int(max_answer_chars),
        string_fast_path=bool(string_fast_path),
        cache_size=int(cache_size),
    )
    self._memory_limit_mb = int(memory_limit_mb)
    self._test_hooks = bool(enable_test_hooks)
    self._start_method = start_method
    self._context = multiprocessing.get_context(start_method)
    self._workers: list[_Worker] = []
    # Closes the workers when the pool is garbage-collected or at interpreter exit.
    self._finalizer = weakref.finalize(self, _shutdown, self._workers)
    self._restarts = 0
    self._socket_buffer_bytes = 0  # what a send can queue without the worker reading
    for _ in range(self.num_workers):
      self._workers.append(self._start_worker())
    self.wait_until_ready()

  # -- lifecycle -------------------------------------------------------------------------

  def _start_worker(self) -> _Worker:
    parent_conn, child_conn = self._context.Pipe(duplex=True)
    spawned = self._start_method == "spawn"  # else the fork server is the worker's parent
    process = self._context.Process(
        target=_worker_main,
        args=(child_conn, self._options, self._memory_limit_mb, self._test_hooks,
              os.getpid() if spawned else None,
              not spawned or threading.current_thread() is threading.main_thread()),
        name="agpo-verifier",
        daemon=True,
    )
    process.start()
    child_conn.close()
    if not self._socket_buffer_bytes:
      with socket.socket(fileno=os.dup(parent_conn.fileno())) as sock:
        self._socket_buffer_bytes = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    return _Worker(process=process, conn=parent_conn, started=time.monotonic())

  def _replace(self, worker: _Worker) -> None:
    _stop_worker(worker, grace_s=0.0)
    self._workers[self._workers.index(worker)] = self._start_worker()
    self._restarts += 1

  def wait_until_ready(self) -> None:
    """Blocks until every worker has started (replacements for killed ones start lazily)."""
    failures = 0
    while not all(worker.ready for worker in self._workers):
      failures += self._poll(timeout=1.0, results=None, pending=collections.deque())
      if failures > 2 * self.num_workers:
        self.close()
        raise RuntimeError(_STARTUP_FAILURE)

  @property
  def worker_pids(self) -> list[int]:
    return [worker.process.pid for worker in self._workers]

  def close(self) -> None:
    """Stops the workers (idempotent)."""
    self._finalizer()

  def __enter__(self) -> VerifierPool:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  # -- scheduling ------------------------------------------------------------------------

  def _poll(
      self, timeout: float, results: list[Grade | None] | None, pending: collections.deque
  ) -> int:
    """Waits up to `timeout` for workers, records results; returns startup failures seen.

    A worker that dies or misses its deadline is replaced; the item it was grading gets
    `error` or `timeout`, and the item queued behind it goes back to `pending`.
    """
    waitables = [w.conn for w in self._workers] + [w.process.sentinel for w in self._workers]
    connection.wait(waitables, timeout=max(0.0, timeout))
    failures = 0
    now = time.monotonic()
    for worker in list(self._workers):
      died = False
      try:
        while worker.conn.poll():
          task_id, payload = worker.conn.recv()
          if task_id == "ready":
            worker.ready = True
          elif results is not None and worker.tasks and task_id == worker.tasks[0]:
            results[worker.tasks.popleft()] = payload
            worker.deadline = time.monotonic() + self.timeout_s if worker.tasks else math.inf
      except (EOFError, OSError):
        died = True
      died = died or not worker.process.is_alive()
      if died or (worker.tasks and now >= worker.deadline):
        if worker.tasks and results is not None:
          head = worker.tasks.popleft()
          if died:
            detail = f"worker died (exit code {worker.process.exitcode})"
            results[head] = Grade(0.0, ERROR, "", detail)
          else:
            results[head] = Grade(0.0, TIMEOUT, "", f"killed after {self.timeout_s}s")
          pending.extendleft(reversed(worker.tasks))
          worker.tasks.clear()
        failures += died and not worker.ready
        self._replace(worker)
      elif not worker.ready and now - worker.started > self.startup_timeout_s:
        failures += 1
        self._replace(worker)
    return failures

  def _hand_out(self, worker: _Worker, pending: collections.deque, completions, refs) -> None:
    """Keeps up to two items with a ready worker (the second only if it cannot block us)."""
    while worker.ready and pending and len(worker.tasks) < 2:
      index = pending[0]
      message = (index, completions[index], refs[index].answer, refs[index].kind)
      if worker.tasks and not self._fits_in_socket(message):
        return  # a busy (maybe hung) worker would not drain it, and send() would block
      if not worker.tasks and not worker.process.is_alive():  # died idle: no item's fault
        self._replace(worker)
        return
      try:
        worker.conn.send(message)
      except (OSError, ValueError):  # died just now: the item goes to another worker
        pending.extendleft(reversed(worker.tasks))
        worker.tasks.clear()
        self._replace(worker)
        return
      pending.popleft()
      worker.tasks.append(index)
      if len(worker.tasks) == 1:
        worker.deadline = time.monotonic() + self.timeout_s

  def _fits_in_socket(self, message: tuple) -> bool:
    _, completion, gold, _ = message
    limit = self._socket_buffer_bytes // 4  # headroom for pickling and kernel accounting
    if len(completion) + len(gold) > limit:  # cheap reject before measuring bytes
      return False
    if isinstance(completion, str):
      completion = completion.encode("utf-8", "surrogatepass")
    return len(completion) + len(gold.encode("utf-8", "surrogatepass")) <= limit

  def _reference(self, reference: Reference | str) -> Reference:
    if isinstance(reference, str):
      reference = Reference(reference, self.default_kind)
    if not isinstance(reference, Reference):
      raise TypeError(f"references must be Reference or str, got {type(reference).__name__}")
    if reference.kind not in self._kinds:
      raise ValueError(
          f"unknown reference kind {reference.kind!r}; expected one of {REFERENCE_KINDS}"
      )
    return reference

  def grade(
      self, completions: Sequence[str | bytes], references: Sequence[Reference | str]
  ) -> Verdicts:
    """One `Grade` (reward, status, extracted answer) per completion, in order, with the
    call's stats."""
    if not self._finalizer.alive:
      raise RuntimeError("VerifierPool is closed")
    if len(completions) != len(references):
      raise ValueError(f"{len(completions)} completions but {len(references)} references")
    for completion in completions:
      if not isinstance(completion, (str, bytes)):
        raise TypeError(f"completions must be str or bytes, got {type(completion).__name__}")
    refs = [self._reference(r) for r in references]
    for worker in list(self._workers):
      if worker.tasks:  # left busy by an interrupted call: its answers are stale
        self._replace(worker)
    start = time.monotonic()
    restarts_before = self._restarts
    results: list[Grade | None] = [None] * len(completions)
    pending = collections.deque(range(len(completions)))
    startup_failures = 0
    while True:
      for worker in list(self._workers):
        self._hand_out(worker, pending, completions, refs)
      busy = [w.deadline for w in self._workers if w.tasks]
      if not busy and not pending:
        break
      wait_s = min(busy) - time.monotonic() if busy else 1.0
      startup_failures += self._poll(min(wait_s, 1.0), results, pending)
      if startup_failures > 2 * self.num_workers:
        raise RuntimeError(_STARTUP_FAILURE)
    seconds = time.monotonic() - start
    return Verdicts(results, seconds, self._restarts - restarts_before)  # type: ignore[arg-type]

  def __call__(
      self, completions: Sequence[str | bytes], references: Sequence[Reference | str]
  ) -> tuple[np.ndarray, list[str]]:
    """rewards [batch] float32 in [0, 1] and one status per completion (see `STATUSES`)."""
    verdicts = self.grade(completions, references)
    return verdicts.rewards, verdicts.statuses
