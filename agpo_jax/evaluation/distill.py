"""Distillation: a small student classifier trained on annotator labels, scored on gold.

The student is a bag of hashed word n-grams (fastText-like), in plain JAX: each pair becomes a
set of string features, hashed with CRC-32 into `num_buckets` embedding rows, summed (divided
by the square root of their count), then a ReLU hidden layer (`hidden=0`: none, a linear model)
and a softmax over the label set. Features (`pair_features`): query words and word bigrams
('q:', 'q2:'), item title words ('t:'), item attributes ('a:name=value'), and for each query
word whether the item's text holds it ('m:' match / 'x:' miss) with the counts of both, so that
attribute conflicts (a colour asked for and absent) are visible to the model.

Training is AdamW on the (optionally class-balanced) cross-entropy for `steps` mini-batches
drawn epoch by epoch from a permutation seeded by `seed`; the parameters are drawn with numpy
from `seed` too (so only the update step is compiled). A student is thus a deterministic
function of its data and config, and trains in seconds on a CPU. `distill` joins annotation
records (`annotate`) to the pool's pairs, trains, and reports accuracy, macro-F1 and per-class
F1 on gold pairs (`classification`).
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from agpo_jax.evaluation.classification import classification_report

_WORD = re.compile(r"[a-z0-9]+")


@dataclasses.dataclass(frozen=True)
class StudentConfig:
  """The student's size and training.

  Attributes:
    num_buckets: Hashed feature buckets (embedding rows).
    dim: Embedding width.
    hidden: ReLU hidden units; 0: a linear model on the summed embeddings.
    steps: Mini-batch updates.
    batch_size: Pairs per update.
    learning_rate: AdamW learning rate (constant).
    weight_decay: AdamW weight decay.
    class_weighting: 'none', or 'balanced' (each class's loss weighted by
      num_pairs / (num_classes * class count), against class imbalance).
    seed: Initialisation and batch order.
  """

  num_buckets: int = 1 << 14
  dim: int = 32
  hidden: int = 64
  steps: int = 400
  batch_size: int = 64
  learning_rate: float = 1e-2
  weight_decay: float = 1e-4
  class_weighting: str = "none"
  seed: int = 0

  def __post_init__(self):
    for name in ("num_buckets", "dim", "steps", "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"StudentConfig.{name}={getattr(self, name)} must be >= 1")
    if self.hidden < 0:
      raise ValueError(f"StudentConfig.hidden={self.hidden} must be >= 0")
    if self.class_weighting not in ("none", "balanced"):
      raise ValueError(f"StudentConfig.class_weighting={self.class_weighting!r} must be 'none' "
                       "or 'balanced'")


def _words(text: str) -> list[str]:
  return _WORD.findall(str(text).lower())


def pair_features(query: str, fields: Mapping[str, str]) -> list[str]:
  """The string features of one (query, item fields) pair (see the module docstring)."""
  q_words = _words(query)
  title = _words(fields.get("title", ""))
  attributes = {k: " ".join(_words(v)) for k, v in fields.items()
                if k not in ("title", "product_type")}
  item_words = set(title) | {w for v in attributes.values() for w in v.split()}
  features = [f"q:{w}" for w in q_words]
  features += [f"q2:{a}_{b}" for a, b in zip(q_words, q_words[1:])]
  features += [f"t:{w}" for w in title]
  features += [f"a:{k}={v}" for k, v in attributes.items() if v]
  matched = [w in item_words for w in q_words]
  features += [f"{'m' if hit else 'x'}:{w}" for w, hit in zip(q_words, matched)]
  features += [f"nm:{min(sum(matched), 5)}", f"nx:{min(len(matched) - sum(matched), 5)}"]
  return features


def featurize(pairs: Sequence[Any], num_buckets: int) -> tuple[np.ndarray, np.ndarray]:
  """`(ids [N, L] int32, mask [N, L] bool)` of hashed features for pairs with `query` and
  `fields`; L is the longest feature list (at least 1)."""
  rows = [[zlib.crc32(f.encode()) % num_buckets for f in pair_features(p.query, p.fields)]
          for p in pairs]
  width = max([1] + [len(r) for r in rows])
  ids = np.zeros((len(rows), width), np.int32)
  mask = np.zeros((len(rows), width), bool)
  for i, row in enumerate(rows):
    ids[i, :len(row)], mask[i, :len(row)] = row, True
  return ids, mask


def init_params(config: StudentConfig, num_classes: int) -> dict:
  """Parameters drawn with numpy from `config.seed`: embeddings N(0, 1/dim), weights
  N(0, 1/fan_in), biases 0 (float32)."""
  rng = np.random.default_rng(config.seed)

  def normal(shape, fan_in):
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

  width = config.hidden or config.dim
  params = {"embed": normal((config.num_buckets, config.dim), config.dim),
            "out": {"w": normal((width, num_classes), width),
                    "b": np.zeros(num_classes, np.float32)}}
  if config.hidden:
    params["hidden"] = {"w": normal((config.dim, config.hidden), config.dim),
                        "b": np.zeros(config.hidden, np.float32)}
  return params


def logits_fn(params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
  """`[N, num_classes]` logits: summed feature embeddings / sqrt(count), the optional ReLU
  layer, the output layer."""
  weights = mask.astype(jnp.float32)
  h = jnp.sum(params["embed"][ids] * weights[..., None], axis=1)
  h = h / jnp.sqrt(jnp.maximum(weights.sum(axis=1, keepdims=True), 1.0))
  if "hidden" in params:
    h = jax.nn.relu(h @ params["hidden"]["w"] + params["hidden"]["b"])
  return h @ params["out"]["w"] + params["out"]["b"]


@dataclasses.dataclass
class Student:
  """A trained student: its config, label set and parameters."""

  config: StudentConfig
  labels: tuple[str, ...]
  params: Any

  def probabilities(self, pairs: Sequence[Any]) -> np.ndarray:
    """`[N, num_labels]` class probabilities."""
    ids, mask = featurize(pairs, self.config.num_buckets)
    logits = jax.jit(logits_fn)(self.params, ids, mask)
    return np.asarray(jax.nn.softmax(logits, axis=-1))

  def predict(self, pairs: Sequence[Any]) -> list[str]:
    """The most probable label of each pair."""
    return [self.labels[i] for i in np.argmax(self.probabilities(pairs), axis=1)]


def make_student_step(tx: optax.GradientTransformation):
  """The jitted update `(params, opt_state, ids, mask, targets, weights) -> (params,
  opt_state, loss)` on the weighted mean cross-entropy."""

  def loss_fn(params, ids, mask, targets, weights):
    logits = logits_fn(params, ids, mask)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(losses * weights) / jnp.sum(weights)

  @jax.jit
  def step(params, opt_state, ids, mask, targets, weights):
    loss, grads = jax.value_and_grad(loss_fn)(params, ids, mask, targets, weights)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def train_student(pairs: Sequence[Any], targets: Sequence[str], labels: Sequence[str],
                  config: StudentConfig = StudentConfig()) -> Student:
  """A student trained on `pairs` labelled `targets` (labels of `labels`).

  Raises:
    ValueError: no pairs, different lengths, or a target outside `labels`.
  """
  labels = tuple(labels)
  if not pairs or len(pairs) != len(targets):
    raise ValueError(f"need pairs and one target each; got {len(pairs)} pairs and "
                     f"{len(targets)} targets")
  unknown = sorted({t for t in targets if t not in labels}, key=str)
  if unknown:
    raise ValueError(f"targets {unknown} are not in the label set {labels}")
  ids, mask = featurize(pairs, config.num_buckets)
  y = np.asarray([labels.index(t) for t in targets], np.int32)
  counts = np.bincount(y, minlength=len(labels)).astype(np.float32)
  if config.class_weighting == "balanced":
    class_weight = len(y) / (len(labels) * np.maximum(counts, 1.0))
  else:
    class_weight = np.ones(len(labels), np.float32)
  w = class_weight[y].astype(np.float32)
  params = init_params(config, len(labels))
  tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  opt_state = tx.init(params)
  step = make_student_step(tx)
  rng = np.random.default_rng(config.seed)
  batch = min(config.batch_size, len(y))
  order, position = rng.permutation(len(y)), 0
  for _ in range(config.steps):
    if position + batch > len(y):
      order, position = rng.permutation(len(y)), 0
    rows = order[position:position + batch]
    position += batch
    params, opt_state, _ = step(params, opt_state, ids[rows], mask[rows], y[rows], w[rows])
  return Student(config, labels, jax.device_get(params))


def evaluate_student(student: Student, pairs: Sequence[Any]) -> dict:
  """`classification_report` of the student's predictions against the pairs' gold `label`."""
  gold = [p.label for p in pairs]
  if any(g is None for g in gold):
    raise ValueError("every evaluation pair needs a gold label")
  return classification_report(gold, student.predict(pairs), student.labels)


def distill(annotations: Sequence[Mapping[str, Any]], pool: Sequence[Any],
            eval_pairs: Sequence[Any], labels: Sequence[str],
            config: StudentConfig = StudentConfig(), min_confidence: float = 0.0) -> dict:
  """Train a student on annotator labels and score it on gold.

  Args:
    annotations: Records of `annotate.annotate` / `read_annotations` ('id', 'label',
      'confidence'); records without a label or below `min_confidence` are skipped.
    pool: The annotated pairs (with `id`, `query`, `fields`).
    eval_pairs: Gold-labelled pairs to score the student on (e.g. the 'heldout' split).
    labels: The label set.
    config: The student.
    min_confidence: The least vote share an annotation needs to be trained on.

  Returns:
    `{"num_train", "num_skipped", "train_labels" (count per label), "report" (on eval_pairs),
    "student"}`.

  Raises:
    ValueError: an annotation id not in `pool`, or no annotation left to train on.
  """
  by_id = {p.id: p for p in pool}
  chosen, skipped = [], 0
  for record in annotations:
    if record["id"] not in by_id:
      raise ValueError(f"annotation id {record['id']!r} is not a pair of the pool")
    if record.get("label") is None or record.get("confidence", 1.0) < min_confidence:
      skipped += 1
      continue
    chosen.append((by_id[record["id"]], record["label"]))
  if not chosen:
    raise ValueError(f"no annotation to train on ({skipped} skipped: unlabeled or below "
                     f"confidence {min_confidence})")
  pairs, targets = [p for p, _ in chosen], [t for _, t in chosen]
  student = train_student(pairs, targets, labels, config)
  return {"num_train": len(pairs), "num_skipped": skipped,
          "train_labels": {label: targets.count(label) for label in labels},
          "report": evaluate_student(student, eval_pairs), "student": student}
