"""Classification metrics for labelled pairs: per-class precision / recall / F1, accuracy,
macro-F1, the confusion matrix, and a text table that shows the minority classes.

Predictions may be None (an unparseable completion, a pair the annotator could not label): such
a pair counts as wrong for accuracy and as a miss for its gold class's recall, and as a false
positive for no class. For a class c with tp true positives, p predictions and s gold pairs
(its support): precision = tp / p, recall = tp / s (0 when the denominator is 0),
F1 = 2 precision recall / (precision + recall) (0 when both are 0). Macro-F1 is the plain mean
of F1 over every class of the label set (as scikit-learn's `f1_score(labels=...,
average='macro', zero_division=0)`), so a rare class weighs as much as the dominant one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_report(gold: Sequence[str], predicted: Sequence[str | None],
                          labels: Sequence[str]) -> dict:
  """Per-class and overall metrics of `predicted` against `gold`.

  Args:
    gold: The gold label of each pair (each one of `labels`).
    predicted: The predicted label of each pair, one of `labels` or None (no prediction).
    labels: The label set, in the order the report lists it.

  Returns:
    `{"num_pairs", "accuracy", "macro_f1", "unparsed" (None predictions), "labels",
    "per_class": {label: {"precision", "recall", "f1", "support", "predicted"}},
    "confusion": [gold index][predicted index, the last column None]}`.

  Raises:
    ValueError: different lengths, no pairs, or a label outside `labels`.
  """
  labels = list(labels)
  if len(gold) != len(predicted):
    raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
  if not gold:
    raise ValueError("no pairs to score")
  index = {label: i for i, label in enumerate(labels)}
  confusion = np.zeros((len(labels), len(labels) + 1), np.int64)
  for position, (g, p) in enumerate(zip(gold, predicted)):
    if g not in index:
      raise ValueError(f"gold label {g!r} (pair {position}) is not one of {labels}")
    if p is not None and p not in index:
      raise ValueError(f"predicted label {p!r} (pair {position}) is not one of {labels} or None")
    confusion[index[g], len(labels) if p is None else index[p]] += 1
  per_class = {}
  for i, label in enumerate(labels):
    tp, support, count = int(confusion[i, i]), int(confusion[i].sum()), int(confusion[:, i].sum())
    precision = tp / count if count else 0.0
    recall = tp / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    per_class[label] = {"precision": precision, "recall": recall, "f1": f1,
                        "support": support, "predicted": count}
  return {
      "num_pairs": len(gold),
      "accuracy": float(np.trace(confusion[:, :len(labels)]) / len(gold)),
      "macro_f1": float(np.mean([per_class[label]["f1"] for label in labels])),
      "unparsed": int(confusion[:, -1].sum()),
      "labels": labels,
      "per_class": per_class,
      "confusion": confusion.tolist(),
  }


def format_report(report: dict) -> str:
  """A text table of a `classification_report`: one row per class, rarest (by support) first,
  then accuracy and macro-F1."""
  rows = sorted(report["per_class"].items(), key=lambda kv: kv[1]["support"])
  width = max(len("class"), *(len(label) for label, _ in rows))
  lines = [f"{'class':<{width}}  support  share  precision  recall     f1"]
  for label, m in rows:
    share = m["support"] / report["num_pairs"]
    lines.append(f"{label:<{width}}  {m['support']:7d}  {share:5.1%}  {m['precision']:9.3f}  "
                 f"{m['recall']:6.3f}  {m['f1']:5.3f}")
  lines.append(f"accuracy {report['accuracy']:.3f}  macro-F1 {report['macro_f1']:.3f}  "
               f"unparsed {report['unparsed']} of {report['num_pairs']}")
  return "\n".join(lines)
