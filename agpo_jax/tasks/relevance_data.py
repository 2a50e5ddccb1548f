r"""The data of the query-ad relevance task (`tasks.relevance`): the synthetic catalogue, the
rules that derive gold labels, the offline pair generator with class imbalance and label noise,
and the JSONL / ESCI-table loaders. The rules and sources are described in `tasks.relevance`.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import pathlib
import re
import types
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from agpo_jax import configs
from agpo_jax.verifiers.relevance import (
    ESCI,
    GRADED,
    LABEL_SETS,
    label_set_name,
    resolve_label_set,
)

# --------------------------------------------------------------------------------------------
# The synthetic catalogue and the rules
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Category:
  """A product category of the synthetic catalogue."""

  types: tuple[str, ...]
  brands: tuple[str, ...]
  sizes: tuple[str, ...]
  genders: tuple[str, ...] = ()  # empty: the category's items have no gender


CATALOGUE = types.MappingProxyType({
    "shoes": Category(("running shoes", "sneakers", "boots", "sandals"),
                      ("nike", "adidas", "puma", "asics", "clarks"),
                      ("6", "7", "8", "9", "10", "11"), ("men", "women", "unisex")),
    "clothing": Category(("t shirt", "jeans", "jacket", "hoodie"),
                         ("levis", "uniqlo", "zara", "gap", "patagonia"),
                         ("xs", "s", "m", "l", "xl"), ("men", "women", "unisex")),
    "electronics": Category(("smartphone", "laptop", "headphones", "tablet"),
                            ("apple", "samsung", "sony", "lenovo", "xiaomi"),
                            ("64gb", "128gb", "256gb", "512gb")),
    "kitchen": Category(("coffee maker", "kettle", "toaster", "blender"),
                        ("philips", "bosch", "tefal", "smeg", "breville"),
                        ("small", "medium", "large")),
    "accessories": Category(("phone case", "phone charger", "laptop bag", "running socks",
                             "coffee filters"),
                            ("belkin", "anker", "spigen", "targus", "melitta"),
                            ("small", "large")),
    "sports": Category(("yoga mat", "dumbbells", "tennis racket", "bike helmet"),
                       ("decathlon", "wilson", "reebok", "bowflex", "giro"),
                       ("small", "medium", "large")),
})
COLOURS = ("black", "white", "red", "blue", "green", "grey", "pink", "silver")
PRICE_BANDS = ("low", "mid", "high")
# Queried product type -> the accessory types that go with it (rule 1).
COMPLEMENTS = types.MappingProxyType({
    "smartphone": ("phone case", "phone charger"),
    "tablet": ("phone charger",),
    "laptop": ("laptop bag",),
    "running shoes": ("running socks",),
    "coffee maker": ("coffee filters",),
})
# The attributes a query may name, in the order the rules and reasons list them.
QUERY_ATTRIBUTES = ("brand", "colour", "size", "gender", "price_band")
# The item attributes of the 'text' prompt, in order.
TEXT_ATTRIBUTES = ("category", "brand", "colour", "size", "gender", "price_band")
RELATIONS = ("exact", "attribute_conflict", "related_type", "complement", "unrelated")
RELATION_LABELS = types.MappingProxyType({
    "graded": types.MappingProxyType({
        "exact": "relevant", "attribute_conflict": "partially relevant",
        "related_type": "partially relevant", "complement": "irrelevant",
        "unrelated": "irrelevant"}),
    "esci": types.MappingProxyType({
        "exact": "exact", "attribute_conflict": "substitute", "related_type": "substitute",
        "complement": "complement", "unrelated": "irrelevant"}),
})
ESCI_CODES = types.MappingProxyType({"e": "exact", "s": "substitute", "c": "complement",
                                     "i": "irrelevant"})
ESCI_TO_GRADED = types.MappingProxyType({
    "exact": "relevant", "substitute": "partially relevant", "complement": "irrelevant",
    "irrelevant": "irrelevant"})
DEFAULT_PROPORTIONS = types.MappingProxyType({
    "graded": (0.15, 0.25, 0.60),  # relevant, partially relevant, irrelevant
    "esci": (0.15, 0.15, 0.10, 0.60),  # exact, substitute, complement, irrelevant
})
_ATTRIBUTE_WORDS = {"price_band": "price"}
_PRICE_WORDS = {"low": "cheap", "mid": "mid range", "high": "premium"}
_GENDER_WORDS = {"men": "mens", "women": "womens", "unisex": "unisex"}
_UNRELATED_SHARE = 0.75  # of graded 'irrelevant' pairs; the rest are complements


def _key(value: Any) -> str:
  return " ".join(str(value).lower().split())


def _present(fields: Mapping[str, Any], name: str) -> str | None:
  value = fields.get(name)
  return None if value is None or _key(value) in ("", "-") else _key(value)


def _conflicts(query: Mapping[str, Any], item: Mapping[str, Any]) -> list[str]:
  """The attributes the query names that the item has with another value."""
  out = []
  for name in QUERY_ATTRIBUTES:
    wanted, has = _present(query, name), _present(item, name)
    if wanted is None or has is None or wanted == has:
      continue
    if name == "gender" and has == "unisex":
      continue
    out.append(name)
  return out


def relation(query: Mapping[str, Any], item: Mapping[str, Any]) -> str:
  """How `item` relates to the structured `query` (the rules of the module docstring).

  Args:
    query: 'category' and 'product_type', and optionally the attributes of `QUERY_ATTRIBUTES`
      ('brand', 'colour', 'size', 'gender', 'price_band'); None or '' means not named.
    item: The same fields for the ad's product.

  Returns:
    One of `RELATIONS`.

  Raises:
    ValueError: a required field is missing.
  """
  for name, fields in (("query", query), ("item", item)):
    for field in ("category", "product_type"):
      if _present(fields, field) is None:
        raise ValueError(f"{name} {dict(fields)!r} has no {field!r}")
  q_type, i_type = _key(query["product_type"]), _key(item["product_type"])
  if i_type in COMPLEMENTS.get(q_type, ()):
    return "complement"
  if _key(query["category"]) != _key(item["category"]):
    return "unrelated"
  if q_type != i_type:
    return "related_type"
  return "attribute_conflict" if _conflicts(query, item) else "exact"


def gold_label(query: Mapping[str, Any], item: Mapping[str, Any], label_set: str = "graded"
               ) -> str:
  """The rule-derived gold label of a (structured query, item) pair in the 'graded' or 'esci'
  set (see `relation` and the module docstring)."""
  if label_set not in RELATION_LABELS:
    raise ValueError(f"label set {label_set!r}: the rules label only {tuple(RELATION_LABELS)}")
  return RELATION_LABELS[label_set][relation(query, item)]


def reason(query: Mapping[str, Any], item: Mapping[str, Any]) -> str:
  """A short reason for the rule label: 'all match', 'colour and size differ', 'type differs',
  'accessory', 'category differs' (no label word appears in it)."""
  kind = relation(query, item)
  if kind == "attribute_conflict":
    names = [_ATTRIBUTE_WORDS.get(n, n) for n in _conflicts(query, item)]
    return " and ".join(names) + (" differs" if len(names) == 1 else " differ")
  return {"exact": "all match", "related_type": "type differs", "complement": "accessory",
          "unrelated": "category differs"}[kind]


_REASON_WORDS = ("all", "match", "and", "differs", "differ", "type", "accessory", "category",
                 "so")  # "so" joins a reason to its label (`relevance.demonstration`)


def vocabulary() -> tuple[str, ...]:
  """Every word of two or more characters (a run of `[a-z0-9]`) that the synthetic pairs'
  'text' prompts, labels and reasons are written with, sorted: the catalogue, the attribute
  values and words, both label sets and the reasons' words (the whole-word tokens of the
  relevance configs' tokenizer, `CharTokenizer(words=...)`)."""
  texts = [*COLOURS, *PRICE_BANDS, *_PRICE_WORDS.values(), *_GENDER_WORDS.values(),
           *_ATTRIBUTE_WORDS.values(), *QUERY_ATTRIBUTES, "size", *_REASON_WORDS,
           *(label for labels in LABEL_SETS.values() for label in labels)]
  for name, category in CATALOGUE.items():
    texts += [name, *category.types, *category.brands, *category.sizes, *category.genders]
  return tuple(sorted({w for text in texts for w in re.findall(r"[a-z0-9]+", text)
                       if len(w) > 1}))


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RelevancePair:
  """One (query, ad) pair.

  Attributes:
    id: Unique within the task.
    query: The query text.
    item: The ad's fields as `(name, value)` pairs, 'title' first.
    label: The gold label (after noise, for synthetic training pairs); None when unknown.
    clean_label: Synthetic pairs: the rule label before noise.
    relation: Synthetic pairs: `relation(intent, item)`.
    intent: Synthetic pairs: the structured query the text was written from.
  """

  id: str
  query: str
  item: tuple[tuple[str, str], ...]
  label: str | None = None
  clean_label: str | None = None
  relation: str | None = None
  intent: tuple[tuple[str, str], ...] = ()

  @property
  def fields(self) -> dict[str, str]:
    """The item's fields as a dict."""
    return dict(self.item)

  @property
  def title(self) -> str:
    return self.fields.get("title", "")


def _item_tuple(fields: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
  title = [("title", str(fields["title"]))] if "title" in fields else []
  return tuple(title + [(str(k), str(v)) for k, v in fields.items()
                        if k != "title" and v is not None and str(v).strip() != ""])


def _choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
  return options[int(rng.integers(len(options)))]


def _draw_query(rng: np.random.Generator, types_from: Sequence[str] | None = None) -> dict:
  if types_from is not None:
    product_type = _choice(rng, types_from)
    category = next(c for c, spec in CATALOGUE.items() if product_type in spec.types)
  else:
    category = _choice(rng, list(CATALOGUE))
    product_type = _choice(rng, CATALOGUE[category].types)
  spec = CATALOGUE[category]
  query = {"category": category, "product_type": product_type}
  options = {"brand": spec.brands, "colour": COLOURS, "size": spec.sizes,
             "gender": ("men", "women") if spec.genders else (), "price_band": PRICE_BANDS}
  for name in QUERY_ATTRIBUTES:
    if options[name] and rng.random() < 0.4:
      query[name] = _choice(rng, options[name])
  return query


def _draw_item(rng: np.random.Generator, category: str, product_type: str,
               fixed: Mapping[str, str] | None = None) -> dict:
  spec = CATALOGUE[category]
  item = {"category": category, "product_type": product_type, "brand": _choice(rng, spec.brands),
          "colour": _choice(rng, COLOURS), "size": _choice(rng, spec.sizes),
          "price_band": _choice(rng, PRICE_BANDS)}
  if spec.genders:
    item["gender"] = _choice(rng, spec.genders)
  item.update(fixed or {})
  return item


def _other_value(rng: np.random.Generator, category: str, name: str, value: str) -> str:
  spec = CATALOGUE[category]
  options = {"brand": spec.brands, "colour": COLOURS, "size": spec.sizes,
             "gender": ("men", "women"), "price_band": PRICE_BANDS}[name]
  return _choice(rng, [o for o in options if o != value])


def _draw_pair(rng: np.random.Generator, kind: str) -> tuple[dict, dict]:
  """A (structured query, item) pair whose `relation` is `kind`."""
  if kind == "complement":
    query = _draw_query(rng, types_from=sorted(COMPLEMENTS))
    accessory = _choice(rng, COMPLEMENTS[query["product_type"]])
    category = next(c for c, spec in CATALOGUE.items() if accessory in spec.types)
    return query, _draw_item(rng, category, accessory)
  query = _draw_query(rng)
  category, product_type = query["category"], query["product_type"]
  named = {n: query[n] for n in QUERY_ATTRIBUTES if n in query}
  if kind == "exact":
    return query, _draw_item(rng, category, product_type, named)
  if kind == "attribute_conflict":
    if not named:  # name one attribute, so that it can conflict
      name = _choice(rng, [n for n in QUERY_ATTRIBUTES
                           if n != "gender" or CATALOGUE[category].genders])
      query[name] = _draw_item(rng, category, product_type)[name]
      if name == "gender" and query[name] == "unisex":
        query[name] = "women"
      named = {name: query[name]}
    names = sorted(named, key=QUERY_ATTRIBUTES.index)
    changed = [_choice(rng, names)]
    if len(names) > 1 and rng.random() < 0.3:
      changed.append(_choice(rng, [n for n in names if n != changed[0]]))
    fixed = {n: (_other_value(rng, category, n, v) if n in changed else v)
             for n, v in named.items()}
    return query, _draw_item(rng, category, product_type, fixed)
  if kind == "related_type":
    other = _choice(rng, [t for t in CATALOGUE[category].types if t != product_type])
    return query, _draw_item(rng, category, other)
  if kind == "unrelated":
    accessories = COMPLEMENTS.get(product_type, ())
    choices = [(c, t) for c, spec in CATALOGUE.items() if c != category for t in spec.types
               if t not in accessories]
    other_category, other_type = _choice(rng, choices)
    return query, _draw_item(rng, other_category, other_type)
  raise ValueError(f"relation {kind!r} is not one of {RELATIONS}")


def query_text(query: Mapping[str, Any]) -> str:
  """The search query written from a structured query: `nike red mens running shoes size 9
  cheap`."""
  words = [query.get("brand"), query.get("colour"), _GENDER_WORDS.get(query.get("gender", "")),
           query["product_type"]]
  if query.get("size"):
    words.append(f"size {query['size']}")
  words.append(_PRICE_WORDS.get(query.get("price_band", "")))
  return " ".join(w for w in words if w)


def item_fields(item: Mapping[str, Any]) -> dict[str, str]:
  """An item's displayed fields: a title (`adidas womens running shoes blue`) then its
  attributes (the product type shows only in the title)."""
  title = " ".join(w for w in (item["brand"], _GENDER_WORDS.get(item.get("gender", "")),
                               item["product_type"], item["colour"]) if w)
  fields = {"title": title}
  fields.update({n: item[n] for n in TEXT_ATTRIBUTES if item.get(n)})
  return fields


def parse_proportions(spec: str, labels: Sequence[str]) -> np.ndarray:
  name = label_set_name(labels)
  if not str(spec).strip():
    if name is None:
      raise configs.ConfigError("config.task.class_proportions='' has no default for the "
                                f"custom label set {labels}: give one share per label")
    return np.asarray(DEFAULT_PROPORTIONS[name], np.float64)
  try:
    shares = np.asarray([float(x) for x in str(spec).split(",")], np.float64)
  except ValueError:
    raise configs.ConfigError(f"config.task.class_proportions={spec!r} must be comma-separated "
                              "numbers, one per label") from None
  if len(shares) != len(labels) or np.any(shares < 0) or not np.all(np.isfinite(shares)) or (
      shares.sum() <= 0):
    raise configs.ConfigError(f"config.task.class_proportions={spec!r} must be {len(labels)} "
                              f"non-negative shares (one per label of {labels}), not all 0")
  return shares / shares.sum()


def synthetic_pairs(num_pairs: int, label_set: str = "graded",
                    proportions: Sequence[float] | None = None, seed: int = 0,
                    id_prefix: str = "syn") -> list[RelevancePair]:
  """`num_pairs` distinct synthetic pairs with rule labels (no noise), in draw order.

  Each pair first draws its label with `proportions` (default `DEFAULT_PROPORTIONS`), then a
  relation giving that label (graded 'partially relevant': attribute conflict or other type,
  evenly; graded 'irrelevant': 3/4 unrelated, 1/4 complement; ESCI 'substitute': conflict or
  other type), then a pair with that relation. A pair repeating an earlier one (same query text
  and item) is drawn again.
  """
  labels = resolve_label_set(label_set)
  name = label_set_name(labels)
  if name not in RELATION_LABELS:
    raise ValueError(f"label set {label_set!r}: synthetic pairs have labels only in "
                     f"{tuple(RELATION_LABELS)}")
  shares = np.asarray(DEFAULT_PROPORTIONS[name] if proportions is None else proportions,
                      np.float64)
  cumulative = np.cumsum(shares / shares.sum())
  by_label: dict[str, list[str]] = {label: [] for label in labels}
  for kind in RELATIONS:
    by_label[RELATION_LABELS[name][kind]].append(kind)
  rng = np.random.default_rng(seed)
  seen: set[tuple] = set()
  pairs: list[RelevancePair] = []
  attempts = 0
  while len(pairs) < num_pairs:
    attempts += 1
    if attempts > 20 * num_pairs + 1000:
      raise ValueError(f"could not draw {num_pairs} distinct synthetic pairs ({len(pairs)} "
                       "after many draws): draw fewer")
    label = labels[min(int(np.searchsorted(cumulative, rng.random(), side="right")),
                       len(labels) - 1)]
    kinds = by_label[label]
    if label == "irrelevant" and name == "graded":
      kind = "unrelated" if rng.random() < _UNRELATED_SHARE else "complement"
    else:
      kind = _choice(rng, kinds)
    query, item = _draw_pair(rng, kind)
    text, fields = query_text(query), item_fields(item)
    key = (text, tuple(sorted(fields.items())))
    if key in seen:
      continue
    seen.add(key)
    gold = gold_label(query, item, name)
    assert gold == label, (query, item, gold, label)  # the draw is built to have it
    pairs.append(RelevancePair(
        id=f"{id_prefix}{len(pairs):06d}", query=text,
        item=_item_tuple({**fields, "product_type": item["product_type"]}), label=gold,
        clean_label=gold, relation=kind,
        intent=tuple((k, str(v)) for k, v in query.items())))
  return pairs


def add_label_noise(pairs: Sequence[RelevancePair], labels: Sequence[str], rate: float,
                    seed: int) -> list[RelevancePair]:
  """Each labelled pair's label, with probability `rate`, replaced by another label of `labels`
  drawn uniformly (`clean_label` keeps the original)."""
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"noise rate {rate!r} must be in [0, 1]")
  rng = np.random.default_rng([seed, 1])
  out = []
  for pair in pairs:
    flip, pick = rng.random(), int(rng.integers(len(labels) - 1))
    if pair.label is None or flip >= rate:
      out.append(pair)
      continue
    others = [label for label in labels if label != pair.label]
    clean = pair.clean_label if pair.clean_label is not None else pair.label
    out.append(dataclasses.replace(pair, label=others[pick], clean_label=clean))
  return out


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------

_FIELD_NAMES = {"product_title": "title", "color": "colour", "product_color": "colour",
                "product_brand": "brand", "price": "price_band"}
_ESCI_SKIPPED = ("product_id", "product_locale", "product_description", "product_bullet_point")
_ESCI_META = ("example_id", "query_id", "query", "esci_label", "split", "small_version",
              "large_version")


def _open_text(path: pathlib.Path):
  if path.suffix == ".gz":
    return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
  return open(path, encoding="utf-8", newline="")


def _label_of(value: Any, labels: Sequence[str], where: str) -> str | None:
  """A source's label read into `labels` (ESCI words and codes map onto 'graded')."""
  if value is None or str(value).strip() == "":
    return None
  key = _key(value).replace("_", " ")
  if key in labels:
    return key
  name = label_set_name(labels)
  esci = ESCI_CODES.get(key, key if key in ESCI else None)
  if esci is not None and name == "esci":
    return esci
  if esci is not None and name == "graded":
    return ESCI_TO_GRADED[esci]
  raise ValueError(f"{where}: label {value!r} is not one of {tuple(labels)}"
                   + (" (or an ESCI label E / S / C / I)" if name else ""))


def load_jsonl(path: str | pathlib.Path, labels: Sequence[str] = GRADED
               ) -> list[RelevancePair]:
  """Pairs from a JSONL file: one object per line with 'query', the item as 'item' (an object
  with 'title') or as top-level fields ('title' or 'product_title', 'category', 'brand', ...),
  and an optional 'label' (and 'id'; default: the line number). Blank lines are skipped.

  Raises:
    ValueError: naming `path:line` and what is wrong (bad JSON, no query or title, a label
      outside `labels`, a repeated id).
  """
  path = pathlib.Path(path)
  pairs, ids = [], set()
  with _open_text(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{number}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e.msg})") from None
      if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
      query = record.get("query")
      if not isinstance(query, str) or not query.strip():
        raise ValueError(f"{where}: 'query' must be a non-empty string")
      item = record.get("item")
      if item is None:
        item = {k: v for k, v in record.items() if k not in ("id", "query", "label", "split")}
      if not isinstance(item, dict):
        raise ValueError(f"{where}: 'item' must be an object of fields")
      item = {_FIELD_NAMES.get(k, k): v for k, v in item.items()}
      if not isinstance(item.get("title"), str) or not item["title"].strip():
        raise ValueError(f"{where}: the item needs a non-empty 'title' (or 'product_title')")
      pair_id = str(record.get("id", number))
      if pair_id in ids:
        raise ValueError(f"{where}: id {pair_id!r} repeats an earlier line's")
      ids.add(pair_id)
      pairs.append(RelevancePair(id=pair_id, query=query.strip(), item=_item_tuple(item),
                                 label=_label_of(record.get("label"), labels, where)))
  return pairs


def load_esci(path: str | pathlib.Path, labels: Sequence[str] = ESCI) -> list[RelevancePair]:
  """Pairs from an ESCI table (`.tsv` tab-separated, else comma-separated; `.gz` allowed).

  Columns: 'query', 'product_title' and 'esci_label' (E / S / C / I or the words; an empty
  cell: unlabeled) are required; 'example_id' is the pair id if present (else the line
  number); 'product_brand', 'product_color' and any other 'product_*' column (except id,
  locale, description and bullet points) become item fields.

  Raises:
    ValueError: naming `path:line` (a missing column names the header line 1).
  """
  path = pathlib.Path(path)
  name = label_set_name(labels)
  if name is None:
    raise ValueError(f"{path}: ESCI labels map only onto the 'esci' or 'graded' label set, "
                     f"not {tuple(labels)}")
  suffixes = [s.lower() for s in path.suffixes]
  delimiter = "\t" if ".tsv" in suffixes else ","
  pairs, ids = [], set()
  with _open_text(path) as f:
    reader = csv.DictReader(f, delimiter=delimiter)
    header = reader.fieldnames or []
    missing = [c for c in ("query", "product_title", "esci_label") if c not in header]
    if missing:
      raise ValueError(f"{path}:1: the header {header} lacks the columns {missing}")
    item_columns = [c for c in header if c not in _ESCI_META and c not in _ESCI_SKIPPED
                    and c.startswith("product_")]
    for row in reader:
      where = f"{path}:{reader.line_num}"
      if None in row or any(row[c] is None for c in header):
        raise ValueError(f"{where}: {len(header)} columns expected (header), got a row of "
                         f"another length")
      query, title = row["query"].strip(), row["product_title"].strip()
      if not query or not title:
        raise ValueError(f"{where}: empty 'query' or 'product_title'")
      raw = row["esci_label"].strip()
      if raw and _key(raw) not in ESCI_CODES and _key(raw) not in ESCI:
        raise ValueError(f"{where}: esci_label {raw!r} is not one of E, S, C, I")
      pair_id = row.get("example_id") or str(reader.line_num)
      if pair_id in ids:
        raise ValueError(f"{where}: id {pair_id!r} repeats an earlier row's")
      ids.add(pair_id)
      fields = {_FIELD_NAMES.get(c, c.removeprefix("product_")): row[c] for c in item_columns}
      pairs.append(RelevancePair(id=pair_id, query=query, item=_item_tuple(fields),
                                 label=_label_of(raw, labels, where)))
  return pairs


def load_pairs(source: str | pathlib.Path, labels: Sequence[str]) -> list[RelevancePair]:
  """`load_jsonl` for `.jsonl[.gz]`, `load_esci` for `.tsv` / `.csv[.gz]`."""
  path = pathlib.Path(source)
  suffixes = [s.lower() for s in path.suffixes]
  if ".jsonl" in suffixes:
    return load_jsonl(path, labels)
  if ".tsv" in suffixes or ".csv" in suffixes:
    return load_esci(path, labels)
  raise ValueError(f"{path}: a relevance source must be .jsonl, .tsv or .csv (optionally .gz)")


def split_by_query(pairs: Sequence[RelevancePair], sizes: Sequence[int], seed: int
                   ) -> list[list[RelevancePair]]:
  """Pairs grouped by query, queries shuffled with `seed`, filling one split after another up
  to `sizes` pairs each (0 as the last size: every remaining pair); a group that would overflow
  a split is cut and its rest dropped, so no query is in two splits."""
  groups: dict[str, list[RelevancePair]] = {}
  for pair in pairs:
    groups.setdefault(_key(pair.query), []).append(pair)
  order = np.random.default_rng(seed).permutation(len(groups))
  queries = list(groups)
  out: list[list[RelevancePair]] = [[] for _ in sizes]
  split = 0
  for index in order:
    while split < len(sizes) and sizes[split] and len(out[split]) >= sizes[split]:
      split += 1
    if split == len(sizes):
      break
    group = groups[queries[index]]
    room = sizes[split] - len(out[split]) if sizes[split] else len(group)
    out[split].extend(group[:room])
  return out
