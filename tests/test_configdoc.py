"""The config dataclasses are the one source of keys: base.yaml and the README table follow them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from longtail.core import configdoc
from longtail.core.config import BASE_CONF, Config, load_config


def test_base_yaml_and_readme_table_are_generated_from_the_dataclasses():
    # Fails after a key, default or doc changes in core/config.py until the files are regenerated.
    assert configdoc.stale() == [], "run: python -m longtail.core.configdoc --write"


def test_base_yaml_is_found_and_holds_exactly_the_defaults():
    assert BASE_CONF.is_file()
    assert load_config(base=True) == Config() == load_config(base=False)
    loaded = yaml.safe_load(BASE_CONF.read_text())
    assert set(loaded) == {f.name for f in dataclasses.fields(Config)}


def test_every_key_has_type_default_and_doc():
    docs = list(configdoc.keys())
    assert len(docs) == len({d.key for d in docs}) > 60
    by_key = {d.key: d for d in docs}
    assert by_key["recommend.k"] == configdoc.KeyDoc("recommend.k", "int", "10", "List length.")
    assert by_key["lake.engine"].type == "one of auto, delta-rs, delta-spark"
    assert by_key["evaluate.k"].default == "[10, 20]"
    assert by_key["encoder.arrow_batch_rows"].type == "int or null"
    assert all(d.doc for d in docs)


def test_a_field_without_a_doc_is_named():
    @dataclasses.dataclass(frozen=True)
    class Section:
        """A section."""

        documented: int = 1
        """Has a doc."""
        bare: int = 2

    with pytest.raises(configdoc.MissingDocError, match=r"'s\.bare' has no doc"):
        list(configdoc.keys(Section, "s."))


def test_stale_files_are_found_and_rewritten(tmp_path: Path):
    base, readme = tmp_path / "base.yaml", tmp_path / "README.md"
    base.write_text("lake: {root: lake}\n")
    readme.write_text(f"# x\n\n{configdoc.TABLE_START}\n| old |\n{configdoc.TABLE_END}\n\nafter\n")
    assert configdoc.stale(base, readme) == [base, readme]
    assert configdoc.write(base, readme) == [base, readme]
    assert configdoc.stale(base, readme) == []
    text = readme.read_text()
    assert "| old |" not in text and "| `recommend.k` | int | `10` | List length. |" in text
    assert text.startswith("# x\n\n") and text.endswith("\n\nafter\n")
