"""``conf/base.yaml`` and the README's configuration table, generated from the config dataclasses.

The dataclasses in :mod:`longtail.core.config` are the one source of every key: its type (the
annotation), its default (the field's default) and its meaning (the attribute docstring, the string
literal on the line after the field; a section's meaning is its class docstring). This module
renders them as the commented ``conf/base.yaml`` and as the table between
``<!-- config-table:start -->`` and ``<!-- config-table:end -->`` in ``README.md``;
``tests/test_configdoc.py`` fails when either file differs from what it renders.

Usage::

    python -m longtail.core.configdoc --write   # rewrite conf/base.yaml and the README table
    python -m longtail.core.configdoc --check   # exit 1, naming the stale files, if they differ
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import sys
import textwrap
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from longtail.core.config import BASE_CONF, Config

README = BASE_CONF.parents[1] / "README.md"
TABLE_START = "<!-- config-table:start -->"
TABLE_END = "<!-- config-table:end -->"
YAML_WIDTH = 100


@dataclass(frozen=True)
class KeyDoc:
    """One config key as the documentation shows it."""

    key: str  # dotted, e.g. "recommend.k"
    type: str  # e.g. "int", "one of auto, cpu, cuda", "string or null"
    default: str  # the default in YAML flow syntax, e.g. "null", "[10, 20]"
    doc: str


class MissingDocError(ValueError):
    """A config field has no attribute docstring."""


def attribute_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass: ``{field: text}``, whitespace folded to single spaces.

    Example:
        >>> from longtail.core.config import RunConfig
        >>> attribute_docs(RunConfig)["id"][:6]
        'Run id'
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def class_doc(cls: type) -> str:
    """The first paragraph of a section class's own docstring (not dataclass's generated signature)."""
    doc = cls.__dict__.get("__doc__") or ""
    if not doc or doc.startswith(cls.__name__ + "("):
        raise MissingDocError(f"config section {cls.__name__} has no docstring")
    return " ".join(doc.strip().split("\n\n")[0].split())


def type_text(tp: Any) -> str:
    """A reader's name for a field's type: ``int``, ``number``, ``one of a, b``, ``list of int``..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        text = " or ".join(type_text(a) for a in rest)
        return text + " or null" if type(None) in args else text
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is tuple:
        return f"list of {type_text(args[0])}"
    return {bool: "bool", int: "int", float: "number", str: "string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def yaml_value(value: Any) -> str:
    """A default in YAML flow syntax, as ``conf/base.yaml`` holds it."""
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def keys(cls: type = Config, prefix: str = "") -> Iterator[KeyDoc]:
    """Every leaf key of ``cls`` in field order, sections depth first.

    Raises:
        MissingDocError: a field without an attribute docstring (it names the key).
    """
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from keys(tp, key + ".")  # type: ignore[arg-type]
            continue
        if f.name not in docs:
            raise MissingDocError(
                f"config key '{key}' has no doc: put a string literal on the line after the field in "
                f"lib/longtail/core/config.py"
            )
        yield KeyDoc(key, type_text(tp), yaml_value(getattr(defaults, f.name)), docs[f.name])


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}" for line in textwrap.wrap(text, width=YAML_WIDTH - len(indent) - 2)]


def _yaml_section(cls: type, indent: str, prefix: str) -> list[str]:
    lines: list[str] = []
    hints = typing.get_type_hints(cls)
    by_key = {k.key: k for k in keys(cls, prefix)}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += _comment(class_doc(tp), indent)  # type: ignore[arg-type]
            lines.append(f"{indent}{f.name}:")
            lines += _yaml_section(tp, indent + "  ", f"{prefix}{f.name}.")  # type: ignore[arg-type]
            continue
        k = by_key[f"{prefix}{f.name}"]
        allowed = f" Allowed: {k.type.removeprefix('one of ')}." if k.type.startswith("one of") else ""
        lines += _comment(k.doc + allowed, indent)
        lines.append(f"{indent}{f.name}: {k.default}")
    return lines


def render_yaml() -> str:
    """``conf/base.yaml``: every key with its default, each under its doc as a comment."""
    head = [
        "# longtail base configuration: every key with its default.",
        "# GENERATED from the dataclasses in lib/longtail/core/config.py (the one source of keys,",
        "# types, defaults and docs) by `python -m longtail.core.configdoc --write`: edit those, then",
        "# regenerate. Profiles (--conf FILE) and --set key=value overrides apply on top, in that order.",
        "# Spark tuning belongs in Spark profiles (conf/spark/*.conf), not here.",
    ]
    body: list[str] = []
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        section = hints[f.name]
        body += ["", *_comment(class_doc(section), ""), f"{f.name}:"]
        body += _yaml_section(section, "  ", f"{f.name}.")
    return "\n".join(head + body) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table() -> str:
    """The README's configuration table: key, type, default, meaning."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for k in keys():
        rows.append(f"| `{k.key}` | {_cell(k.type)} | `{_cell(k.default)}` | {_cell(k.doc)} |")
    return "\n".join(rows)


def readme_with_table(readme: str) -> str:
    """``readme`` with the text between the table markers replaced by :func:`render_table`."""
    start, end = readme.find(TABLE_START), readme.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"README.md lacks the markers {TABLE_START} ... {TABLE_END}")
    return readme[: start + len(TABLE_START)] + "\n" + render_table() + "\n" + readme[end:]


def stale(base: Path = BASE_CONF, readme: Path = README) -> list[Path]:
    """The generated files whose content differs from what the dataclasses render."""
    out = []
    if not base.exists() or base.read_text(encoding="utf-8") != render_yaml():
        out.append(base)
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    if not text or text != readme_with_table(text):
        out.append(readme)
    return out


def write(base: Path = BASE_CONF, readme: Path = README) -> list[Path]:
    """Rewrite the stale generated files; returns them."""
    changed = stale(base, readme)
    if base in changed:
        base.write_text(render_yaml(), encoding="utf-8")
    if readme in changed:
        readme.write_text(readme_with_table(readme.read_text(encoding="utf-8")), encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m longtail.core.configdoc", description=__doc__.split("\n\n")[0]
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite conf/base.yaml and the README table")
    mode.add_argument("--check", action="store_true", help="exit 1 if either is stale")
    args = p.parse_args(argv)
    if args.write:
        for path in write():
            print(f"wrote {path}")
        return 0
    late = stale()
    for path in late:
        print(f"stale: {path} (run python -m longtail.core.configdoc --write)", file=sys.stderr)
    return 1 if late else 0


if __name__ == "__main__":
    sys.exit(main())
