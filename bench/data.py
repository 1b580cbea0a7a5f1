"""The benchmark's data: synthetic counties from ``services.registry.demo_data`` (the generator
behind ``tpa demo-data``), written as import files, and fresh service databases."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

COUNTY_SIZE = 20_000  # the synthetic county
PROVINCE_SIZE = 1_000_000  # the province (Gansu: 970 k poor households)
DEFAULT_COUNTY = "620102"  # the demo county of `tpa up`
PROVINCE = "62"  # Gansu: sizes above a county are spread over its counties
MAX_PER_COUNTY = COUNTY_SIZE


def parse_size(text: str) -> int:
    named = {"county": COUNTY_SIZE, "province": PROVINCE_SIZE}
    if text in named:
        return named[text]
    n = int(text.replace("_", ""))
    if n < 1:
        raise ValueError("size must be at least 1 household")
    return n


@dataclass
class Dataset:
    households: int
    members: int
    format: str
    seed: int
    files: list[str]
    counties: list[str]  # 6-digit codes, in file order
    regions_file: str
    registered_ids: list[str]  # ID numbers of the first county's members (up to 100 000)
    villages: list[str]  # village codes of the first county
    generate_seconds: float
    per_county: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("registered_ids")
        d["registered_ids_kept"] = len(self.registered_ids)
        return d


def county_plan(size: int) -> list[tuple[str, int]]:
    """Which counties get how many households: one county up to the county size, else spread
    evenly over the province's counties (as `tpa demo-data --province` does)."""
    if size <= MAX_PER_COUNTY:
        return [(DEFAULT_COUNTY, size)]
    from services.registry import demo_data

    counties = [r.code[:6] for r in demo_data.province_counties(PROVINCE)]
    per = max(math.ceil(size / len(counties)), 1)
    if per > MAX_PER_COUNTY:
        raise ValueError(f"{size} households need more than {MAX_PER_COUNTY} per county in province {PROVINCE}")
    plan, left = [], size
    for code in counties:
        if left <= 0:
            break
        n = min(per, left)
        plan.append((code, n))
        left -= n
    return plan


def generate(size: int, seed: int, fmt: str, folder: Path, log: Any) -> Dataset:
    """Generate the counties one at a time (a province does not fit in memory as objects) and
    write each as an import file, plus one file of all region rows."""
    from services.registry import demo_data

    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    files, counties, per_county, region_rows = [], [], [], []
    registered: list[str] = []
    villages: list[str] = []
    members = 0
    for i, (code, n) in enumerate(county_plan(size)):
        county = demo_data.generate_county(code, n, seed)
        path = folder / f"county-{code}-{n}.{fmt}"
        path.write_bytes(county.to_file(fmt))
        files.append(str(path))
        counties.append(code)
        per_county.append(n)
        region_rows += [[r.code, r.level, r.parent_code, r.name, r.source] for r in county.regions]
        members += sum(len(h.members) for h in county.households)
        if i == 0:
            registered = [m.id_number for h in county.households for m in h.members][:100_000]
            villages = [v.code for v in county.villages]
        log(f"generated {code}: {n} households ({i + 1} of {len(county_plan(size))})")
        del county
    regions_file = folder / "regions.json"
    regions_file.write_text(json.dumps(region_rows, ensure_ascii=False))
    return Dataset(size, members, fmt, seed, files, counties, str(regions_file), registered, villages,
                   time.perf_counter() - started, per_county)


def load_region_rows(regions_file: str) -> list[Any]:
    from services.registry.regions import Region

    return [Region(code, level, parent, name, source)
            for code, level, parent, name, source in json.loads(Path(regions_file).read_text())]


def unregistered_ids(county6: str, n: int, seed: int = 7) -> list[str]:
    """Valid resident ID numbers of the county that the generator did not hand out (a different
    sequence range), for comparisons: most IDs a department sends are not in the register."""
    from services.registry.identity import check_character

    rng = random.Random(seed)
    out = []
    for i in range(n):
        year = rng.randint(1940, 2020)
        first17 = f"{county6}{year}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}9{i % 100:02d}"
        out.append(first17 + check_character(first17))
    return out


async def prepare_service_db(service: str, dsn: str, hmac_key: str, internal_keys: str, gateway_keys: str,
                             regions_file: str | None = None) -> None:
    """Apply the service's migrations (taken from its composition root, as `tpa projections`
    does) and, for the registry, load the dataset's region rows."""
    import importlib

    import asyncpg

    from eventkit import migrations as mig
    from eventkit.settings import load_settings

    settings = load_settings(service, database_url=dsn, id_hmac_key=hmac_key, internal_token_keys=internal_keys,
                             token_keys=gateway_keys)
    runtime = importlib.import_module(f"services.{service}.app").build(settings)
    conn = await asyncpg.connect(dsn)
    try:
        await mig.apply(conn, runtime.migrations())
        if regions_file:
            from services.registry import regions

            async with conn.transaction():
                await regions.load_regions(conn, load_region_rows(regions_file))
    finally:
        await conn.close()
