r"""The math prompt format shared by every math source (JSONL benchmarks and TFDS).

A math problem's prompt is one user message: the question, a blank line, `MATH_INSTRUCTION`
(optionally after a system message). Its reference is 'math': a correct completion's last
`\boxed{}` must be equivalent to the gold answer.
"""

from __future__ import annotations

from agpo_jax.tasks.problem import Problem

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def strip_math_instruction(question: str) -> str:
  """The question without a trailing `MATH_INSTRUCTION` (several files already carry it)."""
  question = question.rstrip()
  if question.endswith(MATH_INSTRUCTION):
    question = question[: -len(MATH_INSTRUCTION)].rstrip()
  return question


def build_math_messages(question: str, system_prompt: str | None = None) -> list[dict[str, str]]:
  r"""Chat messages for the math prompt format: the question, a blank line, `MATH_INSTRUCTION`.

  A question that already ends with the instruction does not get it twice.

  Args:
    question: The problem text.
    system_prompt: A system message put first, if not None.

  Returns:
    The messages, dicts with 'role' and 'content'.
  """
  content = strip_math_instruction(question) + "\n\n" + MATH_INSTRUCTION
  messages = [{"role": "user", "content": content}]
  if system_prompt is not None:
    messages.insert(0, {"role": "system", "content": system_prompt})
  return messages


def gsm8k_final_answer(solution: str) -> str:
  """The number after the last '####' of a GSM8K solution, without thousands separators."""
  if "####" not in solution:
    raise ValueError("GSM8K answer has no '#### <number>' line")
  return solution.rsplit("####", 1)[1].strip().replace(",", "")


def math_problem(problem_id: str, question: str, answer: str, benchmark: str,
                 solution: str | None = None, system_prompt: str | None = None) -> Problem:
  """A `Problem` in the math prompt format with a 'math' reference.

  Args:
    problem_id: The problem id.
    question: The problem text; a trailing `MATH_INSTRUCTION` is dropped (the prompt adds it).
    answer: The gold final answer; surrounding whitespace is dropped.
    benchmark: The source benchmark's name.
    solution: A worked solution, if the source has one.
    system_prompt: A system message for the prompt, if not None.

  Returns:
    The problem, its bare question in `prompt` and the chat in `chat`.
  """
  question = strip_math_instruction(question)
  return Problem.from_messages(
      build_math_messages(question, system_prompt),
      id=problem_id, prompt=question, answer=answer.strip(), reference_kind="math",
      solution=solution, benchmark=benchmark,
  )


def with_system_prompt(problem: Problem, system_prompt: str | None) -> Problem:
  """`problem` (a math problem) with its chat rebuilt around `system_prompt`."""
  if system_prompt is None:
    return problem
  return math_problem(problem.id, problem.prompt, problem.answer, problem.benchmark,
                      problem.solution, system_prompt)
