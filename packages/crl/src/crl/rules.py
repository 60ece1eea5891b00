"""Reading the Boolean rules out of a trained CRL, and using them on their own.

`extract_rules(model, loader)` turns every node of the discrete model into a formula over concept names,
drops nodes that are constant, merges duplicates (summing their class weights), keeps the layer each rule
came from, and folds constant rules into the class biases. The `RuleSet` then predicts from binary
concepts without the network: scores_c = b_c + sum_r w_{c,r} * rule_r(concepts).

Two pruning modes:
- "support" (as published): a node that never or always fires on the data given (the non-augmented
  training set) is a constant. The rule set reproduces the network exactly on data whose concept
  patterns occur in that set, and is the most compact.
- "logical": only nodes that are constant for every concept pattern (empty or contradictory rules) are
  constants; the rule set reproduces the network exactly on every input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from crl.model import CRL
from medimg_core.checkpoint import CheckpointError, bad_value

# a formula: ("const", bool) | ("var", k) | ("not", f) | ("and", (f, ...)) | ("or", (f, ...))
Formula = tuple


def _evaluate(formula: Formula, concepts: np.ndarray) -> np.ndarray:
    kind = formula[0]
    if kind == "const":
        return np.full(len(concepts), formula[1], dtype=bool)
    if kind == "var":
        return concepts[:, formula[1]] > 0.5
    if kind == "not":
        return ~_evaluate(formula[1], concepts)
    parts = [_evaluate(f, concepts) for f in formula[1]]
    return np.logical_and.reduce(parts) if kind == "and" else np.logical_or.reduce(parts)


def _render(formula: Formula, names: Sequence[str], top: bool = True) -> str:
    kind = formula[0]
    if kind == "const":
        return "TRUE" if formula[1] else "FALSE"
    if kind == "var":
        return names[formula[1]]
    if kind == "not":
        inner = formula[1]
        return "~" + _render(inner, names, top=False) if inner[0] == "var" else f"~({_render(inner, names, top=True)})"
    op = " & " if kind == "and" else " | "
    text = op.join(_render(f, names, top=False) for f in formula[1])
    return text if top else f"({text})"


def _count_literals(formula: Formula) -> int:
    kind = formula[0]
    if kind == "var":
        return 1
    if kind == "const":
        return 0
    if kind == "not":
        return _count_literals(formula[1])
    return sum(_count_literals(f) for f in formula[1])


def _negate(f: Formula) -> Formula:
    if f[0] == "const":
        return ("const", not f[1])
    if f[0] == "not":
        return f[1]
    return ("not", f)


def _combine(kind: str, children: list[Formula]) -> Formula:
    """AND/OR of children with constants simplified; duplicates dropped; contradictions detected."""
    neutral, absorbing = (True, False) if kind == "and" else (False, True)
    kept: list[Formula] = []
    for child in children:
        if child[0] == "const":
            if child[1] == absorbing:
                return ("const", absorbing)
            continue
        if child not in kept:
            kept.append(child)
    for child in kept:  # x & ~x is FALSE, x | ~x is TRUE
        if _negate(child) in kept:
            return ("const", absorbing)
    if not kept:
        return ("const", neutral)
    return kept[0] if len(kept) == 1 else (kind, tuple(kept))


@dataclass
class Rule:
    """One rule: its formula over concepts, the layer it came from, its class weights and support."""

    formula: Formula
    layer: int
    weights: np.ndarray  # (C,)
    support: float
    text: str = ""
    length: int = 0

    def evaluate(self, concepts: np.ndarray) -> np.ndarray:
        return _evaluate(self.formula, np.asarray(concepts))


@dataclass
class RuleSet:
    """A dataset-level decision logic: class biases plus weighted Boolean rules over concepts."""

    concept_names: list[str]
    class_names: list[str]
    bias: np.ndarray  # (C,)
    rules: list[Rule] = field(default_factory=list)
    pruning: str = "support"
    compact: Any = None  # crl.compact.CompactRules: set after training (it needs the training concepts)

    def scores(self, concepts: np.ndarray) -> np.ndarray:
        """(N, K) binary concepts -> (N, C) class scores of the rule set alone."""
        concepts = np.asarray(concepts, dtype=np.float32)
        out = np.tile(self.bias.astype(np.float64), (len(concepts), 1))
        for rule in self.rules:
            fired = rule.evaluate(concepts)
            out[fired] += rule.weights
        return out

    def predict(self, concepts: np.ndarray) -> np.ndarray:
        """(N, K) binary concepts -> (N,) class indices."""
        return self.scores(concepts).argmax(axis=1)

    def fired(self, concepts: np.ndarray) -> np.ndarray:
        """(N, R) bool: which rules fire for each sample."""
        concepts = np.asarray(concepts, dtype=np.float32)
        return np.stack([r.evaluate(concepts) for r in self.rules], axis=1) if self.rules else \
            np.zeros((len(concepts), 0), dtype=bool)

    def truth_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Every concept combination (2^K, K) and the rule set's class for each (K <= 20)."""
        k = len(self.concept_names)
        if k > 20:
            raise ValueError(f"a truth table over {k} concepts has 2^{k} rows; restrict to fewer concepts")
        combos = np.array(list(product([0, 1], repeat=k)), dtype=np.float32).reshape(-1, k)
        return combos, self.predict(combos)

    @property
    def mean_length(self) -> float:
        return float(np.mean([r.length for r in self.rules])) if self.rules else 0.0

    def importance(self, rule: Rule) -> float:
        return float(np.abs(rule.weights).max())

    def to_json(self) -> dict[str, Any]:
        out = {
            "concept_names": self.concept_names,
            "class_names": self.class_names,
            "bias": self.bias.tolist(),
            "pruning": self.pruning,
            "rule_count": len(self.rules),
            "mean_rule_length": self.mean_length,
            "rules": [
                {"rule": r.text, "layer": r.layer, "weights": dict(zip(self.class_names, r.weights.tolist(), strict=True)),
                 "support": r.support, "length": r.length, "formula": _to_jsonable(r.formula)}
                for r in self.rules
            ],
        }
        if self.compact is not None:
            out["compact"] = self.compact.to_json()
        return out

    @classmethod
    def from_json(cls, data: Any, source: str | Path = "rules.json") -> RuleSet:
        """The rule set of a parsed rules.json; anything malformed is a `RulesFileError` naming `source`, the
        key and the value found, and what was expected (the file may have been edited by hand)."""
        return _parse_rules(data, str(source))

    def save(self, directory: str | Path) -> tuple[Path, Path]:
        """rules.json (machine-readable) and rules.txt (sorted by importance per class), atomically."""
        from medimg_core.checkpoint import write_json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / "rules.json", self.to_json())
        text = directory / "rules.txt"
        tmp = text.with_name(".rules.txt.tmp")
        tmp.write_text(self.to_text())
        tmp.replace(text)
        return directory / "rules.json", text

    def to_text(self) -> str:
        lines = [f"{len(self.rules)} rules over {len(self.concept_names)} concepts "
                 f"(mean length {self.mean_length:.2f} literals; pruning: {self.pruning})",
                 "score(class) = bias + sum of the weights of the rules that fire; the highest score wins", ""]
        if self.compact is not None:
            lines += self.compact.to_text(self)
        for c, name in enumerate(self.class_names):
            lines.append(f"== {name} (bias {self.bias[c]:+.3f}) ==")
            ranked = sorted(self.rules, key=lambda r: -abs(r.weights[c]))
            for r in ranked:
                if abs(r.weights[c]) < 1e-6:
                    continue
                lines.append(f"  {r.weights[c]:+8.3f}  [layer {r.layer}, support {r.support:.3f}]  {r.text}")
            lines.append("")
        return "\n".join(lines)


def _to_jsonable(f: Formula) -> Any:
    if f[0] in ("const", "var"):
        return list(f)
    if f[0] == "not":
        return ["not", _to_jsonable(f[1])]
    return [f[0], [_to_jsonable(c) for c in f[1]]]


@torch.no_grad()
def node_activations(model: CRL, concepts: torch.Tensor) -> list[np.ndarray]:
    """Per logical layer, (N, nodes) bool outputs of the discrete model for binary concepts (N, K)."""
    c = concepts.float()
    _, outputs = model.reason(torch.cat([c, 1 - c], dim=1))
    return [o.cpu().numpy() > 0.5 for o in outputs]


def concepts_of(model: CRL, loader: Iterable, device: str | torch.device = "cpu") -> np.ndarray:
    """The model's binary concepts (N, K) over a loader of batches with "image" (or "features")."""
    model.eval()
    out = []
    with torch.no_grad():
        for batch in loader:
            x = batch["features"] if "features" in batch else batch["image"]
            out.append((model.concept_logits(x.to(device)) > 0).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def extract_rules(
    model: CRL,
    data: Iterable | np.ndarray,
    concept_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    pruning: str = "support",
    device: str | torch.device = "cpu",
) -> RuleSet:
    """Read the rules out of `model` (see the module docstring).

    `data` is a loader of the non-augmented training set (the model's own predicted concepts are used)
    or directly a (N, K) array of binary concepts.
    """
    if pruning not in ("support", "logical"):
        raise ValueError(f"pruning must be 'support' or 'logical', got {pruning!r}")
    concept_names = list(concept_names or (f"c{i}" for i in range(model.n_concepts)))
    class_names = list(class_names or (f"class{i}" for i in range(model.n_classes)))
    if len(concept_names) != model.n_concepts or len(class_names) != model.n_classes:
        raise ValueError(f"the model has {model.n_concepts} concepts and {model.n_classes} classes; got "
                         f"{len(concept_names)} concept names and {len(class_names)} class names")
    concepts = np.asarray(data, dtype=np.float32) if isinstance(data, np.ndarray) else concepts_of(model, data, device)
    if concepts.ndim != 2 or concepts.shape[1] != model.n_concepts:
        raise ValueError(f"concepts must be (N, {model.n_concepts}), got {concepts.shape}")
    model = model.cpu().eval()
    acts = node_activations(model, torch.from_numpy(concepts))
    k = model.n_concepts
    literals: list[Formula] = [("var", i) for i in range(k)] + [("not", ("var", i)) for i in range(k)]
    layer_formulas: list[list[Formula]] = []
    previous: list[Formula] = literals
    for li, layer in enumerate(model.logic):
        inputs = previous + [_negate(f) for f in previous] if layer.use_not else previous
        formulas = []
        for nodes, kind in ((layer.conj, "and"), (layer.disj, "or")):
            member = nodes.membership.cpu().numpy()  # (n_in, m)
            for j in range(member.shape[1]):
                formulas.append(_combine(kind, [inputs[i] for i in np.flatnonzero(member[:, j])]))
        if pruning == "support":
            fired = acts[li]
            formulas = [("const", bool(fired[0, j])) if fired[:, j].all() or not fired[:, j].any() else f
                        for j, f in enumerate(formulas)]
        layer_formulas.append(formulas)
        previous = formulas
    # the classifier reads the last layer and, through the skip connection, the one before it
    sources = [(len(layer_formulas), layer_formulas[-1])]
    if model.use_skip:
        sources.append((len(layer_formulas) - 1, layer_formulas[-2]))
    weight = model.classifier.weight.detach().cpu().numpy().astype(np.float64)  # (C, F)
    bias = model.classifier.bias.detach().cpu().numpy().astype(np.float64).copy()
    merged: dict[str, Rule] = {}
    column = 0
    names = list(concept_names)
    for layer_index, formulas in sources:
        for f in formulas:
            w = weight[:, column]
            column += 1
            if f[0] == "const":
                if f[1]:
                    bias += w  # an always-true rule is part of the bias
                continue
            text = _render(f, names)
            if text in merged:
                merged[text].weights = merged[text].weights + w
                merged[text].layer = min(merged[text].layer, layer_index)
            else:
                support = float(_evaluate(f, concepts).mean())
                merged[text] = Rule(f, layer_index, w.copy(), support, text, _count_literals(f))
    rules = [r for r in merged.values() if np.abs(r.weights).max() > 1e-9]
    rules.sort(key=lambda r: -float(np.abs(r.weights).max()))
    return RuleSet(names, list(class_names), bias, rules, pruning)


def load_rules(path: str | Path) -> RuleSet:
    """The rule set of a rules.json file (or of the rules.json in a folder), checked (`RuleSet.from_json`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "rules.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RulesFileError(f"{path}: not found (the learned rules)") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise RulesFileError(f"{path}: not valid JSON ({exc}); expected the learned rules written by CRL") from None
    return RuleSet.from_json(data, path)


# --------------------------------------------------------------------------- rules.json, checked


class RulesFileError(CheckpointError):
    """rules.json is malformed: the message names the file, the key and value, and what was expected."""


_KINDS = ("const", "var", "not", "and", "or")


def _fail(source: str, where: str, value: Any, expected: str) -> NoReturn:
    raise RulesFileError(str(bad_value(source, where, value, expected)))


def _number(source: str, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(source, where, value, "a finite number")
    return float(value)


def _names(source: str, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        _fail(source, f"'{key}'", value, "a non-empty list of names")
    if len(set(value)) != len(value):
        _fail(source, f"'{key}'", value, "names that differ")
    return list(value)


def _formula(source: str, where: str, f: Any, n_concepts: int, depth: int = 0) -> Formula:
    """A formula of rules.json checked: known operators only, concept indices in range."""
    if depth > 64:
        _fail(source, where, "...", "a formula nested at most 64 deep")
    if not isinstance(f, list) or len(f) != 2 or f[0] not in _KINDS:
        _fail(source, where, f, f"a formula [kind, argument] with kind one of {', '.join(_KINDS)}")
    kind, arg = f
    if kind == "const":
        if not isinstance(arg, bool):
            _fail(source, where, f, '["const", true or false]')
        return ("const", arg)
    if kind == "var":
        if isinstance(arg, bool) or not isinstance(arg, int) or not 0 <= arg < n_concepts:
            _fail(source, where, f, f'["var", k] with k a concept index in [0, {n_concepts - 1}]')
        return ("var", arg)
    if kind == "not":
        return ("not", _formula(source, where, arg, n_concepts, depth + 1))
    if not isinstance(arg, list) or not arg:
        _fail(source, where, f, f'["{kind}", [formula, ...]] with at least one formula')
    return (kind, tuple(_formula(source, where, c, n_concepts, depth + 1) for c in arg))


def _parse_rules(data: Any, source: str) -> RuleSet:
    if not isinstance(data, dict):
        _fail(source, "the file", data, "a JSON object with 'concept_names', 'class_names', 'bias' and 'rules'")
    missing = [k for k in ("concept_names", "class_names", "bias", "rules") if k not in data]
    if missing:
        raise RulesFileError(f"{source}: no {', '.join(repr(k) for k in missing)}; expected the keys 'concept_names', "
                             f"'class_names', 'bias' and 'rules' (found {sorted(data)[:10]})")
    concepts = _names(source, "concept_names", data["concept_names"])
    classes = _names(source, "class_names", data["class_names"])
    bias = data["bias"]
    if not isinstance(bias, list) or len(bias) != len(classes):
        _fail(source, "'bias'", bias, f"a list of {len(classes)} numbers, one per class {classes}")
    bias_arr = np.array([_number(source, f"'bias'[{c}]", b) for c, b in enumerate(bias)])
    pruning = data.get("pruning", "support")
    if pruning not in ("support", "logical"):
        _fail(source, "'pruning'", pruning, "'support' or 'logical'")
    if not isinstance(data["rules"], list):
        _fail(source, "'rules'", data["rules"], "a list of rules")
    rules = []
    for i, r in enumerate(data["rules"]):
        at = f"'rules'[{i}]"
        if not isinstance(r, dict):
            _fail(source, at, r, "an object with 'formula', 'weights', 'layer', 'support'")
        lacking = [k for k in ("formula", "weights", "layer", "support") if k not in r]
        if lacking:
            raise RulesFileError(f"{source}: {at} has no {', '.join(repr(k) for k in lacking)}")
        formula = _formula(source, f"{at}['formula']", r["formula"], len(concepts))
        weights = r["weights"]
        if not isinstance(weights, dict) or sorted(weights) != sorted(classes):
            _fail(source, f"{at}['weights']", weights, f"one weight per class {classes}")
        w = np.array([_number(source, f"{at}['weights'][{c!r}]", weights[c]) for c in classes])
        layer = r["layer"]
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            _fail(source, f"{at}['layer']", layer, "an integer >= 0")
        support = _number(source, f"{at}['support']", r["support"])
        if not 0.0 <= support <= 1.0:
            _fail(source, f"{at}['support']", r["support"], "a fraction in [0, 1]")
        text = _render(formula, concepts)  # rendered from the formula: an edited 'rule' text cannot mislead
        rules.append(Rule(formula=formula, layer=layer, weights=w, support=support, text=text,
                          length=_count_literals(formula)))
    compact = None
    if data.get("compact") is not None:
        compact = parse_compact(source, data["compact"], concepts, classes)
    return RuleSet(concepts, classes, bias_arr, rules, pruning, compact)


#: defaults of CRLCompactConfig (crl.config)
EXACT_MAX_CONCEPTS = 16
PREFIX_FIDELITY = 0.95


@dataclass
class CompactClass:
    """One class's compact rule: `formula` holds exactly when the rule model predicts the class (exact mode)."""

    class_name: str
    formula: Formula
    text: str
    literals: int
    terms: int
    fidelity_train: float
    fidelity_test: float | None = None

    def evaluate(self, concepts: np.ndarray) -> np.ndarray:
        """(N, K) binary concepts -> (N,) bool: whether the formula holds."""
        return _evaluate(self.formula, np.asarray(concepts))

    def to_json(self) -> dict[str, Any]:
        return {"class": self.class_name, "rule": self.text, "formula": _to_jsonable(self.formula),
                "literals": self.literals, "terms": self.terms, "fidelity_train": self.fidelity_train,
                "fidelity_test": self.fidelity_test}


@dataclass
class PrefixClass:
    """One class in prefix mode: how many of the kept rules argue for it (positive weight on the class), their
    literals in all, and the one-vs-rest agreement of "the prefix predicts the class" with "the network predicts
    the class" (the per-class fidelity of exact mode, for the prefix)."""

    class_name: str
    rules: int
    literals: int
    fidelity_train: float
    fidelity_test: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"class": self.class_name, "rules": self.rules, "literals": self.literals,
                "fidelity_train": self.fidelity_train, "fidelity_test": self.fidelity_test}


@dataclass
class CompactRules:
    """The compact view of a rule set: per-class formulas ("exact") or a prefix of the rule list ("prefix").

    Fidelities are agreements with the network's class: per class in exact mode (formula true <=> the network
    predicts the class), of the argmax in prefix mode; `_train` on the training images the rules were read
    on, `_test` on held-out test images (None when none were given).
    """

    method: str  # "exact" | "prefix"
    classes: list[CompactClass] = field(default_factory=list)  # exact mode
    prefix_rules: int | None = None  # prefix mode: how many of the rules (by importance) are kept
    target_fidelity: float | None = None
    fidelity_train: float | None = None  # prefix mode
    fidelity_test: float | None = None  # prefix mode
    exact_max_concepts: int = EXACT_MAX_CONCEPTS
    per_class: list[PrefixClass] = field(default_factory=list)  # prefix mode (empty in files written before it)

    def for_class(self, name: str) -> CompactClass | None:
        return next((c for c in self.classes if c.class_name == name), None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "exact_max_concepts": self.exact_max_concepts}
        if self.method == "exact":
            out["classes"] = [c.to_json() for c in self.classes]
        else:
            out.update(prefix_rules=self.prefix_rules, target_fidelity=self.target_fidelity,
                       fidelity_train=self.fidelity_train, fidelity_test=self.fidelity_test,
                       per_class=[c.to_json() for c in self.per_class])
        return out

    def to_text(self, rules: RuleSet) -> list[str]:
        """Lines of the compact view (for rules.txt and `crl rules`)."""
        if self.method == "exact":
            lines = ["Compact rules: per class, the minimal formula equal to the rule model's decision on every "
                     "concept pattern seen in training (fidelity: agreement with the network's class)"]
            for c in self.classes:
                test = "" if c.fidelity_test is None else f", test {c.fidelity_test:.3f}"
                lines.append(f"  {c.class_name} <=> {c.text}    [{c.literals} literals; fidelity train "
                             f"{c.fidelity_train:.3f}{test}]")
            return [*lines, ""]
        test = "" if self.fidelity_test is None else f", test {self.fidelity_test:.3f}"
        lines = [f"Compact rules: {len(rules.concept_names)} concepts (> {self.exact_max_concepts}: no exact "
                 f"formula); the {self.prefix_rules} most important of {len(rules.rules)} rules reach fidelity "
                 f"train {self.fidelity_train:.3f}{test} (target {self.target_fidelity:.2f} on train)"]
        prefix = by_importance(rules)[:self.prefix_rules]
        summary = {c.class_name: c for c in self.per_class}
        for c, name in enumerate(rules.class_names):
            kept = [r for r in prefix if abs(r.weights[c]) >= 1e-6]
            fid = ""
            if name in summary:
                one = summary[name]
                test_c = "" if one.fidelity_test is None else f", test {one.fidelity_test:.3f}"
                fid = (f" [{one.rules} rules for it, {one.literals} literals; fidelity train "
                       f"{one.fidelity_train:.3f}{test_c}]")
            lines.append(f"  {name} (bias {rules.bias[c]:+.3f}){fid}: "
                         + ("; ".join(f"{r.weights[c]:+.3f} {r.text}" for r in kept) or "no rule"))
        return [*lines, ""]


def by_importance(rules: RuleSet) -> list:
    """The rules by importance (largest |weight| over the classes first; ties keep their order)."""
    return sorted(rules.rules, key=lambda r: -rules.importance(r))


def parse_compact(source: str, data: Any, concept_names: list[str], class_names: list[str]) -> CompactRules:
    """The "compact" entry of a rules.json, checked; anything malformed is a `RulesFileError` naming `source`."""
    def fraction(where: str, value: Any, optional: bool = True) -> float | None:
        if value is None and optional:
            return None
        number = _number(source, where, value)
        if not 0.0 <= number <= 1.0:
            _fail(source, where, value, "a fraction in [0, 1]")
        return number

    if not isinstance(data, dict) or data.get("method") not in ("exact", "prefix"):
        _fail(source, "'compact'", data, "an object with 'method' 'exact' or 'prefix'")
    limit = data.get("exact_max_concepts", EXACT_MAX_CONCEPTS)
    if isinstance(limit, bool) or not isinstance(limit, int):
        _fail(source, "'compact'['exact_max_concepts']", limit, "an integer")
    if data["method"] == "prefix":
        n = data.get("prefix_rules")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            _fail(source, "'compact'['prefix_rules']", n, "an integer >= 0")
        per_class = []
        entries = data.get("per_class", [])
        if not isinstance(entries, list) or (entries and [e.get("class") if isinstance(e, dict) else None
                                                          for e in entries] != list(class_names)):
            _fail(source, "'compact'['per_class']", entries, f"one entry per class {class_names}, in that order")
        for i, e in enumerate(entries):
            at = f"'compact'['per_class'][{i}]"
            counts = [e.get("rules"), e.get("literals")]
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in counts):
                _fail(source, f"{at}['rules'/'literals']", counts, "integers >= 0")
            per_class.append(PrefixClass(e["class"], counts[0], counts[1],
                                         fraction(f"{at}['fidelity_train']", e.get("fidelity_train"), False),
                                         fraction(f"{at}['fidelity_test']", e.get("fidelity_test"))))
        return CompactRules("prefix", prefix_rules=n,
                            target_fidelity=fraction("'compact'['target_fidelity']", data.get("target_fidelity")),
                            fidelity_train=fraction("'compact'['fidelity_train']", data.get("fidelity_train")),
                            fidelity_test=fraction("'compact'['fidelity_test']", data.get("fidelity_test")),
                            exact_max_concepts=limit, per_class=per_class)
    entries = data.get("classes")
    if not isinstance(entries, list) or [e.get("class") if isinstance(e, dict) else None for e in entries] \
            != list(class_names):
        _fail(source, "'compact'['classes']", entries, f"one entry per class {class_names}, in that order")
    classes = []
    for i, e in enumerate(entries):
        at = f"'compact'['classes'][{i}]"
        formula = _formula(source, f"{at}['formula']", e.get("formula"), len(concept_names))
        terms = e.get("terms", 0)
        if isinstance(terms, bool) or not isinstance(terms, int) or terms < 0:
            _fail(source, f"{at}['terms']", terms, "an integer >= 0")
        classes.append(CompactClass(e["class"], formula, _render(formula, concept_names), _count_literals(formula),
                                    terms, fraction(f"{at}['fidelity_train']", e.get("fidelity_train"), False),
                                    fraction(f"{at}['fidelity_test']", e.get("fidelity_test"))))
    return CompactRules("exact", classes=classes, exact_max_concepts=limit)
