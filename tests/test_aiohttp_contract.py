"""What the client relies on in aiohttp beyond its public API, checked on the version installed."""

from __future__ import annotations

import aiohttp

from nexus_audit.api.client import disable_hidden_retries


async def test_hidden_resend_switch_still_exists() -> None:
    """aiohttp still has the private switch we turn off; if it goes, hidden resends return.

    Without it aiohttp would silently re-send a GET whose kept-alive connection dropped,
    outside the rate budget and the request counters. An upgrade that renames it must
    fail here, not quietly.
    """
    async with aiohttp.ClientSession() as session:
        assert getattr(session, "_retry_connection", None) is True
        disable_hidden_retries(session)
        assert session._retry_connection is False
