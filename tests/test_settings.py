"""The PYHPC_* registry and the README table generated from it."""

from __future__ import annotations

from pathlib import Path

import pytest

import pyhpc
from pyhpc import settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_when_unset(monkeypatch):
    monkeypatch.delenv("PYHPC_SKIP_MPI_CHECK", raising=False)
    assert settings.get("PYHPC_SKIP_MPI_CHECK") is False
    monkeypatch.delenv("PYHPC_BENCH_DIR", raising=False)
    assert settings.get("PYHPC_BENCH_DIR") == "bench/results"


@pytest.mark.parametrize("raw,value", [("1", True), ("yes", True), ("off", False), ("0", False)])
def test_bool_parsing(monkeypatch, raw, value):
    monkeypatch.setenv("PYHPC_SKIP_MPI_CHECK", raw)
    assert settings.get("PYHPC_SKIP_MPI_CHECK") is value


def test_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("PYHPC_RUN_TIMEOUT", "soon")
    with pytest.raises(pyhpc.InvalidArgumentError, match="PYHPC_RUN_TIMEOUT"):
        settings.get("PYHPC_RUN_TIMEOUT")


def test_unknown_setting_is_an_error():
    with pytest.raises(pyhpc.InvalidArgumentError, match="PYHPC_NOPE"):
        settings.get("PYHPC_NOPE")


def test_readme_table_matches_registry():
    if not README.is_file():
        pytest.skip("README.md is not beside the tests (installed test run)")
    assert settings.markdown_table() in README.read_text(), (
        "README's settings table is stale: paste `pyhpc info --settings-table` into it")
