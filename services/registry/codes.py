"""The registry's code lists, as data.

Every code-valued field of the register (household attribute, status, poverty
causes, member facts, ...) holds a *code* from one of these lists, never a label.
Each list is an ordered mapping ``code -> {"zh": label, "en": label}``; the order
is the display order. ``CODE_LISTS`` is what the API serves (``GET /code-lists``);
treat it as read-only.

Relation to head
----------------
Relations use the two-digit family-relation codes of GB/T 4761-2008 (家庭关系代码),
groups 1x spouse, 2x son, 3x daughter, 4x grandchild, 5x parent, 6x grandparent,
7x sibling, 80 other relative, 99 non-relative. The household head itself is
recorded with the dedicated marker ``"head"`` (``HEAD_RELATION``), not with the
standard's ``01`` 本人 / ``02`` 户主, so that "who is the head" has exactly one
spelling; an importer maps ``02`` (``GBT4761_HEAD``) to ``"head"``.

Multi-valued lists
------------------
Some fields hold several codes (``MULTI_VALUED``); validate them with
``validate_many``, which removes duplicates and enforces exclusive codes
(``healthy`` cannot be combined with any other health code).
"""

from __future__ import annotations

from collections.abc import Iterable


def _codes(*rows: tuple[str, str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for code, zh, en in rows:
        if code in out:  # a typo in the data below, caught at import
            raise AssertionError(f"duplicate code {code!r}")
        out[code] = {"zh": zh, "en": en}
    return out


HEAD_RELATION = "head"
GBT4761_HEAD = "02"

HOUSEHOLD_ATTRIBUTE = _codes(
    ("general", "一般贫困户", "general poor household"),
    ("minimum_living", "低保贫困户", "poor household with minimum-living allowance"),
    ("extreme_poverty", "特困供养户", "extreme-poverty support household"),
)

IDENTIFICATION_STANDARD = _codes(
    ("national", "国家标准", "national standard"),
    ("provincial", "省定标准", "provincial standard"),
)

HOUSEHOLD_STATUS = _codes(
    ("applicant", "申请户", "applicant"),
    ("identified", "贫困户", "identified poor household"),
    ("lifted_out", "已脱贫", "lifted out of poverty"),
    ("returned_to_poverty", "返贫", "returned to poverty"),
    ("wrongly_identified_removed", "错评剔除", "wrongly identified, removed"),
    ("natural_decrease", "自然减少", "natural decrease"),
)

MONITORING_OBJECT_TYPE = _codes(
    ("unstable_lifted_out", "脱贫不稳定户", "unstable lifted-out household"),
    ("marginal", "边缘易致贫户", "marginal household at risk of poverty"),
    ("sudden_hardship", "突发严重困难户", "household in sudden severe hardship"),
)

POVERTY_CAUSE = _codes(
    ("illness", "因病", "illness"),
    ("disability", "因残", "disability"),
    ("schooling", "因学", "schooling costs"),
    ("disaster", "因灾", "disaster"),
    ("lack_of_land", "缺土地", "lack of land"),
    ("lack_of_water", "缺水", "lack of water"),
    ("lack_of_skills", "缺技术", "lack of skills"),
    ("lack_of_labour", "缺劳力", "lack of labour"),
    ("lack_of_funds", "缺资金", "lack of funds"),
    ("poor_transport", "交通条件落后", "poor transport"),
    ("lack_of_drive", "自身发展动力不足", "lack of drive to develop"),
    ("marriage", "因婚", "marriage costs"),
    ("funeral", "因丧", "funeral costs"),
    ("other", "其他", "other"),
)

HEALTH_CONDITION = _codes(
    ("healthy", "健康", "healthy"),
    ("chronic_illness", "长期慢性病", "chronic illness"),
    ("serious_illness", "患有大病", "serious illness"),
    ("disabled", "残疾", "disabled"),
)

LABOUR_SKILL = _codes(
    ("ordinary", "普通劳动力", "ordinary labour"),
    ("skilled", "技能劳动力", "skilled labour"),
    ("weak", "弱劳动力或半劳动力", "weak or half labour"),
    ("lost", "丧失劳动力", "lost ability to work"),
    ("none", "无劳动力", "no labour"),
)

EDUCATION_LEVEL = _codes(
    ("illiterate", "文盲或半文盲", "illiterate or semi-literate"),
    ("primary", "小学", "primary school"),
    ("junior", "初中", "junior secondary school"),
    ("senior", "高中", "senior secondary school"),
    ("college", "大专", "junior college"),
    ("bachelor_or_above", "本科及以上", "bachelor's degree or above"),
)

SCHOOLING_STAGE = _codes(
    ("not_in_school", "非在校生", "not in school"),
    ("preschool", "学前教育", "preschool"),
    ("primary", "小学", "primary school"),
    ("junior", "初中", "junior secondary school"),
    ("senior", "普通高中", "senior secondary school"),
    ("secondary_vocational", "中职", "secondary vocational school"),
    ("higher_vocational", "高职高专", "higher vocational college"),
    ("undergraduate", "本科", "undergraduate"),
    ("postgraduate", "研究生", "postgraduate"),
)

EMPLOYMENT = _codes(
    ("none", "未务工", "not employed"),
    ("local", "本地务工", "employed locally"),
    ("migrant", "外出务工", "migrant worker"),
)

INSURANCE_KIND = _codes(
    ("basic_medical", "基本医疗保险", "basic medical insurance"),
    ("serious_illness", "大病保险", "serious-illness insurance"),
    ("pension", "养老保险", "pension insurance"),
    ("commercial", "商业补充保险", "supplementary commercial insurance"),
)

RELATION_TO_HEAD = _codes(
    (HEAD_RELATION, "户主", "head of household"),
    ("10", "配偶", "spouse"),
    ("11", "夫", "husband"),
    ("12", "妻", "wife"),
    ("20", "子", "son"),
    ("21", "独生子", "only son"),
    ("22", "长子", "eldest son"),
    ("23", "次子", "second son"),
    ("24", "三子", "third son"),
    ("25", "四子", "fourth son"),
    ("26", "五子", "fifth son"),
    ("27", "养子或继子", "adopted son or stepson"),
    ("28", "女婿", "son-in-law"),
    ("29", "其他儿子", "other son"),
    ("30", "女", "daughter"),
    ("31", "独生女", "only daughter"),
    ("32", "长女", "eldest daughter"),
    ("33", "次女", "second daughter"),
    ("34", "三女", "third daughter"),
    ("35", "四女", "fourth daughter"),
    ("36", "五女", "fifth daughter"),
    ("37", "养女或继女", "adopted daughter or stepdaughter"),
    ("38", "儿媳", "daughter-in-law"),
    ("39", "其他女儿", "other daughter"),
    ("40", "孙子、孙女或外孙子、外孙女", "grandchild"),
    ("41", "孙子", "grandson (son's son)"),
    ("42", "孙女", "granddaughter (son's daughter)"),
    ("43", "外孙子", "grandson (daughter's son)"),
    ("44", "外孙女", "granddaughter (daughter's daughter)"),
    ("45", "孙媳妇或外孙媳妇", "grandson's wife"),
    ("46", "孙女婿或外孙女婿", "granddaughter's husband"),
    ("47", "曾孙子或外曾孙子", "great-grandson"),
    ("48", "曾孙女或外曾孙女", "great-granddaughter"),
    ("49", "其他孙子、孙女或外孙子、外孙女", "other grandchild"),
    ("50", "父母", "parent"),
    ("51", "父亲", "father"),
    ("52", "母亲", "mother"),
    ("53", "公公", "father-in-law (husband's father)"),
    ("54", "婆婆", "mother-in-law (husband's mother)"),
    ("55", "岳父", "father-in-law (wife's father)"),
    ("56", "岳母", "mother-in-law (wife's mother)"),
    ("57", "继父或养父", "stepfather or adoptive father"),
    ("58", "继母或养母", "stepmother or adoptive mother"),
    ("59", "其他父母关系", "other parent"),
    ("60", "祖父母或外祖父母", "grandparent"),
    ("61", "祖父", "grandfather (father's father)"),
    ("62", "祖母", "grandmother (father's mother)"),
    ("63", "外祖父", "grandfather (mother's father)"),
    ("64", "外祖母", "grandmother (mother's mother)"),
    ("65", "配偶的祖父母或外祖父母", "spouse's grandparent"),
    ("66", "曾祖父", "great-grandfather"),
    ("67", "曾祖母", "great-grandmother"),
    ("68", "配偶的曾祖父母或外曾祖父母", "spouse's great-grandparent"),
    ("69", "其他祖父母或外祖父母关系", "other grandparent"),
    ("70", "兄弟姐妹", "sibling"),
    ("71", "兄", "elder brother"),
    ("72", "嫂", "elder brother's wife"),
    ("73", "弟", "younger brother"),
    ("74", "弟媳", "younger brother's wife"),
    ("75", "姐姐", "elder sister"),
    ("76", "姐夫", "elder sister's husband"),
    ("77", "妹妹", "younger sister"),
    ("78", "妹夫", "younger sister's husband"),
    ("79", "其他兄弟姐妹", "other sibling"),
    ("80", "其他", "other relative"),
    ("99", "非亲属", "not related"),
)

MEMBER_REMOVAL_REASON = _codes(
    ("death", "死亡", "death"),
    ("marriage_out", "婚出", "married out"),
    ("moved_out", "迁出", "moved out"),
    ("imprisoned", "服刑", "serving a prison sentence"),
    ("settled_abroad", "定居国外", "settled abroad"),
    ("other", "其他", "other"),
)

MEMBER_JOIN_REASON = _codes(
    ("initial", "初始登记", "initial registration"),
    ("birth", "出生", "birth"),
    ("marriage_in", "婚入", "married in"),
    ("moved_in", "迁入", "moved in"),
    ("other", "其他", "other"),
)

SEX = _codes(
    ("male", "男", "male"),
    ("female", "女", "female"),
)

# 两不愁三保障 (food, clothing; compulsory education, basic medical care, safe
# housing), safe drinking water, and the infrastructure items some provinces add.
LIVING_CONDITION_ITEM = _codes(
    ("food", "不愁吃", "enough food"),
    ("clothing", "不愁穿", "enough clothing"),
    ("drinking_water", "饮水安全", "safe drinking water"),
    ("compulsory_education", "义务教育有保障", "compulsory education secured"),
    ("basic_medical", "基本医疗有保障", "basic medical care secured"),
    ("safe_housing", "住房安全有保障", "safe housing secured"),
    ("electricity", "通生活用电", "household electricity"),
    ("radio_tv", "通广播电视", "radio and television"),
    ("road_access", "通硬化路", "paved road access"),
)

ASSISTANCE_MEASURE_KIND = _codes(
    ("industry", "产业扶贫", "industry development"),
    ("employment", "就业扶贫", "employment"),
    ("education", "教育扶贫", "education"),
    ("health", "健康扶贫", "health"),
    ("housing", "危房改造", "housing renovation"),
    ("relocation", "易地扶贫搬迁", "relocation"),
    ("credit", "扶贫小额信贷", "microcredit"),
    ("social_security", "社会保障兜底", "social security"),
    ("other", "其他", "other"),
)

CODE_LISTS: dict[str, dict[str, dict[str, str]]] = {
    "household_attribute": HOUSEHOLD_ATTRIBUTE,
    "identification_standard": IDENTIFICATION_STANDARD,
    "household_status": HOUSEHOLD_STATUS,
    "monitoring_object_type": MONITORING_OBJECT_TYPE,
    "poverty_cause": POVERTY_CAUSE,
    "health_condition": HEALTH_CONDITION,
    "labour_skill": LABOUR_SKILL,
    "education_level": EDUCATION_LEVEL,
    "schooling_stage": SCHOOLING_STAGE,
    "employment": EMPLOYMENT,
    "insurance_kind": INSURANCE_KIND,
    "relation_to_head": RELATION_TO_HEAD,
    "member_removal_reason": MEMBER_REMOVAL_REASON,
    "member_join_reason": MEMBER_JOIN_REASON,
    "sex": SEX,
    "living_condition_item": LIVING_CONDITION_ITEM,
    "assistance_measure_kind": ASSISTANCE_MEASURE_KIND,
}

# Lists whose fields hold several codes at once.
MULTI_VALUED: frozenset[str] = frozenset(
    {"health_condition", "poverty_cause", "insurance_kind", "living_condition_item"})

# Codes that cannot be combined with any other code of the same list.
EXCLUSIVE: dict[str, frozenset[str]] = {"health_condition": frozenset({"healthy"})}

LANGUAGES = ("zh", "en")


class UnknownCodeList(KeyError):
    """A list name that is not one of ``CODE_LISTS`` (a programming error)."""

    def __init__(self, list_name: object) -> None:
        super().__init__(list_name)
        self.list_name = list_name

    def __str__(self) -> str:
        return f"unknown code list {self.list_name!r}; known: {', '.join(CODE_LISTS)}"


class CodeError(ValueError):
    """A value that is not an allowed code of a list.

    ``code`` is the machine error code for API responses: ``invalid_<list_name>``.
    """

    def __init__(self, list_name: str, value: object, allowed: Iterable[str],
                 message: str | None = None) -> None:
        self.list_name = list_name
        self.value = value
        self.allowed = tuple(allowed)
        self.code = f"invalid_{list_name}"
        if message is None:
            message = (f"{value!r} is not a valid {list_name} code; allowed: "
                       f"{', '.join(self.allowed)}")
        super().__init__(message)


def _list(list_name: str) -> dict[str, dict[str, str]]:
    try:
        return CODE_LISTS[list_name]
    except (KeyError, TypeError):
        raise UnknownCodeList(list_name) from None


def codes(list_name: str) -> tuple[str, ...]:
    """The allowed codes of a list, in display order."""
    return tuple(_list(list_name))


def is_valid(list_name: str, value: object) -> bool:
    return isinstance(value, str) and value in _list(list_name)


def validate(list_name: str, value: object) -> str:
    """Return ``value`` if it is a code of the list, else raise ``CodeError``.

    Codes are exact (case-sensitive); surrounding whitespace is removed.
    """
    entries = _list(list_name)
    if isinstance(value, str):
        candidate = value.strip()
        if candidate in entries:
            return candidate
    raise CodeError(list_name, value, entries)


def validate_many(list_name: str, values: Iterable[object]) -> list[str]:
    """Validate a multi-valued field: each code valid, duplicates removed (first
    occurrence kept, order preserved), exclusive codes alone. An empty input gives []."""
    entries = _list(list_name)
    if isinstance(values, (str, bytes)):
        raise CodeError(list_name, values, entries,
                        f"{list_name} takes a list of codes, not a single string {values!r}")
    out: list[str] = []
    for value in values:
        code = validate(list_name, value)
        if code not in out:
            out.append(code)
    exclusive = EXCLUSIVE.get(list_name, frozenset())
    if len(out) > 1:
        for code in out:
            if code in exclusive:
                others = [c for c in out if c != code]
                raise CodeError(list_name, code, entries,
                                f"{list_name} code {code!r} cannot be combined with "
                                f"{', '.join(others)}")
    return out


def label(list_name: str, code: str, lang: str = "zh") -> str:
    """The label of a code in ``lang`` ('zh' or 'en')."""
    if lang not in LANGUAGES:
        raise ValueError(f"unsupported language {lang!r}; use one of {', '.join(LANGUAGES)}")
    return _list(list_name)[validate(list_name, code)][lang]
