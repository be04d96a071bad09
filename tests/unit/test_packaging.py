"""pyproject.toml in the form current build tools read without deprecation warnings: the
first `./scripts/run` of a fresh clone prints none."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_license_is_an_spdx_expression_and_the_build_backend_reads_it() -> None:
    pyproject = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    # PEP 639: a plain SPDX string; the {text = ...} table is deprecated by setuptools.
    assert pyproject["project"]["license"] == "MIT"
    [requirement] = [line for line in pyproject["build-system"]["requires"] if line.startswith("setuptools")]
    found = re.fullmatch(r"setuptools>=(\d+)(?:\.\d+)*", requirement)
    assert found is not None, requirement
    # setuptools 77 is the first to accept an SPDX string for project.license.
    assert int(found.group(1)) >= 77
    # PEP 639 also forbids the license classifiers beside an SPDX expression.
    assert not any(c.startswith("License ::") for c in pyproject["project"].get("classifiers", []))
