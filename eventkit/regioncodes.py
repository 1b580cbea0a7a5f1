"""Administrative division codes: shape, level, parent and prefix. Pure, no I/O.

Codes are the 12-digit statistical division codes (2+2+2+3+3 digits): province
620000000000, city 620100000000, county 620102000000, township 620102001000,
village 620102001001. 6-digit GB/T 2260 codes are accepted and extended with six
zeros. Shared by the registry (which keeps the division reference data, see
``services.registry.regions``) and by every service that checks jurisdictions.
"""

from __future__ import annotations

import re

LEVELS: tuple[str, ...] = ("province", "city", "county", "township", "village")

_GROUPS = ((0, 2), (2, 4), (4, 6), (6, 9), (9, 12))
_CODE = re.compile(r"^[0-9]{12}$")
_SHORT = re.compile(r"^[0-9]{6}$")


class RegionError(ValueError):
    """``code``: ``region_code_format`` (malformed code), ``region_invalid`` (an
    inconsistent Region), ``unknown_region``, ``unknown_village`` (also for a
    malformed code given to ``require_village``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _groups(code: str) -> tuple[str, ...]:
    return tuple(code[a:b] for a, b in _GROUPS)


def _zero(group: str) -> bool:
    return group.strip("0") == ""


def normalise(code: object) -> str:
    """Return the 12-digit form of a division code.

    Accepts 12-digit statistical codes and 6-digit GB/T 2260 codes (province,
    city or county level; padded with six zeros). Surrounding whitespace is
    removed. Raises ``RegionError('region_code_format', ...)`` for anything
    else, including structurally impossible codes (province ``00``, a township
    directly under a province, a village without a township).
    """
    if not isinstance(code, str):
        raise RegionError("region_code_format", f"a region code must be a string, not {type(code).__name__}")
    s = code.strip()
    if _SHORT.match(s):
        s += "000000"
    if not _CODE.match(s):
        raise RegionError("region_code_format",
                          f"{code!r} is not a 6-digit GB/T 2260 code or a 12-digit statistical code")
    p, c, d, t, v = (not _zero(g) for g in _groups(s))
    if not p:
        raise RegionError("region_code_format", f"{s}: the province part is 00")
    if t and not (c or d):
        raise RegionError("region_code_format", f"{s}: a township part without a city or county part")
    if v and not t:
        raise RegionError("region_code_format", f"{s}: a village part without a township part")
    return s


def level_of(code: str) -> str:
    """The level of a code: 'province', 'city', 'county', 'township' or 'village'."""
    s = normalise(code)
    groups = _groups(s)
    for i in range(len(groups) - 1, -1, -1):
        if not _zero(groups[i]):
            return LEVELS[i]
    raise AssertionError("unreachable: normalise rejects a zero province")


def parent_of(code: str) -> str | None:
    """The parent's 12-digit code (lowest non-zero group set to zero); None for a province."""
    s = normalise(code)
    groups = list(_groups(s))
    for i in range(len(groups) - 1, 0, -1):
        if not _zero(groups[i]):
            groups[i] = "0" * len(groups[i])
            return "".join(groups)
    return None


def code_prefix(code: str) -> str:
    """The prefix shared by a region's code and all its descendants' codes:
    province '62', city '6201', county '620102', township '620102001', village:
    the whole code. Use as ``code LIKE prefix || '%'``."""
    s = normalise(code)
    end = _GROUPS[LEVELS.index(level_of(s))][1]
    return s[:end]
