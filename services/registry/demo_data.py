"""A synthetic but realistic county register, for demos, load tests and training.

``generate_county("620102", households=2000, seed=1)`` builds townships and
villages (``regions.generate_townships_and_villages``), village rural
populations, and poor households of 1-7 members: Chinese names, valid 18-digit
resident ID numbers (address code = the county, real birth dates, GB 11643
check character), relations to the head (GB/T 4761 codes), schooling stages
that fit the ages, health, skills, work and insurance at plausible rates,
per-capita incomes around the poverty line (about 4,000 yuan), attributes
(about 75 % general, 20 % minimum-living, 5 % extreme-poverty support), primary
poverty causes in the proportions the provincial platforms reported (lack of
funds 30 %, lack of skills 17.2 %, schooling 14.7 %, illness, disability, ...),
an assistance cadre per household and coordinates around a base point of the
county.

Everything is drawn from one ``random.Random(seed)`` in a fixed order and the
reference date is fixed (``AS_OF``), so the same arguments give the same county.
The result is written as an import file (``GeneratedCounty.to_file``) and loaded
through the importer like a village's upload (``tpa demo-data --load``).
No data files are read; names and rates below are this module's own.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Iterable

from . import identity, importer, regions
from .regions import Region

AS_OF = date(2024, 9, 1)  # reference date of ages and schooling (start of a school year)

# -- names (written for this module) -------------------------------------------------

_SURNAMES = ("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程"
             "苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝"
             "龚邵万钱严覃武戴莫孔向汤")
_SURNAME_WEIGHTS = tuple(1.0 / (i + 6) for i in range(len(_SURNAMES)))
_MALE = "伟强磊军勇杰涛斌超明刚平辉鹏华飞鑫波宇浩凯健俊帆旭宁龙林阳建国志文东海峰亮成兵福贵生祥才山德永发忠全荣学顺"
_FEMALE = "芳娜敏静丽艳娟霞秀英玲桂兰梅琳燕红萍雪慧莉婷倩颖佳欣悦怡晶凤翠琴云春花淑珍香月"
_SHARED = "子文佳雨思梓晨一安新小"

_ETHNICITIES_DEFAULT = (("汉族", 0.93), ("回族", 0.025), ("满族", 0.015), ("苗族", 0.015), ("壮族", 0.015))
_ETHNICITIES = {
    "45": (("汉族", 0.62), ("壮族", 0.32), ("瑶族", 0.04), ("苗族", 0.02)),
    "52": (("汉族", 0.63), ("苗族", 0.13), ("布依族", 0.08), ("侗族", 0.08), ("彝族", 0.04), ("土家族", 0.04)),
    "53": (("汉族", 0.66), ("彝族", 0.11), ("哈尼族", 0.04), ("白族", 0.04), ("傣族", 0.03), ("壮族", 0.03),
           ("苗族", 0.03), ("回族", 0.02), ("傈僳族", 0.02), ("拉祜族", 0.02)),
    "54": (("藏族", 0.9), ("汉族", 0.08), ("门巴族", 0.01), ("珞巴族", 0.01)),
    "62": (("汉族", 0.9), ("回族", 0.05), ("藏族", 0.02), ("东乡族", 0.02), ("土族", 0.005), ("裕固族", 0.005)),
    "63": (("汉族", 0.53), ("藏族", 0.24), ("回族", 0.15), ("土族", 0.04), ("撒拉族", 0.02), ("蒙古族", 0.02)),
    "64": (("汉族", 0.64), ("回族", 0.36)),
}

# Approximate latitude/longitude of each province's capital: the base point of generated coordinates.
_PROVINCE_BASE = {
    "11": (39.90, 116.40), "12": (39.13, 117.20), "13": (38.04, 114.51), "14": (37.87, 112.55),
    "15": (40.84, 111.75), "21": (41.80, 123.43), "22": (43.88, 125.32), "23": (45.80, 126.53),
    "31": (31.23, 121.47), "32": (32.06, 118.80), "33": (30.27, 120.15), "34": (31.82, 117.23),
    "35": (26.07, 119.30), "36": (28.68, 115.86), "37": (36.65, 117.12), "41": (34.75, 113.63),
    "42": (30.59, 114.31), "43": (28.23, 112.94), "44": (23.13, 113.26), "45": (22.82, 108.32),
    "46": (20.04, 110.20), "50": (29.56, 106.55), "51": (30.57, 104.07), "52": (26.65, 106.63),
    "53": (25.04, 102.71), "54": (29.65, 91.13), "61": (34.34, 108.94), "62": (36.06, 103.83),
    "63": (36.62, 101.78), "64": (38.49, 106.23), "65": (43.83, 87.62),
}

# -- rates ---------------------------------------------------------------------------

ATTRIBUTES = (("general", 0.75), ("minimum_living", 0.20), ("extreme_poverty", 0.05))
# Primary causes: the top three as Hubei's platform reported them, the rest spread so the total is 100 %.
PRIMARY_CAUSES = (("lack_of_funds", 30.0), ("lack_of_skills", 17.2), ("schooling", 14.7), ("illness", 12.0),
                  ("disability", 7.0), ("lack_of_labour", 7.0), ("disaster", 3.0), ("lack_of_land", 2.5),
                  ("lack_of_drive", 2.6), ("lack_of_water", 2.0), ("poor_transport", 2.0))
HOUSEHOLD_SIZES = ((1, 0.12), (2, 0.22), (3, 0.20), (4, 0.22), (5, 0.14), (6, 0.07), (7, 0.03))
HEAD_AGES = (((25, 34), 0.08), ((35, 44), 0.17), ((45, 54), 0.25), ((55, 64), 0.25), ((65, 74), 0.17),
             ((75, 88), 0.08))
UNITS = ("农业农村局", "教育局", "卫生健康局", "财政局", "人力资源和社会保障局", "交通运输局", "水务局",
         "自然资源局", "住房和城乡建设局", "民政局", "乡村振兴局", "发展和改革局", "供电公司", "农村信用合作联社")
POVERTY_LINE_2020 = 4000


def _pick(rng: random.Random, table: Iterable[tuple[Any, float]]) -> Any:
    items = list(table)
    return rng.choices([v for v, _ in items], weights=[w for _, w in items])[0]


# -- results -------------------------------------------------------------------------

@dataclass
class DemoMember:
    name: str
    id_number: str
    relation: str
    sex: str
    birth_date: date
    ethnicity: str
    phone: str | None = None
    health: list[str] = field(default_factory=list)
    education: str | None = None
    schooling_stage: str | None = None
    labour_skill: str | None = None
    employment: str | None = None
    employment_months: int | None = None
    insurance: list[str] = field(default_factory=list)

    def age(self, on: date = AS_OF) -> int:
        return on.year - self.birth_date.year - ((on.month, on.day) < (self.birth_date.month, self.birth_date.day))


@dataclass
class DemoHousehold:
    household_no: str
    village_code: str
    address: str
    attribute: str
    identification_standard: str
    registered_on: date
    status: str
    primary_cause: str
    other_causes: list[str]
    income_year: int
    wage_income: int
    business_income: int
    property_income: int
    transfer_income: int
    business_expenses: int
    cadre_id: str
    cadre_unit: str
    cadre_assigned_on: date
    latitude: float
    longitude: float
    members: list[DemoMember] = field(default_factory=list)

    @property
    def net_income(self) -> int:
        return (self.wage_income + self.business_income + self.property_income + self.transfer_income
                - self.business_expenses)

    @property
    def per_capita_income(self) -> float:
        return self.net_income / len(self.members)


@dataclass
class DemoVillage:
    code: str
    name: str
    latitude: float
    longitude: float
    rural_population: int = 0
    registered_population: int = 0
    households: int = 0

    @property
    def poverty_incidence(self) -> float:
        return self.registered_population / self.rural_population if self.rural_population else 0.0


@dataclass
class GeneratedCounty:
    county_code: str  # 12 digits
    name: str
    seed: int
    as_of: date
    regions: list[Region]  # province, city, county, townships, villages: parents first
    villages: list[DemoVillage]
    households: list[DemoHousehold]

    @property
    def members(self) -> list[DemoMember]:
        return [m for h in self.households for m in h.members]

    def household_rows(self) -> list[dict[str, Any]]:
        out = []
        for h in self.households:
            out.append({
                "household_no": h.household_no, "village_code": h.village_code, "address": h.address,
                "attribute": h.attribute, "identification_standard": h.identification_standard,
                "registered_on": h.registered_on, "status": h.status, "primary_cause": h.primary_cause,
                "other_causes": h.other_causes or None, "income_year": h.income_year,
                "wage_income": h.wage_income, "business_income": h.business_income,
                "property_income": h.property_income, "transfer_income": h.transfer_income,
                "business_expenses": h.business_expenses, "cadre_id": h.cadre_id, "cadre_unit": h.cadre_unit,
                "cadre_assigned_on": h.cadre_assigned_on, "latitude": h.latitude, "longitude": h.longitude,
            })
        return out

    def member_rows(self) -> list[dict[str, Any]]:
        out = []
        for h in self.households:
            for m in h.members:
                out.append({
                    "household_no": h.household_no, "village_code": h.village_code, "name": m.name,
                    "id_number": m.id_number, "relation": m.relation, "sex": m.sex, "birth_date": m.birth_date,
                    "phone": m.phone, "ethnicity": m.ethnicity, "health": m.health or None,
                    "education": m.education, "schooling_stage": m.schooling_stage,
                    "labour_skill": m.labour_skill, "employment": m.employment,
                    "employment_months": m.employment_months, "insurance": m.insurance or None,
                })
        return out

    def to_file(self, fmt: str = "xlsx") -> bytes:
        """An import file (the template's columns) holding the whole county."""
        return importer.write_file(fmt, self.household_rows(), self.member_rows())

    def stats(self) -> dict[str, Any]:
        members = self.members
        n = len(self.households) or 1
        attrs: dict[str, int] = {}
        causes: dict[str, int] = {}
        for h in self.households:
            attrs[h.attribute] = attrs.get(h.attribute, 0) + 1
            causes[h.primary_cause] = causes.get(h.primary_cause, 0) + 1
        incomes = sorted(h.per_capita_income for h in self.households)
        return {
            "county": self.county_code[:6], "name": self.name,
            "townships": sum(1 for r in self.regions if r.level == "township"),
            "villages": len(self.villages), "households": len(self.households), "people": len(members),
            "attributes": {k: round(v / n, 3) for k, v in sorted(attrs.items())},
            "primary_causes": {k: round(v / n, 3) for k, v in sorted(causes.items(), key=lambda kv: -kv[1])},
            "median_per_capita_income": round(incomes[len(incomes) // 2]) if incomes else None,
            "below_4000": round(sum(1 for x in incomes if x < POVERTY_LINE_2020) / n, 3),
        }


# -- region scaffolding --------------------------------------------------------------

def _ancestors(county: str) -> tuple[list[Region], str]:
    """Province, city and county rows for a county code (GB/T 2260 data when the
    package knows the code, else generated placeholders); and the county's name."""
    known: dict[str, Region] = {}
    try:
        known = {r.code: r for r in regions.county_divisions()}
    except Exception:  # noqa: BLE001 - the data package is optional here
        known = {}
    chain: list[Region] = []
    code: str | None = county
    while code is not None:
        found = known.get(code)
        if found is None:
            level = regions.level_of(code)
            found = Region.of(code, {"province": f"{code[:2]}省", "city": f"{code[:4]}市",
                                     "county": f"{code[:6]}县"}.get(level, code), "generated")
        chain.append(found)
        code = regions.parent_of(code)
    chain.reverse()
    return chain, chain[-1].name


def _base_point(county: str, rng_seed: str) -> tuple[float, float]:
    lat, lon = _PROVINCE_BASE.get(county[:2], (34.0, 108.0))
    rng = random.Random(f"base/{county}/{rng_seed}")
    spread = 0.25 if county[2:4] == "01" else 1.0  # districts of the capital city stay close to it
    lat = min(53.0, max(4.0, lat + rng.uniform(-spread, spread)))
    lon = min(135.0, max(74.0, lon + rng.uniform(-spread * 1.2, spread * 1.2)))
    return lat, lon


# -- people --------------------------------------------------------------------------

class _People:
    """Names and unique ID numbers for one county."""

    def __init__(self, rng: random.Random, county6: str, province: str) -> None:
        self.rng = rng
        self.county6 = county6
        self.used: set[str] = set()
        self.ethnicities = _ETHNICITIES.get(province, _ETHNICITIES_DEFAULT)

    def surname(self) -> str:
        return self.rng.choices(_SURNAMES, weights=_SURNAME_WEIGHTS)[0]

    def given(self, sex: str) -> str:
        chars = _MALE if sex == "male" else _FEMALE
        if self.rng.random() < 0.3:
            return self.rng.choice(chars)
        first = self.rng.choice(chars + _SHARED)
        return first + self.rng.choice(chars)

    def id_number(self, birth: date, sex: str) -> str:
        stamp = birth.strftime("%Y%m%d")
        for _ in range(2000):
            seq = self.rng.randrange(0, 500) * 2 + (1 if sex == "male" else 2)  # odd: male, even: female
            if seq > 999:
                continue
            first17 = f"{self.county6}{stamp}{seq:03d}"
            if first17 not in self.used:
                self.used.add(first17)
                return first17 + identity.check_character(first17)
        raise RuntimeError(f"no free ID sequence number left for {stamp}")  # pragma: no cover

    def birth(self, age: int, as_of: date) -> date:
        latest = date(as_of.year - age, as_of.month, min(as_of.day, 28))
        return latest - timedelta(days=self.rng.randrange(0, 365))

    def ethnicity(self, like: str | None = None) -> str:
        if like is not None and self.rng.random() < 0.9:
            return like
        return _pick(self.rng, self.ethnicities)

    def phone(self) -> str:
        return "1" + self.rng.choice("35789") + "".join(str(self.rng.randrange(10)) for _ in range(9))


def _schooling(rng: random.Random, age: int) -> str:
    if age < 3:
        return "not_in_school"
    if age <= 5:
        return "preschool" if rng.random() < 0.8 else "not_in_school"
    if age <= 11:
        return "primary" if rng.random() < 0.995 else "not_in_school"
    if age <= 14:
        return "junior" if rng.random() < 0.98 else "not_in_school"
    if age <= 17:
        return _pick(rng, (("senior", 0.5), ("secondary_vocational", 0.3), ("not_in_school", 0.2)))
    if age <= 22:
        return _pick(rng, (("higher_vocational", 0.12), ("undergraduate", 0.1), ("not_in_school", 0.78)))
    if age <= 26 and rng.random() < 0.003:
        return "postgraduate"
    return "not_in_school"


_STAGE_EDUCATION = {"primary": "primary", "junior": "junior", "senior": "senior",
                    "secondary_vocational": "senior", "higher_vocational": "college",
                    "undergraduate": "bachelor_or_above", "postgraduate": "bachelor_or_above"}


def _education(rng: random.Random, age: int, stage: str) -> str | None:
    if stage in _STAGE_EDUCATION:
        return _STAGE_EDUCATION[stage]
    if age < 6 or stage == "preschool":
        return None
    if age < 18:
        return _pick(rng, (("primary", 0.35), ("junior", 0.65)))
    if age >= 65:
        table = (("illiterate", 0.45), ("primary", 0.4), ("junior", 0.13), ("senior", 0.02))
    elif age >= 45:
        table = (("illiterate", 0.15), ("primary", 0.4), ("junior", 0.35), ("senior", 0.09), ("college", 0.01))
    elif age >= 25:
        table = (("illiterate", 0.03), ("primary", 0.2), ("junior", 0.5), ("senior", 0.17), ("college", 0.07),
                 ("bachelor_or_above", 0.03))
    else:
        table = (("primary", 0.05), ("junior", 0.5), ("senior", 0.3), ("college", 0.1), ("bachelor_or_above", 0.05))
    return _pick(rng, table)


def _health(rng: random.Random, age: int) -> list[str]:
    out = []
    if rng.random() < 0.03 + 0.004 * max(0, age - 30):
        out.append("chronic_illness")
    if rng.random() < 0.008 + 0.001 * max(0, age - 40):
        out.append("serious_illness")
    if rng.random() < 0.035 + 0.0015 * max(0, age - 40):
        out.append("disabled")
    return out or ["healthy"]


def _labour(rng: random.Random, age: int, stage: str, health: list[str]) -> str:
    if age < 16 or stage not in ("not_in_school",):
        return "none"
    if "serious_illness" in health or "disabled" in health:
        return _pick(rng, (("lost", 0.55), ("weak", 0.4), ("ordinary", 0.05)))
    if age > 70:
        return _pick(rng, (("none", 0.4), ("lost", 0.3), ("weak", 0.3)))
    if age >= 60:
        return _pick(rng, (("weak", 0.6), ("ordinary", 0.35), ("lost", 0.05)))
    if "chronic_illness" in health:
        return _pick(rng, (("weak", 0.6), ("ordinary", 0.4)))
    return _pick(rng, (("ordinary", 0.7), ("skilled", 0.12), ("weak", 0.18)))


def _work(rng: random.Random, age: int, skill: str) -> tuple[str, int]:
    if skill in ("ordinary", "skilled") and 16 <= age <= 64:
        kind = _pick(rng, (("migrant", 0.4), ("local", 0.3), ("none", 0.3)))
    elif skill == "weak" and 16 <= age <= 64:
        kind = _pick(rng, (("local", 0.3), ("none", 0.7)))
    else:
        return "none", 0
    if kind == "migrant":
        return kind, rng.randint(6, 12)
    if kind == "local":
        return kind, rng.randint(2, 10)
    return kind, 0


def _insurance(rng: random.Random, age: int, stage: str) -> list[str]:
    out = []
    if rng.random() < 0.985:
        out.append("basic_medical")
        if rng.random() < 0.92:
            out.append("serious_illness")
    if age >= 16 and stage == "not_in_school" and rng.random() < 0.75:
        out.append("pension")
    if rng.random() < 0.15:
        out.append("commercial")
    return out


# -- households ----------------------------------------------------------------------

def _composition(rng: random.Random, size: int, head_age: int, head_sex: str,
                 student: bool = False) -> list[tuple[str, str, int]]:
    """(relation, sex, age) of each member, head first; ``student``: with a child of school age."""
    out = [("head", head_sex, head_age)]
    other = "female" if head_sex == "male" else "male"
    if size > 1 and rng.random() < (0.9 if head_age < 70 else 0.65):
        out.append(("10", other, max(20, min(95, head_age + rng.randint(-6, 4)))))
    if student and len(out) < size:
        sex = rng.choice(("male", "female"))
        out.append(("20" if sex == "male" else "30", sex, rng.randint(6, max(6, min(21, head_age - 19)))))
    three_generations = head_age >= 57 and rng.random() < 0.6
    son_age = None
    while len(out) < size:
        if three_generations and son_age is None:
            son_age = max(20, head_age - rng.randint(22, 32))
            out.append(("20", "male", son_age))
        elif three_generations and len(out) < size and not any(r == "38" for r, _, _ in out) and rng.random() < 0.8:
            out.append(("38", "female", max(20, son_age + rng.randint(-4, 3))))
        elif three_generations:
            sex = rng.choice(("male", "female"))
            out.append(("41" if sex == "male" else "42", sex, rng.randint(0, max(0, son_age - 21))))
        elif (head_age < 48 and rng.random() < 0.2
              and len(parents := {r for r, _, _ in out if r in ("51", "52")}) < 2):
            relation = "52" if "52" not in parents and ("51" in parents or rng.random() < 0.6) else "51"
            out.append((relation, "female" if relation == "52" else "male",
                        min(95, head_age + rng.randint(22, 32))))
        else:
            sex = rng.choice(("male", "female"))
            age = head_age - rng.randint(20, 38)
            if age < 0:
                age = rng.randint(0, max(0, head_age - 18))
            out.append(("20" if sex == "male" else "30", sex, age))
    return out


def _income(rng: random.Random, attribute: str, members: list[DemoMember]) -> tuple[int, int, int, int, int]:
    """(wage, business, property, transfer, business_expenses) around the poverty line."""
    n = len(members)
    median = {"general": 4100, "minimum_living": 3500, "extreme_poverty": 3200}[attribute]
    per_capita = median * math.exp(rng.gauss(0, 0.3))
    net = round(per_capita * n)
    if attribute == "minimum_living":
        transfer = round(n * rng.uniform(700, 1800))
    elif attribute == "extreme_poverty":
        transfer = round(n * rng.uniform(2200, 3200))
    else:
        transfer = round(n * rng.uniform(150, 600))
    transfer = min(transfer, round(net * 0.9))
    workers = sum(1 for m in members if m.employment in ("migrant", "local"))
    wage = round((net - transfer) * rng.uniform(0.35, 0.75)) if workers else 0
    prop = rng.choice((0, 0, 0, rng.randint(50, 600)))
    business_net = net - transfer - wage - prop
    if business_net < 0:
        wage = max(0, wage + business_net)
        business_net = net - transfer - wage - prop
        if business_net < 0:
            prop = 0
            business_net = net - transfer - wage
    expenses = round(business_net * rng.uniform(0.2, 0.6))
    return wage, business_net + expenses, prop, transfer, expenses


def _fit_cause(rng: random.Random, cause: str, members: list[DemoMember]) -> None:
    """Make the members' facts agree with the primary cause (an ill or disabled member)."""
    adults = [m for m in members if m.age() >= 18] or members
    if cause == "schooling":
        if any(m.schooling_stage not in ("not_in_school", "preschool", None) for m in members):
            return
        children = [m for m in members if m.relation in ("20", "30", "41", "42") and 6 <= m.age() <= 22]
        if not children:
            return
        m = rng.choice(children)
        age = m.age()
        m.schooling_stage = ("primary" if age <= 11 else "junior" if age <= 14 else
                             rng.choice(("senior", "secondary_vocational")) if age <= 17 else
                             rng.choice(("higher_vocational", "undergraduate")))
        m.education = _STAGE_EDUCATION[m.schooling_stage]
        m.labour_skill, m.employment, m.employment_months = "none", "none", 0
        m.insurance = [i for i in m.insurance if i != "pension"]
        return
    if cause == "illness" and not any(h in ("chronic_illness", "serious_illness") for m in members for h in m.health):
        m = rng.choice(adults)
        m.health = [h for h in m.health if h != "healthy"] + [rng.choice(("chronic_illness", "serious_illness"))]
    elif cause == "disability" and not any("disabled" in m.health for m in members):
        m = rng.choice(members)
        m.health = [h for h in m.health if h != "healthy"] + ["disabled"]
    else:
        return
    if m.labour_skill in ("ordinary", "skilled") and m.age() >= 16:
        m.labour_skill = "weak"
        if m.employment == "migrant":
            m.employment, m.employment_months = "local", min(m.employment_months or 0, 6)


def generate_county(county_code: str, households: int, seed: int, *, as_of: date = AS_OF,
                    base: tuple[float, float] | None = None) -> GeneratedCounty:
    """A synthetic county with ``households`` poor households (deterministic by seed)."""
    if households < 1:
        raise ValueError("households must be at least 1")
    county = regions.normalise(county_code)
    if regions.level_of(county) != "county":
        raise ValueError(f"{county_code} is not a county code")
    rng = random.Random(f"tpa-demo/{county}/{seed}")
    ancestors, county_name = _ancestors(county)
    base_lat, base_lon = base or _base_point(county, str(seed))

    # Villages: 35-60 registered poor households per village on average, up to 12 per township.
    wanted = max(1, round(households / rng.uniform(35, 60)))
    townships = max(1, min(999, math.ceil(wanted / 12)))
    per_township = max(1, min(999, math.ceil(wanted / townships)))
    divisions = regions.generate_townships_and_villages(county, townships, per_township, rng)
    township_points: dict[str, tuple[float, float]] = {}
    villages: list[DemoVillage] = []
    for r in divisions:
        if r.level == "township":
            township_points[r.code] = (base_lat + rng.uniform(-0.2, 0.2), base_lon + rng.uniform(-0.25, 0.25))
        else:
            t_lat, t_lon = township_points[r.parent_code]
            villages.append(DemoVillage(r.code, r.name, round(t_lat + rng.uniform(-0.05, 0.05), 6),
                                        round(t_lon + rng.uniform(-0.06, 0.06), 6)))
    weights = [rng.uniform(0.4, 1.6) for _ in villages]
    cumulative = []
    total = 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    assigned = rng.choices(villages, cum_weights=cumulative, k=households)

    people = _People(rng, county[:6], county[:2])
    cadres: dict[str, list[tuple[str, str, int]]] = {}  # township -> [(cadre id, unit, load)]
    result: list[DemoHousehold] = []
    numbers: dict[str, int] = {}
    for village in assigned:
        numbers[village.code] = numbers.get(village.code, 0) + 1
        household_no = f"{numbers[village.code]:03d}"
        attribute = _pick(rng, ATTRIBUTES)
        primary = _pick(rng, PRIMARY_CAUSES)
        if attribute == "extreme_poverty":
            size = 1 if rng.random() < 0.8 else 2
            head_age = rng.randint(60, 90)
            if primary == "schooling":
                primary = _pick(rng, [c for c in PRIMARY_CAUSES if c[0] != "schooling"])
        else:
            size = _pick(rng, HOUSEHOLD_SIZES)
            low, high = _pick(rng, HEAD_AGES)
            head_age = rng.randint(low, high)
            if primary == "schooling":  # a household paying for school has a student
                size = max(size, 3)
                head_age = rng.randint(36, 56)
        head_sex = "male" if rng.random() < (0.85 if size > 1 else 0.6) else "female"
        family = people.surname()
        members: list[DemoMember] = []
        head_ethnicity = people.ethnicity()
        phone_rate = {"head": 0.85, "10": 0.4}
        for relation, sex, age in _composition(rng, size, head_age, head_sex, primary == "schooling"):
            age = max(0, min(99, age))
            same_family = relation in ("head", "20", "30", "41", "42", "51") or (relation == "10" and sex == "male")
            surname = family if same_family else people.surname()
            birth = people.birth(age, as_of)
            m = DemoMember(name=surname + people.given(sex), id_number=people.id_number(birth, sex),
                           relation=relation, sex=sex, birth_date=birth,
                           ethnicity=people.ethnicity(head_ethnicity))
            real_age = m.age(as_of)
            m.schooling_stage = _schooling(rng, real_age)
            m.education = _education(rng, real_age, m.schooling_stage)
            m.health = _health(rng, real_age)
            m.labour_skill = _labour(rng, real_age, m.schooling_stage, m.health)
            m.employment, m.employment_months = _work(rng, real_age, m.labour_skill)
            m.insurance = _insurance(rng, real_age, m.schooling_stage)
            if real_age >= 18 and rng.random() < phone_rate.get(relation, 0.3):
                m.phone = people.phone()
            members.append(m)
        _fit_cause(rng, primary, members)
        others: list[str] = []
        for _ in range(rng.choice((0, 1, 1, 2))):
            c = _pick(rng, PRIMARY_CAUSES)
            if c != primary and c not in others and (c != "schooling" or primary != "schooling"):
                others.append(c)
        wage, business, prop, transfer, expenses = _income(rng, attribute, members)
        registered_on = (date(2014, 4, 1) + timedelta(days=rng.randrange(0, 275)) if rng.random() < 0.7
                         else date(2015, 1, 1) + timedelta(days=rng.randrange(0, 730)))
        township = village.code[:9] + "000"
        pool = cadres.setdefault(township, [])
        open_cadres = [i for i, c in enumerate(pool) if c[2] < 6]
        if not open_cadres or rng.random() < 0.15:
            unit = county_name + rng.choice(UNITS) if rng.random() < 0.8 else "乡镇人民政府"
            pool.append((f"cadre-{township[:9]}-{len(pool) + 1:03d}", unit, 0))
            index = len(pool) - 1
        else:
            index = rng.choice(open_cadres)
        cadre_id, unit, load = pool[index]
        pool[index] = (cadre_id, unit, load + 1)
        assigned_on = min(as_of, registered_on + timedelta(days=rng.randint(7, 90)))
        group = rng.randint(1, 8)
        household = DemoHousehold(
            household_no=household_no, village_code=village.code,
            address=f"{village.name}{group}组{rng.randint(1, 120)}号", attribute=attribute,
            identification_standard="national" if rng.random() < 0.85 else "provincial",
            registered_on=registered_on, status="identified", primary_cause=primary, other_causes=others,
            income_year=as_of.year - 1, wage_income=wage, business_income=business, property_income=prop,
            transfer_income=transfer, business_expenses=expenses, cadre_id=cadre_id, cadre_unit=unit,
            cadre_assigned_on=assigned_on,
            latitude=round(village.latitude + rng.uniform(-0.008, 0.008), 6),
            longitude=round(village.longitude + rng.uniform(-0.01, 0.01), 6),
            members=members)
        result.append(household)
        village.households += 1
        village.registered_population += len(members)
    for village in villages:
        incidence = rng.uniform(0.06, 0.3)
        village.rural_population = max(village.registered_population,
                                       round(max(village.registered_population, 40) / incidence))
    return GeneratedCounty(county, county_name, seed, as_of, ancestors + divisions, villages, result)


def province_counties(province_code: str) -> list[Region]:
    """The counties of a province (its 2-digit code, or any code within it) in the GB/T 2260 data
    (summary codes such as 市辖区 left out)."""
    code = province_code.strip()
    prefix = code if len(code) == 2 and code.isdigit() else regions.normalise(code)[:2]
    return [r for r in regions.county_divisions()
            if r.level == "county" and r.code.startswith(prefix) and r.name not in ("市辖区", "县")]


def generate_province(province_code: str, households_per_county: int, seed: int) -> list[GeneratedCounty]:
    """One generated county per county of the province (each deterministic by seed)."""
    return [generate_county(r.code, households_per_county, seed) for r in province_counties(province_code)]


async def load_regions(conn: Any, county: GeneratedCounty) -> int:
    """Write the county's region rows (ancestors, townships, villages) into the registry's table."""
    return await regions.load_regions(conn, county.regions)


async def record_village_profiles(registry: Any, pool: Any, county: GeneratedCounty, actor: str = "demo-data") -> int:
    """Record each village's profile (rural population, register population) once."""
    from eventkit.events import Metadata

    written = 0
    async with pool.acquire() as conn:
        for v in county.villages:
            async with conn.transaction():
                village = await registry.villages.load(v.code, conn=conn)
                if village.version:
                    continue
                village.update_profile(effective_on=county.as_of, rural_population=v.rural_population,
                                       registered_population=v.registered_population,
                                       poor_village=v.poverty_incidence >= 0.03 and v.households >= 10)
                await registry.villages.save(village, Metadata(actor=actor), conn=conn)
                written += 1
    return written
