"""Helpers for tests of pure domain code."""

from __future__ import annotations

from typing import Any

import pytest

from eventkit.errors import DomainError


def raises(code: str, http_status: int, **details: Any):
    """Expect a ``DomainError`` with this code, HTTP status and (some of) these details."""
    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(DomainError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            err = self.info.value
            assert (err.code, err.status) == (code, http_status), (err.code, err.status, str(err))
            for k, v in details.items():
                assert err.details.get(k) == v, (k, err.details)
            return handled
    return _Check()
