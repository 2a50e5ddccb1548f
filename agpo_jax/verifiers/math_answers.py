r"""Math answer checking: extract the final answer, normalise it, decide equivalence.

Pipeline for one completion (`MathGrader.grade`):

1. `extract_answer`: the last `\boxed{...}` / `\fbox{...}` (real brace matching, `\boxed 5`);
   if the completion has no box at all, the last GSM8K `#### n` line; then the last
   "the answer is ..." / "Answer: ..." phrase. A box that is present but unclosed (a truncated
   completion) yields no answer rather than falling back to older text.
2. `normalize_answer`: strip presentation (`$`, `\left`, `\text{}`, `\dfrac`, units, degrees,
   percent, thousands separators, a trailing period, `x = 3` -> `3`, `1e-8` -> `1\times10^{-8}`).
3. A string fast path (normalised strings equal -> correct), else Math-Verify: both answers are
   parsed from LaTeX to SymPy (`math_verify.parse`) and compared (`math_verify.verify`).

Nothing here evaluates model output as Python: LaTeX goes through Math-Verify's ANTLR grammar.
This module is pure CPU work with no hard time bound of its own (Math-Verify's `signal.alarm`
guards are an inner, best-effort bound); run it through `pool.VerifierPool` for a hard bound.
"""

from __future__ import annotations

import functools
import re
import threading

from agpo_jax.verifiers.grades import CORRECT, ERROR, INCORRECT, TIMEOUT, UNPARSEABLE, Grade

# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# A brace-matching token: an escaped character (`\{`, `\}`, `\\`) or a bare brace.
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)
_BARE_TOKEN = re.compile(r"[^\s$]+")  # the argument of `\boxed 5`
_GSM8K_ANSWER = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_PHRASE = re.compile(r"(?i)\banswer\s*(?:is|:|=)\s*:?")
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\s+I hope\b|;")
_PHRASE_WINDOW = 2000  # characters read after "answer is"
# "5 apples" after "the answer is": keep the number, drop the words.
_NUMBER_THEN_WORDS = re.compile(r"([-+]?[\d.,]*\d(?:\s*/\s*\d+)?)\s+[A-Za-z][A-Za-z\s]*")


def extract_boxed(text: str) -> str | None:
  r"""The content of the last `\boxed{...}` or `\fbox{...}` in `text`.

  Braces are matched (nested, escaped `\{ \}` ignored), and `\boxed 5` takes the next
  whitespace-delimited token. Returns None when there is no box or the last one is unclosed,
  '' for an empty box. Linear in `len(text)`.
  """
  last = None
  for last in _BOX_COMMAND.finditer(text):
    pass
  if last is None:
    return None
  pos = last.end()
  while pos < len(text) and text[pos].isspace():
    pos += 1
  if pos == len(text):
    return None
  if text[pos] != "{":
    token = _BARE_TOKEN.match(text, pos)
    return token.group(0) if token else None
  depth = 0
  for token in _BRACE_TOKEN.finditer(text, pos):
    if token.group(0) == "{":
      depth += 1
    elif token.group(0) == "}":
      depth -= 1
      if depth == 0:
        return text[pos + 1 : token.start()]
  return None


def _answer_after_phrase(text: str) -> str | None:
  last = None
  for last in _ANSWER_PHRASE.finditer(text):
    pass
  if last is None:
    return None
  # Bounded, so that the lazy patterns below cannot go quadratic on a megabyte of text.
  line = text[last.end() : last.end() + _PHRASE_WINDOW].split("\n", 1)[0].strip()
  span = _MATH_SPAN.search(line)
  if span and span.start() < 5:  # "... is $x$" rather than a formula later in the sentence
    return next(group for group in span.groups() if group is not None)
  line = _SENTENCE_END.split(line, 1)[0].strip().strip("*").strip()
  number = _NUMBER_THEN_WORDS.fullmatch(line)
  return number.group(1) if number else line


def extract_answer(text: str) -> str | None:
  r"""The final answer of a completion, or None when it states none.

  Order: the last `\boxed{}`/`\fbox{}`; if there is no box command at all, the last
  `#### n` (an explicit end marker), then the last "answer is ..." / "Answer: ...".
  """
  if _BOX_COMMAND.search(text):
    return extract_boxed(text)
  gsm8k = None
  for gsm8k in _GSM8K_ANSWER.finditer(text):
    pass
  if gsm8k is not None:
    return gsm8k.group(1).strip()
  return _answer_after_phrase(text)


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

_UNIT_WORDS = (
    "units?|square units|sq units|cm|mm|km|meters?|metres?|centimeters?|kilometers?|inch(?:es)?"
    "|feet|foot|ft|yards?|miles?|grams?|kg|pounds?|lbs?|ounces?|oz|dollars?|cents?|seconds?"
    "|sec|minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?|degrees?|mph|liters?|litres?"
    "|ml|gallons?"
)
_TEXT_COMMANDS = (
    r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mbox|operatorname)"
)
_UNIT_TEXT = r"\s*\{\s*~?\s*[A-Za-z][A-Za-z\s.]*\}"  # `{ cm}`, `{~m}`, `{square units}`
_SUBSTITUTIONS = [
    (re.compile(r"\\\$"), ""),  # a currency sign
    (re.compile(r"\$"), ""),
    (re.compile(r"\\displaystyle(?![A-Za-z])"), ""),
    (re.compile(r"\\(?:left|right)\s*\."), ""),
    (re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![A-Za-z])"), ""),
    (re.compile(r"\\!"), ""),
    (re.compile(r"\\[,;: ]|\\q?quad(?![A-Za-z])|~"), " "),
    (re.compile(r"(\d)\{,\}(?=\d{3}(?!\d))"), r"\1"),  # 1{,}000
    (re.compile(r"(\d)\.(?=\s*(?:[/,)\]}]|$))"), r"\1"),  # a bare decimal point: 1./3, (5., 2)
    (re.compile(r"\\[dt]frac(?![A-Za-z])"), r"\\frac"),
    # Units: trailing `\text{ cm}^2` after a number or a closing brace.
    (re.compile(r"(?<=[\d}])\s*" + _TEXT_COMMANDS + _UNIT_TEXT + r"(?:\^\{?\d\}?)?\s*$"), ""),
    (re.compile(r"(?<=[\d}])\s+(?:" + _UNIT_WORDS + r")(?:\^\{?\d\}?)?\s*$"), ""),
    # Degrees and percent.
    (re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|\\circ(?![A-Za-z])"), ""),
    (re.compile(r"°|\\degree(?![A-Za-z])"), ""),
    (re.compile(r"\s*(?:\\?%|\bpercent$)"), r"\\%"),
    # Argument-less shorthands: \frac12, \frac1{2}, \frac{1}2, \sqrt2.
    (re.compile(r"\\frac\s*(\d)\s*(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac\s*(\d)\s*\{"), r"\\frac{\1}{"),
    (re.compile(r"\\frac\s*\{([^{}]*)\}\s*(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\sqrt\s*(\d|[A-Za-z](?![A-Za-z]))"), r"\\sqrt{\1}"),
    # Single-character scripts: x_1 -> x_{1}, x^2 -> x^{2}.
    (re.compile(r"([_^])\s*([A-Za-z0-9])"), r"\1{\2}"),
    # Scientific notation.
    (re.compile(r"(\d)\s*\\cdot\s*10\s*\^"), r"\1\\times10^"),
    (re.compile(r"^([-+]?\d+(?:\.\d+)?)\s*[eE]\s*([-+]?\d+)$"), r"\1\\times10^{\2}"),
]
_ROW_SEPARATOR_STANDIN = "\ue000"  # a private-use character
_TEXT_WRAPPER = re.compile(_TEXT_COMMANDS + r"\s*\{([^{}]*)\}")
_ASSIGNMENT = re.compile(r"^\s*\\?[A-Za-z]+(?:_\{?[A-Za-z0-9]+\}?)?(?:\([A-Za-z]\))?\s*=\s*(.+)$")
_NUMBER = re.compile(r"^([-+]?)(\d{1,3}(?:[, ]\d{3})+|\d*)(?:\.(\d*))?$")
_CHOICE = re.compile(r"^\(([A-Z])\)$")
_WORDS = re.compile(r"^[A-Za-z]{3,}(?: [A-Za-z]+)*$")


def normalize_number(s: str) -> str:
  """`-1,024.50` -> `-1024.5`; anything that is not a plain number is returned as it is."""
  match = _NUMBER.match(s)
  if match is None or not (match.group(2) or match.group(3)):
    return s
  sign, integer, fraction = match.group(1), match.group(2), match.group(3) or ""
  integer = integer.replace(",", "").replace(" ", "").lstrip("0") or "0"
  fraction = fraction.rstrip("0")
  number = integer + ("." + fraction if fraction else "")
  return ("-" if sign == "-" and number != "0" else "") + number


def unwrap_text(s: str) -> str:
  r"""`\text{abc}`, `\mathrm{abc}`, ... -> `abc` (innermost first, until none is left)."""
  previous = None
  while previous != s:
    previous, s = s, _TEXT_WRAPPER.sub(r"\1", s)
  return s


def normalize_answer(answer: str) -> str:
  r"""A canonical string for an answer: presentation stripped, meaning kept.

  Two answers with the same normal form are equivalent (the fast path relies on that); the
  converse does not hold (`1/2` vs `0.5`), which is what Math-Verify is for.
  """
  s = answer.strip()
  for delimiters in (("\\[", "\\]"), ("\\(", "\\)")):
    if s.startswith(delimiters[0]) and s.endswith(delimiters[1]):
      s = s[2:-2]
  # Shield the row separator `\\` so that `\\ ` is not read as the spacing command `\ `.
  s = s.replace(_ROW_SEPARATOR_STANDIN, "").replace("\\\\", _ROW_SEPARATOR_STANDIN)
  for pattern, replacement in _SUBSTITUTIONS:
    s = pattern.sub(replacement, s).strip()
  s = s.replace(_ROW_SEPARATOR_STANDIN, "\\\\")
  s = unwrap_text(s)
  s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
  if s.count("=") == 1 and "," not in s and not re.search(r"[<>]|\\[lg]e", s):
    assignment = _ASSIGNMENT.match(s)
    if assignment:
      s = assignment.group(1).strip()
  choice = _CHOICE.match(s)
  if choice:
    s = choice.group(1)
  return normalize_number(s)


def comparison_key(answer: str) -> str:
  """`normalize_answer` for string comparison: a percent sign dropped (`50\\%` == `50`, as
  graders conventionally accept), words of three letters or more lower-cased, spaces dropped
  except between alphanumerics (`2 x` != `2x`)."""
  s = normalize_number(normalize_answer(answer).replace("\\%", "").strip())
  if _WORDS.match(s):  # a word answer ("East", "\\text{odd}"), not a product of variables
    s = s.lower()
  return re.sub(r"(?<![A-Za-z0-9]) | (?![A-Za-z0-9])", "", s)


# --------------------------------------------------------------------------------------------
# Equivalence
# --------------------------------------------------------------------------------------------


class MathGrader:
  """Grades completions against LaTeX gold answers; one per worker process.

  Parses and verdicts are memoised per grader: a group of G completions shares one gold
  answer, and often the same final answer string.

  Args:
    math_verify_timeout_s: Math-Verify's own `signal.alarm` guard for each parse / compare
      (whole seconds). Only active on the main thread; the pool's kill is the real bound.
    max_answer_chars: a longer extracted answer is `unparseable` without parsing it.
    string_fast_path: accept equal normalised strings without calling Math-Verify.
    cache_size: parsed answers and verdicts kept (timeouts and errors are never kept).
  """

  def __init__(
      self,
      *,
      math_verify_timeout_s: int = 3,
      max_answer_chars: int = 1000,
      string_fast_path: bool = True,
      cache_size: int = 4096,
  ):
    import math_verify  # heavy (SymPy + ANTLR): imported where it runs, in the worker
    from math_verify.errors import TimeoutException

    self._math_verify = math_verify
    self._timeout_exception = TimeoutException
    self._latex_only = (math_verify.LatexExtractionConfig(boxed_match_priority=0),)
    self.math_verify_timeout_s = max(1, int(math_verify_timeout_s))
    self.max_answer_chars = max_answer_chars
    self.string_fast_path = string_fast_path
    # Per instance, so nothing is shared between graders; lru_cache never stores exceptions.
    self._parse = functools.lru_cache(maxsize=cache_size)(self._parse_uncached)
    self._compare = functools.lru_cache(maxsize=cache_size)(self._compare_uncached)

  def _timeout(self) -> int | None:
    # signal.alarm only works on the main thread; elsewhere there is no inner guard.
    if threading.current_thread() is threading.main_thread():
      return self.math_verify_timeout_s
    return None

  def _parse_uncached(self, answer: str) -> tuple:
    # Only the boxed LaTeX extractor: the plain-number fallback would read `E_{1}` as 1.
    return tuple(
        self._math_verify.parse(
            "\\boxed{" + answer + "}",
            extraction_config=self._latex_only,
            fallback_mode="no_fallback",
            extraction_mode="first_match",
            parsing_timeout=self._timeout(),
            raise_on_error=True,
        )
    )

  def _compare_uncached(self, answer: str, gold_answer: str) -> Grade:
    predicted = self._parse(answer)
    if not predicted:
      return Grade(0.0, UNPARSEABLE, answer, "not parseable as math")
    gold_parsed = self._parse(gold_answer)
    if not gold_parsed:
      return Grade(0.0, ERROR, answer, "gold answer not parseable as math")
    same = self._math_verify.verify(
        list(gold_parsed), list(predicted), timeout_seconds=self._timeout(), raise_on_error=True
    )
    return Grade(1.0, CORRECT, answer) if same else Grade(0.0, INCORRECT, answer)

  def grade(self, completion: str, gold: str) -> Grade:
    """Extracts the final answer of `completion` and compares it with `gold`."""
    extracted = extract_answer(completion)
    if extracted is None:
      return Grade(0.0, UNPARSEABLE, "", "no final answer")
    return self.equivalent(extracted, gold)

  def equivalent(self, prediction: str, gold: str) -> Grade:
    """Compares an already extracted answer with the gold answer."""
    if len(prediction) > self.max_answer_chars:
      return Grade(0.0, UNPARSEABLE, prediction[: self.max_answer_chars], "answer too long")
    answer = normalize_answer(prediction)
    if not answer:
      return Grade(0.0, UNPARSEABLE, "", "empty answer")
    gold_answer = normalize_answer(gold)
    if self.string_fast_path and comparison_key(answer) == comparison_key(gold_answer):
      return Grade(1.0, CORRECT, answer)
    try:
      return self._compare(answer, gold_answer)
    except self._timeout_exception:
      return Grade(0.0, TIMEOUT, answer, "Math-Verify timeout")
    except Exception as e:  # a SymPy failure (or RecursionError) on a strange expression
      return Grade(0.0, ERROR, answer, f"{type(e).__name__}: {str(e)[:200]}")
