"""docs/api.md's limits table names the constants the code enforces, with their values."""

from __future__ import annotations

import re
from pathlib import Path

from shellgate.controller.app.options import LIMIT_FLAGS
from shellgate.controller.limits import Limits
from shellgate.controller.service import errors, names
from shellgate.reconcilers import profiles, refresh, templates, validation
from shellgate.store import paging, selectors

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
SOURCES = (validation, paging, selectors, errors, templates, profiles, refresh, names)


def test_every_documented_constant_has_its_value_in_the_code() -> None:
    rows = re.findall(r"^\| `(MAX_[A-Z_]+)` \| (\d+) \|", DOC.read_text(), re.M)
    assert len(rows) >= 20
    for name, value in rows:
        owners = [source for source in SOURCES if hasattr(source, name)]
        assert owners, f"{name} is documented but not defined"
        assert all(getattr(owner, name) == int(value) for owner in owners), name


def test_every_limit_flag_is_documented_with_its_default() -> None:
    text = DOC.read_text()
    defaults = Limits()
    for field, flag, _text in LIMIT_FLAGS:
        assert f"| `{flag}` | {getattr(defaults, field)} |" in text, flag
