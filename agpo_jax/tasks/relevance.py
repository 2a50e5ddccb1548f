r"""Query-ad relevance for search ads: label a (query, ad) pair with an ordered relevance grade.

A problem shows a search query and an ad (its title and attributes: category, brand, colour,
size, gender, price band) and asks for a label of the label set `label_set`: 'graded'
(`relevant > partially relevant > irrelevant`, the default) or 'esci' (`exact > substitute >
complement > irrelevant`), or a comma-separated custom set, best first. Problems are graded by
'relevance' references (`verifiers.relevance`): 1 for the gold label, `partial_credit` one
grade away, 0 otherwise; a completion naming no label is 'unparseable'.

**Sources** (`source`):

- 'synthetic' (default): e-commerce pairs drawn offline with `seed`, their gold label derived by
  the rules of `gold_label` (below), in the class proportions `class_proportions` (irrelevant
  dominant by default), and a share `noise_rate` of the training split's labels flipped to
  another label (human-label noise; 'heldout' and 'unlabeled' keep the rule labels).
- a `.jsonl` file (`load_jsonl`): one pair per line, `{"query", "item": {"title", ...},
  "label"}` or the item fields at top level; `"id"` optional; no label -> an unlabeled pair.
- an ESCI table, `.tsv` / `.csv` (optionally `.gz`; `load_esci`): the Amazon Shopping Queries
  columns `query`, `product_title`, `esci_label` (E / S / C / I or the words) and optional
  `product_brand`, `product_color`, other `product_*` columns and `example_id`. With the
  'graded' set, ESCI labels map E -> relevant, S -> partially relevant, C and I -> irrelevant.

Loaded pairs are split by query (all pairs of one query fall in one split), queries shuffled
with `seed`, filling 'heldout' then 'unlabeled' then 'train' (`num_train=0`: every remaining
pair); a query group that would overflow its split is cut.

**Rules** (`relation`, `gold_label`), on a structured query (category, product type and
optionally brand, colour, size, gender, price band) and an item, first that applies:

1. the item's product type is an accessory of the queried one (`COMPLEMENTS`, e.g. a phone
   case for a smartphone) -> 'complement': graded 'irrelevant', ESCI 'complement';
2. another category -> 'unrelated': 'irrelevant' in both sets;
3. the same category, another product type -> 'related_type': 'partially relevant' /
   'substitute';
4. the same product type and an attribute the query names differs from the item's (a unisex
   item matches either gender; an attribute the item lacks does not conflict) ->
   'attribute_conflict': 'partially relevant' / 'substitute';
5. otherwise -> 'exact': 'relevant' / 'exact'.

**Splits**: 'train', 'heldout' and 'unlabeled' (the pool an annotator labels; its problems keep
their hidden gold label so that annotation quality can be scored).

**Prompt formats** (`prompt_format`):

- 'text', for the character tokenizer (alphabet `RelevanceTask.alphabet`, optionally with the
  catalogue's whole words `RelevanceTask.words` as single tokens): values lower-cased,
  other characters replaced by spaces, `QUERY|TITLE|CATEGORY,BRAND,COLOUR,SIZE,GENDER,PRICE=`
  with '-' for a missing attribute, e.g. `red nike running shoes size 9|nike mens running shoes
  blue|shoes,nike,blue,9,men,mid=`; the demonstration answer is the label (`answer_format=
  'label'`: `partially relevant`) or a short reason then the label ('reason': `colour differs
  so partially relevant`; synthetic pairs only, loaded pairs answer with the label).
- 'chat', for pretrained chat models: one user message with the query, the ad, the labels and
  `instruction` (default: reason briefly, then put the label within `\boxed{}`), an optional
  system message; demonstration `The colour differs. \boxed{partially relevant}` or
  `\boxed{partially relevant}`.

A problem (`RelevanceProblem`) keeps the demonstration in `answer` (what the warm start trains
on) and builds its 'relevance' reference from `label`, `labels` and `partial_credit`.

The catalogue, the rules, the generator and the loaders are in `relevance_data`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Sequence
from typing import Any

from ml_collections import config_dict

from agpo_jax import configs
from agpo_jax.tasks.problem import Problem
from agpo_jax.tasks.relevance_data import (
    RelevancePair,
    TEXT_ATTRIBUTES,
    add_label_noise,
    load_pairs,
    parse_proportions,
    reason,
    split_by_query,
    synthetic_pairs,
    vocabulary,
)
from agpo_jax.verifiers.grades import Reference
from agpo_jax.verifiers.relevance import (
    GRADED,
    encode_reference,
    label_set_name,
    resolve_label_set,
)


# --------------------------------------------------------------------------------------------
# Prompts and problems
# --------------------------------------------------------------------------------------------

TEXT_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 |,=-"
_TEXT_DROP = re.compile(r"[^a-z0-9 ]+")


def text_value(value: Any) -> str:
  """A value for the 'text' prompt: lower-case letters, digits and single spaces."""
  return re.sub(r"\s+", " ", _TEXT_DROP.sub(" ", str(value).lower())).strip()


def text_prompt(pair: RelevancePair) -> str:
  """`QUERY|TITLE|CATEGORY,BRAND,COLOUR,SIZE,GENDER,PRICE=` ('-' for a missing attribute)."""
  fields = pair.fields
  values = [text_value(fields.get(n, "")) or "-" for n in TEXT_ATTRIBUTES]
  return f"{text_value(pair.query)}|{text_value(pair.title)}|{','.join(values)}="


def default_instruction(labels: Sequence[str]) -> str:
  """The chat prompt's answer instruction for a label set."""
  listed = ", ".join(labels[:-1]) + f" or {labels[-1]}"
  return (f"Answer with one label: {listed} (from most to least relevant). Reason briefly, "
          "then put the label within \\boxed{}.")


def chat_content(pair: RelevancePair, instruction: str) -> str:
  """The user message of a chat prompt: task, query, ad title and attributes, instruction."""
  fields = pair.fields
  attributes = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in fields.items()
                         if k not in ("title", "product_type"))
  lines = ["Judge how relevant a search ad is to a shopping query.", "",
           f"Query: {pair.query}", f"Ad: {pair.title}"]
  if attributes:
    lines.append(f"Attributes: {attributes}")
  return "\n".join(lines + ["", instruction])


def demonstration(pair: RelevancePair, prompt_format: str, answer_format: str) -> str:
  """The warm start's completion for a labelled pair (see the module docstring)."""
  why = None
  if answer_format == "reason" and pair.intent:
    why = reason(dict(pair.intent), pair.fields)
  if prompt_format == "text":
    return f"{why} so {pair.label}" if why else str(pair.label)
  boxed = f"\\boxed{{{pair.label}}}"
  return f"{why[0].upper()}{why[1:]}. {boxed}" if why else boxed


@dataclasses.dataclass(frozen=True)
class RelevanceProblem(Problem):
  """A relevance `Problem`: `answer` is the demonstration; the reference is built from `label`
  (the gold label; None: unknown), `labels` and `partial_credit`; `pair` is the source pair."""

  label: str | None = None
  labels: tuple[str, ...] = GRADED
  partial_credit: float = 0.0
  pair: RelevancePair | None = None

  @property
  def reference(self) -> Reference:
    if self.label is None:
      raise ValueError(f"relevance problem {self.id!r} has no gold label to grade against")
    return Reference(encode_reference(self.label, self.labels, self.partial_credit),
                     kind="relevance")


def relevance_config() -> config_dict.ConfigDict:
  """The `config.task` block of the relevance task.

  Fields: `source` ('synthetic', a .jsonl file or an ESCI .tsv / .csv table); `label_set`
  ('graded', 'esci' or comma-separated labels best first); `partial_credit` (reward one grade
  from gold, in [0, 1); 0: none); `prompt_format` ('text' or 'chat'); `answer_format` ('label'
  or 'reason': the warm start's demonstration); `num_train`, `num_heldout`, `num_unlabeled`
  (pairs per split; for a file source caps, `num_train=0` every remaining pair);
  `class_proportions` (synthetic: comma-separated shares in label-set order; '': the set's
  default, 15/25/60 or 15/15/10/60); `noise_rate` (synthetic: share of training labels
  flipped); `seed` (draws and splits); `instruction` (chat: None for `default_instruction`);
  `system_prompt` (chat: a system message first; None: none).
  """
  return config_dict.ConfigDict(dict(
      name="relevance",
      source="synthetic",
      label_set="graded",
      partial_credit=0.0,
      prompt_format="text",
      answer_format="label",
      num_train=2000,
      num_heldout=500,
      num_unlabeled=2000,
      class_proportions="",
      noise_rate=0.0,
      seed=0,
      instruction=config_dict.placeholder(str),
      system_prompt=config_dict.placeholder(str),
  ))


class RelevanceTask:
  """Query-ad relevance problems in the splits 'train', 'heldout' and 'unlabeled'."""

  name = "relevance"
  alphabet = TEXT_ALPHABET
  words = " ".join(vocabulary())  # the 'text' prompts' whole-word tokens (`CharTokenizer`)
  SPLITS = ("train", "heldout", "unlabeled")

  def __init__(self, cfg: config_dict.ConfigDict):
    defaults = relevance_config()
    field = lambda key: cfg[key] if key in cfg else defaults[key]  # noqa: E731
    try:
      self.labels = resolve_label_set(str(field("label_set")))
    except ValueError as e:
      raise configs.ConfigError(f"config.task.label_set: {e}") from None
    self.partial_credit = float(field("partial_credit"))
    if not 0.0 <= self.partial_credit < 1.0:
      raise configs.ConfigError(f"config.task.partial_credit={self.partial_credit} must be in "
                                "[0, 1)")
    self.prompt_format, self.answer_format = str(field("prompt_format")), str(
        field("answer_format"))
    if self.prompt_format not in ("text", "chat"):
      raise configs.ConfigError(f"config.task.prompt_format={self.prompt_format!r} must be "
                                "'text' or 'chat'")
    if self.answer_format not in ("label", "reason"):
      raise configs.ConfigError(f"config.task.answer_format={self.answer_format!r} must be "
                                "'label' or 'reason'")
    sizes = {k: int(field(k)) for k in ("num_train", "num_heldout", "num_unlabeled")}
    noise, seed, source = float(field("noise_rate")), int(field("seed")), str(field("source"))
    if not 0.0 <= noise <= 1.0:
      raise configs.ConfigError(f"config.task.noise_rate={noise} must be in [0, 1]")
    instruction = field("instruction")
    self.instruction = default_instruction(self.labels) if instruction is None else instruction
    self.system_prompt = field("system_prompt")
    if source == "synthetic":
      if label_set_name(self.labels) is None:
        raise configs.ConfigError(f"config.task.label_set={field('label_set')!r}: the synthetic "
                                  "source labels only 'graded' or 'esci'")
      if min(sizes.values()) < 1:
        raise configs.ConfigError(f"config.task.num_train / num_heldout / num_unlabeled = "
                                  f"{tuple(sizes.values())} must each be >= 1")
      shares = parse_proportions(field("class_proportions"), self.labels)
      pairs = synthetic_pairs(sum(sizes.values()), label_set_name(self.labels), shares, seed)
      heldout_end = sizes["num_heldout"]
      unlabeled_end = heldout_end + sizes["num_unlabeled"]
      heldout, unlabeled = pairs[:heldout_end], pairs[heldout_end:unlabeled_end]
      train = add_label_noise(pairs[unlabeled_end:], self.labels, noise, seed)
    else:
      if not pathlib.Path(source).is_file():
        raise configs.ConfigError(f"config.task.source={source!r} is neither 'synthetic' nor "
                                  "an existing .jsonl / .tsv / .csv file")
      if any(sizes[k] < 1 for k in ("num_heldout", "num_unlabeled")) or sizes["num_train"] < 0:
        raise configs.ConfigError("config.task.num_heldout and num_unlabeled must be >= 1 and "
                                  "num_train >= 0 (0: every remaining pair)")
      try:
        loaded = load_pairs(source, self.labels)
      except ValueError as e:
        raise configs.ConfigError(f"config.task.source: {e}") from None
      heldout, unlabeled, train = split_by_query(
          loaded, (sizes["num_heldout"], sizes["num_unlabeled"], sizes["num_train"]), seed)
      unlabelled_gold = [p.id for p in heldout + train if p.label is None]
      if unlabelled_gold:
        raise configs.ConfigError(f"config.task.source={source!r}: pairs without a label fell in "
                                  f"'train' or 'heldout' (e.g. id {unlabelled_gold[0]!r})")
      if not train:
        raise configs.ConfigError(f"config.task.source={source!r} has {len(loaded)} pairs: "
                                  "none left for 'train' after num_heldout + num_unlabeled")
    self._pairs = {"train": train, "heldout": heldout, "unlabeled": unlabeled}
    self._problems = {name: [self._problem(p) for p in split]
                      for name, split in self._pairs.items()}

  def _problem(self, pair: RelevancePair) -> RelevanceProblem:
    answer = demonstration(pair, self.prompt_format, self.answer_format)
    common = dict(id=pair.id, answer=answer, reference_kind="relevance", label=pair.label,
                  labels=self.labels, partial_credit=self.partial_credit, pair=pair,
                  benchmark="relevance")
    if self.prompt_format == "text":
      return RelevanceProblem(prompt=text_prompt(pair), **common)
    messages = [{"role": "user", "content": chat_content(pair, self.instruction)}]
    if self.system_prompt is not None:
      messages.insert(0, {"role": "system", "content": self.system_prompt})
    return RelevanceProblem.from_messages(messages, prompt=pair.query, **common)

  def _check(self, name: str) -> None:
    if name not in self.SPLITS:
      raise configs.ConfigError(f"split {name!r} (config.eval.split) is not one of "
                                f"{self.SPLITS} for config.task.name={self.name!r}")

  def split(self, name: str) -> list[RelevanceProblem]:
    """The problems of 'train', 'heldout' or 'unlabeled'."""
    self._check(name)
    return self._problems[name]

  def pairs(self, name: str) -> list[RelevancePair]:
    """The pairs of a split (their gold labels included, also for 'unlabeled')."""
    self._check(name)
    return self._pairs[name]

