"""The API documentation page works without Internet access (no CDN assets)."""

from __future__ import annotations

import re

import httpx
import pytest

from eventkit.settings import SERVICES, load_settings

from .harness import TEST_INTERNAL_KEYS, TEST_TOKEN_KEYS


@pytest.mark.parametrize("service", SERVICES)
async def test_docs_page_loads_its_assets_from_the_service_itself(service, monkeypatch):
    import importlib

    monkeypatch.setenv("TPA_REGISTRY_ID_HMAC_KEY", "x" * 40)
    settings = load_settings(service, token_keys=TEST_TOKEN_KEYS, internal_token_keys=TEST_INTERNAL_KEYS)
    runtime = importlib.import_module(f"services.{service}.app").build(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=runtime.app), base_url="http://tpa") as client:
        page = await client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", page.text)
        assert urls and all(u.startswith("/") for u in urls), urls  # nothing from another host
        for url in urls:
            asset = await client.get(url)
            assert asset.status_code == 200, url
        spec = (await client.get("/openapi.json")).json()
        assert spec["openapi"].startswith("3.1") and spec["paths"]
