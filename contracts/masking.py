"""Masked forms of personal data, as events and public views carry them.

One implementation for every service, so that a person's masked name or ID
number looks the same wherever it appears.
"""

from __future__ import annotations

import re


def mask_id_number(id_number: str) -> str:
    """Keep the first 4 and last 4 characters: ``6201**********1234``. Anything of
    8 characters or fewer is masked completely."""
    s = (id_number or "").strip().upper()
    if len(s) <= 8:
        return "*" * len(s)
    return s[:4] + "*" * (len(s) - 8) + s[-4:]


_NAME_SEPARATORS = re.compile(r"([\s·•.\-]+)")


def _mask_part(part: str) -> str:
    if len(part) <= 1:
        return "*" * len(part)
    return part[0] + "*" * (len(part) - 1)


def mask_name(name: str) -> str:
    """Mask a person's name for display.

    Chinese names keep the first and, from three characters on, the last
    character (a three-character name keeps its first and last character).
    Names in parts (Latin names, or minority names joined with ·) keep the
    first letter of each part: John Smith -> J*** S****.
    """
    s = (name or "").strip()
    if not s:
        return ""
    pieces = _NAME_SEPARATORS.split(s)
    if len(pieces) > 1:
        return "".join(p if i % 2 else _mask_part(p) for i, p in enumerate(pieces))
    if not s.isascii() and len(s) >= 3:
        return s[0] + "*" * (len(s) - 2) + s[-1]
    return _mask_part(s)
