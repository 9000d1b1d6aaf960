"""Shared test configuration: the aioresponses shim and the fixture plugins."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import aioresponses.core
from aiohttp import ClientResponse
from yarl import URL

# Fixture plugins, one per real component (each cleans up after itself).
pytest_plugins = ["tests.sim_fixtures", "tests.prom_fixtures", "tests.serve_fixtures",
                  "tests.golden_fixtures", "tests.hostile_api", "tests.files_fixtures"]


class _CompatClientResponse(ClientResponse):
    """aioresponses 0.7.9 builds responses without ``stream_writer``, which aiohttp 3.14
    made a required argument (aioresponses issue #289): every mocked request fails with
    ``missing ... 'stream_writer'``. aiohttp only reads ``stream_writer.output_size`` when
    ``writer`` is None, which is always the case for a mocked response, so a stand-in with
    ``output_size = 0`` is enough. Remove this shim when aioresponses ships a fix (the
    pin in pyproject.toml makes that a deliberate change).
    """

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


aioresponses.core.ClientResponse = _CompatClientResponse  # type: ignore[misc]
