"""Boolean rules over binary concepts: a safe parser (no `eval`), evaluation and truth tables.

Grammar (usual precedence: `~` binds tighter than `&`, which binds tighter than `|`)::

    rule    := or
    or      := and ("|" and)*
    and     := not ("&" not)*
    not     := "~" not | atom
    atom    := NAME | QUOTED | "(" or ")"

A NAME is a concept name made of letters, digits and `_` (not starting with a digit); names with
other characters (spaces, hyphens) are written in double quotes or backticks: `"nucleus shape" & ~x`.

    >>> rule = parse_rule("(irregular_border & blue_white_veil) | streaks", names)
    >>> rule.evaluate(concepts)          # concepts (N, K) of 0/1 -> (N,) bool
    >>> combos, outputs = truth_table(rule)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "And",
    "Not",
    "Or",
    "Rule",
    "RuleSyntaxError",
    "UnknownConceptError",
    "Var",
    "parse_rule",
    "truth_table",
]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = {"&": "and", "|": "or", "~": "not", "(": "lparen", ")": "rparen"}
MAX_TRUTH_TABLE_VARIABLES = 20


class RuleSyntaxError(ValueError):
    """A rule that does not parse; `position` is the 0-based character offset of the problem."""

    def __init__(self, message: str, expr: str, position: int):
        self.expr = expr
        self.position = position
        self.reason = message
        super().__init__(f"{message} at position {position} of the rule:\n  {expr}\n  {' ' * position}^")


class UnknownConceptError(ValueError):
    """A rule names a concept that is not in the concept list; `names` are the unknown ones."""

    def __init__(self, message: str, names: Sequence[str]):
        self.names = list(names)
        super().__init__(message)


# -- syntax tree --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Var:
    """A concept, true where its value is 1."""

    name: str


@dataclass(frozen=True)
class Not:
    arg: Node


@dataclass(frozen=True)
class And:
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    args: tuple[Node, ...]


Node = Var | Not | And | Or


def _format_name(name: str) -> str:
    if _NAME.fullmatch(name):
        return name
    return f"`{name}`" if '"' in name else f'"{name}"'


def _format(node: Node) -> str:
    if isinstance(node, Var):
        return _format_name(node.name)
    if isinstance(node, Not):
        inner = _format(node.arg)
        return f"~{inner}" if isinstance(node.arg, (Var, Not)) else f"~({inner})"
    op = " & " if isinstance(node, And) else " | "
    parts = []
    for arg in node.args:
        text = _format(arg)
        # parentheses where precedence needs them, and around a conjunction inside a disjunction,
        # which precedence does not need but readers do: "(a & b) | c"
        parts.append(f"({text})" if isinstance(arg, (And, Or)) else text)
    return op.join(parts)


def _variables(node: Node, out: list[str]) -> None:
    if isinstance(node, Var):
        if node.name not in out:
            out.append(node.name)
    elif isinstance(node, Not):
        _variables(node.arg, out)
    else:
        for arg in node.args:
            _variables(arg, out)


def _evaluate(node: Node, values: Mapping[str, np.ndarray]) -> np.ndarray:
    if isinstance(node, Var):
        return values[node.name]
    if isinstance(node, Not):
        return ~_evaluate(node.arg, values)
    results = [_evaluate(arg, values) for arg in node.args]
    out = results[0].copy()
    for r in results[1:]:
        out = out & r if isinstance(node, And) else out | r
    return out


# -- tokens and parser --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # "name", "and", "or", "not", "lparen", "rparen", "end"
    text: str
    position: int


def _tokenize(expr: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(expr):
        ch = expr[i]
        if ch.isspace():
            i += 1
        elif ch in _OPERATORS:
            tokens.append(_Token(_OPERATORS[ch], ch, i))
            i += 1
        elif ch in "\"`":
            end = expr.find(ch, i + 1)
            if end < 0:
                raise RuleSyntaxError(f"unterminated quoted name (no closing {ch})", expr, i)
            name = expr[i + 1 : end]
            if not name.strip():
                raise RuleSyntaxError("empty quoted name", expr, i)
            tokens.append(_Token("name", name, i))
            i = end + 1
        else:
            match = _NAME.match(expr, i)
            if match is None:
                raise RuleSyntaxError(
                    f"unexpected character {ch!r}; a rule uses concept names, '&', '|', '~' and parentheses",
                    expr,
                    i,
                )
            tokens.append(_Token("name", match.group(), i))
            i = match.end()
    tokens.append(_Token("end", "", len(expr)))
    return tokens


_DESCRIBE = {"and": "'&'", "or": "'|'", "not": "'~'", "lparen": "'('", "rparen": "')'", "end": "the end of the rule"}


class _Parser:
    def __init__(self, expr: str):
        self.expr = expr
        self.tokens = _tokenize(expr)
        self.pos = 0
        self.names: list[_Token] = []

    @property
    def current(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def error(self, message: str, token: _Token | None = None) -> RuleSyntaxError:
        token = token or self.current
        return RuleSyntaxError(message, self.expr, token.position)

    def parse(self) -> Node:
        if self.current.kind == "end":
            raise self.error("empty rule; expected a concept name, '~' or '('")
        node = self.parse_or()
        if self.current.kind != "end":
            tok = self.current
            hint = " (unbalanced parentheses?)" if tok.kind == "rparen" else "; expected '&', '|' or the end"
            raise self.error(f"unexpected {tok.text!r}{hint}")
        return node

    def parse_or(self) -> Node:
        args = [self.parse_and()]
        while self.current.kind == "or":
            self.take()
            args.append(self.parse_and())
        return args[0] if len(args) == 1 else Or(tuple(_flatten(args, Or)))

    def parse_and(self) -> Node:
        args = [self.parse_not()]
        while self.current.kind == "and":
            self.take()
            args.append(self.parse_not())
        return args[0] if len(args) == 1 else And(tuple(_flatten(args, And)))

    def parse_not(self) -> Node:
        if self.current.kind == "not":
            self.take()
            return Not(self.parse_not())
        return self.parse_atom()

    def parse_atom(self) -> Node:
        tok = self.current
        if tok.kind == "name":
            self.take()
            self.names.append(tok)
            return Var(tok.text)
        if tok.kind == "lparen":
            self.take()
            if self.current.kind == "rparen":
                raise self.error("empty parentheses; expected a concept name, '~' or '('")
            node = self.parse_or()
            if self.current.kind != "rparen":
                found = _DESCRIBE.get(self.current.kind, repr(self.current.text))
                if self.current.kind == "name":
                    found = f"{self.current.text!r}"
                raise RuleSyntaxError(
                    f"missing ')' to close the '(' at position {tok.position}; found {found}",
                    self.expr,
                    self.current.position,
                )
            self.take()
            return node
        found = _DESCRIBE[tok.kind]
        raise self.error(f"expected a concept name, '~' or '(' but found {found}")


def _flatten(args: list[Node], kind: type) -> list[Node]:
    out: list[Node] = []
    for arg in args:
        out.extend(arg.args if isinstance(arg, kind) else (arg,))  # type: ignore[union-attr]
    return out


# -- the rule -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A parsed Boolean rule over the concepts `concept_names` (in the column order of the data).

    `str(rule)` is a canonical form (flattened chains, parentheses around every nested `&`/`|` group);
    parsing it gives an equal rule.
    """

    node: Node
    concept_names: tuple[str, ...]
    source: str = field(default="", compare=False)

    @property
    def variables(self) -> tuple[str, ...]:
        """The concepts the rule uses, in the order of `concept_names`."""
        used: list[str] = []
        _variables(self.node, used)
        return tuple(n for n in self.concept_names if n in used)

    def __str__(self) -> str:
        return _format(self.node)

    def evaluate(self, concepts: np.ndarray) -> np.ndarray:
        """Evaluate on concepts (N, K) (or one row (K,)) of 0/1 (bool, int or float) -> (N,) bool.

        Columns follow `concept_names`; a value above 0.5 is true. NaN (unannotated) is an error.
        """
        arr = np.asarray(concepts)
        single = arr.ndim == 1
        if single:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != len(self.concept_names):
            raise ValueError(
                f"rule {self}: concepts must be (N, {len(self.concept_names)}) in the order "
                f"{list(self.concept_names)}, got shape {np.asarray(concepts).shape}"
            )
        if arr.dtype.kind == "f" and np.isnan(arr).any():
            row, col = np.argwhere(np.isnan(arr))[0]
            raise ValueError(
                f"rule {self}: concept {self.concept_names[col]!r} is NaN (unannotated) in row {row}; "
                "a rule needs every concept it reads"
            )
        index = {name: k for k, name in enumerate(self.concept_names)}
        values = {name: arr[:, index[name]] > 0.5 for name in self.variables}
        out = self.evaluate_named(values, n=arr.shape[0])
        return out[0:1] if single else out

    def evaluate_named(self, values: Mapping[str, np.ndarray], n: int | None = None) -> np.ndarray:
        """Evaluate on a mapping concept name -> (N,) 0/1 values; only the rule's variables are read."""
        missing = [v for v in self.variables if v not in values]
        if missing:
            raise ValueError(f"rule {self}: no values for concept(s) {missing}")
        cols = {name: np.asarray(values[name]) > 0.5 for name in self.variables}
        if not cols:  # cannot happen for a parsed rule, which names at least one concept
            raise ValueError("rule has no variables")
        out = _evaluate(self.node, cols)
        return np.asarray(out, dtype=bool).reshape(-1) if n is None else np.broadcast_to(out, (n,)).copy()

    __call__ = evaluate


def nearest_name(name: str, names: Sequence[str]) -> str | None:
    """The valid name closest to a misspelt one (similar spelling, else one containing it), or None."""
    near = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    if near:
        return near[0]
    low = name.lower()
    containing = [n for n in names if low in n.lower() or n.lower() in low]
    return containing[0] if containing else None


def parse_rule(expr: str, concept_names: Sequence[str]) -> Rule:
    """Parse `expr` (names, `&`, `|`, `~`, parentheses) into a Rule over `concept_names`.

    Raises RuleSyntaxError (a ValueError) naming the bad token and its position, or
    UnknownConceptError naming each unknown concept with the nearest valid name.
    """
    if not isinstance(expr, str):
        raise TypeError(f"a rule is a string, got {type(expr).__name__}")
    names = tuple(str(n) for n in concept_names)
    parser = _Parser(expr)
    node = parser.parse()
    known = set(names)
    unknown = [tok for tok in parser.names if tok.text not in known]
    if unknown:
        parts = []
        for tok in unknown:
            near = nearest_name(tok.text, names)
            hint = f"; did you mean {near!r}?" if near else ""
            parts.append(f"unknown concept {tok.text!r} at position {tok.position}{hint}")
        raise UnknownConceptError(
            "; ".join(parts) + f" (rule: {expr!r}; known concepts: {', '.join(names)})",
            [tok.text for tok in unknown],
        )
    return Rule(node, names, expr)


def truth_table(rule: Rule, names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every combination of `names` (default: the rule's variables) and the rule's value on it.

    Returns (combos uint8 (2**K, K), outputs bool (2**K,)); row r holds the binary digits of r,
    the first name being the most significant, as in a textbook table.
    """
    names = tuple(rule.variables if names is None else names)
    missing = [v for v in rule.variables if v not in names]
    if missing:
        raise ValueError(f"truth_table: the rule reads {missing}, which are not among names {list(names)}")
    k = len(names)
    if k > MAX_TRUTH_TABLE_VARIABLES:
        raise ValueError(f"truth_table: {k} variables give 2**{k} rows; at most {MAX_TRUTH_TABLE_VARIABLES} allowed")
    rows = np.arange(2**k, dtype=np.int64)
    combos = ((rows[:, None] >> np.arange(k - 1, -1, -1)[None, :]) & 1).astype(np.uint8)
    outputs = rule.evaluate_named({name: combos[:, j] for j, name in enumerate(names)}, n=2**k)
    return combos, outputs
