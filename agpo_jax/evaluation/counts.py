"""Per-problem count files: what pass@k / maj@k curves are recomputed from without re-sampling.

Format: JSON lines (UTF-8), one object per problem:

    {"id": str, "n": int, "c": int, "answers": [str | null, ...], "correct": [0 | 1, ...]}

``answers`` (the extracted final answers, null or "" when none could be extracted) and
``correct`` (the per-sample verdicts) are optional, but when present have length ``n``, and
``sum(correct) == c``. maj@k needs both. Other keys are kept as they are.

Writing is crash-safe. ``write_counts`` replaces the file atomically (temporary file +
``os.replace``). ``append_counts`` is for resumable chunked evaluation: each call appends whole
lines and fsyncs them, so a killed process leaves at most one partial last line. That line is
dropped with a warning by ``read_counts`` and cut off by the next ``append_counts``; a
malformed line anywhere else is an error naming the file and line. A resuming evaluator
reads the file, skips the ids it holds and appends the rest.

Duplicate ids are an error (naming both lines), never "last wins": they mean two runs or a
mis-resumed run wrote into one file, and either copy could be the wrong one.
"""

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from agpo_jax.evaluation.passk import avg_at_n, default_ks, maj_at_k_curve, pass_at_k_curve

logger = logging.getLogger(__name__)

CountRecord = dict  # {"id", "n", "c", optional "answers", optional "correct", extra keys}


def make_record(
    problem_id: str,
    correct: Sequence[int | bool],
    answers: Sequence[str | None] | None = None,
    **extra,
) -> CountRecord:
    """A validated record from one problem's per-sample verdicts (and extracted answers)."""
    record = {"id": problem_id, "n": len(correct), "c": int(sum(bool(v) for v in correct))}
    if answers is not None:
        record["answers"] = list(answers)
    record["correct"] = [int(bool(v)) for v in correct]
    return validate_record({**record, **extra})


def validate_record(record: Mapping) -> CountRecord:
    """Checks one record against the format; returns a copy with verdicts as 0/1 ints."""
    if not isinstance(record, Mapping):
        raise ValueError(f"a count record must be a JSON object, got {type(record).__name__}")
    missing = [key for key in ("id", "n", "c") if key not in record]
    if missing:
        raise ValueError(f"count record lacks {missing}")
    problem_id, n, c = record["id"], record["n"], record["c"]
    if not isinstance(problem_id, str):
        raise ValueError(f"id must be a string, got {problem_id!r}")
    if not _is_int(n) or not _is_int(c) or n < 1 or not 0 <= c <= n:
        raise ValueError(
            f"record {problem_id!r}: need integers n >= 1 and 0 <= c <= n, got n={n!r}, c={c!r}"
        )
    out = dict(record)
    if record.get("answers") is not None:
        answers = record["answers"]
        if not isinstance(answers, list) or len(answers) != n:
            raise ValueError(f"record {problem_id!r}: answers must be a list of length n={n}")
        if not all(a is None or isinstance(a, str) for a in answers):
            raise ValueError(f"record {problem_id!r}: answers must be strings or null")
    if record.get("correct") is not None:
        correct = record["correct"]
        if not isinstance(correct, list) or len(correct) != n:
            raise ValueError(f"record {problem_id!r}: correct must be a list of length n={n}")
        if not all(v in (0, 1) and not isinstance(v, float) for v in correct):
            raise ValueError(f"record {problem_id!r}: correct must hold only 0/1")
        if sum(correct) != c:
            raise ValueError(f"record {problem_id!r}: sum(correct)={sum(correct)} but c={c}")
        out["correct"] = [int(v) for v in correct]
    return out


def write_counts(path: str | os.PathLike, records: Iterable[Mapping]) -> None:
    """Writes all records, replacing ``path`` atomically (readers see the old or the new file)."""
    path = Path(path)
    records = [validate_record(r) for r in records]
    _check_unique_ids([r["id"] for r in records], path=path)
    data = _encode(records)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def append_counts(path: str | os.PathLike, records: Iterable[Mapping]) -> None:
    """Appends records as whole lines, flushed and fsync'd; creates the file if needed.

    A partial last line left by a killed writer is cut off first (or, if it is a complete
    record that only lacks its newline, terminated), so the new lines never merge with it.
    Ids are not checked against the file here (that would re-read it on every chunk);
    ``read_counts`` rejects duplicates.
    """
    data = _encode([validate_record(r) for r in records])
    with open(path, "ab+") as f:
        _repair_tail(f, path)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_counts(path: str | os.PathLike) -> list[CountRecord]:
    """All records of a count file, in file order.

    A last line without a newline that does not parse is the remnant of a killed writer: it
    is dropped and logged. Any other malformed or invalid line raises ValueError naming the
    file and line number, as do duplicate ids.
    """
    raw = Path(path).read_bytes()
    lines = raw.split(b"\n")  # the piece after the last newline is b"" for a complete file
    records, first_line_of = [], {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            if lineno == len(lines):  # text after the last newline: an unfinished write
                logger.warning(
                    "%s:%d: dropped a truncated last line (%d bytes)", path, lineno, len(line)
                )
                continue
            raise ValueError(f"{path}:{lineno}: malformed JSON: {err}") from None
        try:
            record = validate_record(obj)
        except ValueError as err:
            raise ValueError(f"{path}:{lineno}: invalid count record: {err}") from None
        problem_id = record["id"]
        if problem_id in first_line_of:
            raise ValueError(
                f"{path}:{lineno}: duplicate id {problem_id!r} "
                f"(first on line {first_line_of[problem_id]})"
            )
        first_line_of[problem_id] = lineno
        records.append(record)
    return records


def summarize(records: Sequence[Mapping], ks: Sequence[int] | None = None) -> dict:
    """The JSON summary of one benchmark's count records.

    Returns ``{"num_problems", "n", "avg@n", "pass@k": {k: value}, "maj@k": {k: value}}`` with
    ``n`` the smallest per-problem sample count (ks default to ``default_ks(n)``). ``maj@k``
    is ``{}`` unless every record has both ``answers`` and ``correct``. Values are fractions in
    [0, 1]; ``json.dumps`` turns the integer ks into strings.
    """
    if not records:
        raise ValueError("summarize needs at least one record")
    records = [validate_record(r) for r in records]
    _check_unique_ids([r["id"] for r in records], path=None)
    ns = [r["n"] for r in records]
    cs = [r["c"] for r in records]
    n = min(ns)
    ks = default_ks(n) if ks is None else [int(k) for k in ks]
    with_votes = all(r.get("answers") is not None and r.get("correct") is not None for r in records)
    return {
        "num_problems": len(records),
        "n": n,
        "avg@n": avg_at_n(ns, cs),
        "pass@k": pass_at_k_curve(ns, cs, ks),
        "maj@k": (
            maj_at_k_curve([r["answers"] for r in records], [r["correct"] for r in records], ks)
            if with_votes
            else {}
        ),
    }


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _encode(records: Iterable[Mapping]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def _check_unique_ids(problem_ids: Sequence[str], path) -> None:
    seen = set()
    for problem_id in problem_ids:
        if problem_id in seen:
            where = f" writing {path}" if path is not None else ""
            raise ValueError(f"duplicate problem id {problem_id!r}{where}")
        seen.add(problem_id)


def _is_parse_error(line: bytes) -> bool:
    try:
        json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return True
    return False


def _repair_tail(f, path) -> None:
    """Makes a file opened "ab+" end with a newline (or be empty) before appending."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    cut, pos = 0, size  # find the start of the last line, reading back in blocks
    while pos > 0:
        start = max(0, pos - (1 << 16))
        f.seek(start)
        newline = f.read(pos - start).rfind(b"\n")
        if newline >= 0:
            cut = start + newline + 1
            break
        pos = start
    f.seek(cut)
    tail = f.read()
    if _is_parse_error(tail):
        logger.warning(
            "%s: cut off a truncated last line (%d bytes) before appending", path, len(tail)
        )
        f.truncate(cut)
    else:
        f.write(b"\n")  # "ab+" writes always go to the end


def _fsync_dir(directory: Path) -> None:
    """Makes a rename durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
