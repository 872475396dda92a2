"""Labelled prompt sets: prompts with one concept label per kind, the one place that knows which concepts exist.

A concept is `KIND:VALUE` (`style:neon`, `artist:van gogh`, `nudity:yes`). A prompt file is
`.csv` or `.jsonl` with a `prompt` column and any number of label columns (each column is a
kind, each non-empty value a concept of that kind; a JSON `true` is the value `yes`), or any
other text file (`.txt`): one unlabelled prompt per line.
minicanvas's styles x objects are the built-in set (`ConceptSet.minicanvas()`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import UserError

PROMPT_COLUMN = "prompt"
RESERVED_KINDS = (PROMPT_COLUMN, "text")  # the store keeps the prompt text under prompts/text
KIND_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
LABELLED_SUFFIXES = (".csv", ".jsonl")  # any other text file holds one unlabelled prompt per line


@dataclass(frozen=True, order=True)
class Concept:
    """One concept: a kind and a value of it."""

    kind: str
    value: str

    @classmethod
    def parse(cls, text: str) -> "Concept":
        """'style:neon' -> Concept('style', 'neon'); the one place that splits."""
        kind, sep, value = str(text).strip().partition(":")
        if not sep or not kind.strip() or not value.strip():
            raise UserError(f"bad concept {text!r}; write KIND:VALUE, e.g. style:neon or artist:van gogh")
        return cls(kind.strip(), value.strip())

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def parse_concepts(text: str) -> list[str]:
    """'style:neon,object:star' -> ['style:neon', 'object:star'] (syntax only; a ConceptSet or the scores check existence)."""
    items = [t for t in str(text).split(",") if t.strip()]
    if not items:
        raise UserError(f"no concepts in {text!r}; give e.g. style:neon,object:star")
    return [str(Concept.parse(t)) for t in items]


def check_kind(kind: str, where: str) -> str:
    """A kind name usable as a column and an HDF5 dataset name, or a clear error."""
    if not KIND_PATTERN.fullmatch(kind) or kind in RESERVED_KINDS:
        raise UserError(f"bad concept kind {kind!r} in {where}: a kind is a column name of letters, digits, '_' or '-' "
                        f"(not {' or '.join(map(repr, RESERVED_KINDS))})")
    return kind


@dataclass(frozen=True)
class ConceptSet:
    """Prompts with their labels: `rows[i]` = {'prompt': text, kind: value or '' for every kind}."""

    name: str
    kinds: tuple[str, ...]
    rows: tuple[dict, ...]

    @classmethod
    def from_rows(cls, rows: Iterable[str | dict], name: str = "prompts", kinds: Sequence[str] | None = None) -> "ConceptSet":
        """Rows given as plain prompts (no labels) or dicts with a 'prompt' key and a label per kind."""
        dicts = [{PROMPT_COLUMN: r} if isinstance(r, str) else dict(r) for r in rows]
        if not dicts:
            raise UserError(f"the prompt list of {name} is empty; give at least one prompt")
        if kinds is None:
            kinds = list(dict.fromkeys(k for r in dicts for k in r if k != PROMPT_COLUMN))
        kinds = tuple(check_kind(str(k), name) for k in kinds)
        out = []
        for i, r in enumerate(dicts):
            text = r.get(PROMPT_COLUMN)
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"prompt {i + 1} of {name} has no text in its {PROMPT_COLUMN!r} field")
            row = {PROMPT_COLUMN: text.strip()}
            for k in kinds:
                value = _label_text(r.get(k), name, i, k)
                if "," in value or ":" in value:
                    raise UserError(f"label {value!r} of kind {k!r} (prompt {i + 1} of {name}) contains ',' or ':'; "
                                    "concept values are written KIND:VALUE in comma lists")
                row[k] = value
            out.append(row)
        return cls(str(name), kinds, tuple(out))

    @classmethod
    def from_file(cls, path: str | Path) -> "ConceptSet":
        """Read a .txt, .csv or .jsonl prompt file (see the module docstring)."""
        p = Path(path)
        if p.is_dir():
            raise UserError(f"prompt file {str(path)!r} is a folder; give a .txt, .csv or .jsonl file")
        if not p.is_file():
            raise UserError(f"prompt file {str(path)!r} not found")
        suffix = p.suffix.lower()
        try:
            text = p.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise UserError(f"prompt file {str(path)!r} is not UTF-8 text") from None
        if "\x00" in text:
            raise UserError(f"prompt file {str(path)!r} is not a text file (it holds NUL bytes)")
        name = str(path)
        if suffix not in LABELLED_SUFFIXES:  # .txt or any other text file: one prompt per line
            rows = [line.strip() for line in text.splitlines() if line.strip()]
            if not rows:
                raise UserError(f"prompt file {name!r} is empty; write one prompt per line")
            return cls.from_rows(rows, name)
        if suffix == ".csv":
            reader = csv.DictReader(io.StringIO(text))
            columns = [c.strip() for c in (reader.fieldnames or [])]
            if PROMPT_COLUMN not in columns:
                raise UserError(f"prompt file {name!r} has no {PROMPT_COLUMN!r} column (its columns: {', '.join(columns) or 'none'})")
            try:
                rows = [{(k or "").strip(): v for k, v in r.items()} for r in reader if any((v or "").strip() for v in r.values() if isinstance(v, str))]
            except csv.Error as err:
                raise UserError(f"prompt file {name!r} is not valid CSV ({err})") from None
            return cls.from_rows(rows, name, kinds=[c for c in columns if c != PROMPT_COLUMN])
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise UserError(f"line {n} of prompt file {name!r} is not JSON; a .jsonl file holds one JSON object per line") from None
            if not isinstance(obj, dict) or PROMPT_COLUMN not in obj:
                raise UserError(f"line {n} of prompt file {name!r} is not a JSON object with a {PROMPT_COLUMN!r} field")
            rows.append(obj)
        return cls.from_rows(rows, name)

    @classmethod
    def minicanvas(cls) -> "ConceptSet":
        """Every minicanvas style x object prompt, labelled."""
        from .minicanvas.world import all_prompts

        return cls.from_rows(all_prompts(), "minicanvas", kinds=("style", "object"))

    @property
    def prompts(self) -> list[str]:
        return [r[PROMPT_COLUMN] for r in self.rows]

    def values(self, kind: str) -> list[str]:
        """The distinct non-empty values of a kind, sorted."""
        return sorted({r[kind] for r in self.rows if r.get(kind)})

    def concepts(self, kind: str | None = None) -> list[str]:
        """Every concept (kinds in order, values sorted), or those of one kind."""
        return [f"{k}:{v}" for k in (self.kinds if kind is None else (kind,)) for v in self.values(k)]

    def labels(self, row: dict) -> list[str]:
        """The concepts of one row."""
        return [f"{k}:{row[k]}" for k in self.kinds if row.get(k)]

    def check(self, concept: str) -> Concept:
        """The concept, or one clear error naming the valid kinds or values."""
        c = Concept.parse(concept)
        if c.kind not in self.kinds:
            raise UserError(f"unknown concept kind {c.kind!r} in {concept!r}; {self.name} has the kinds {', '.join(self.kinds) or '(none: unlabelled prompts)'}")
        if c.value not in self.values(c.kind):
            raise UserError(f"unknown {c.kind} {c.value!r}; {self.name} has the {c.kind} values {', '.join(self.values(c.kind))}")
        return c

    def digest(self) -> str:
        """A short content hash (prompts and labels), for provenance."""
        body = json.dumps({"kinds": self.kinds, "rows": self.rows}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]


def _label_text(value, name: str, i: int, kind: str) -> str:
    """A label cell as text: None / NaN / '' mean unlabelled; numbers and booleans are written as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, (int, float, str)):
        text = str(value).strip()
        return "" if text.lower() == "nan" else text
    raise UserError(f"label of kind {kind!r} for prompt {i + 1} of {name} is a {type(value).__name__}; give text")
