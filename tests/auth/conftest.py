"""Fixtures for the authentication tests: a throwaway OIDC issuer and a test CA."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.oidc_issuer import Issuer
from tests.support.pki import TestCA


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    running = Issuer()
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")
