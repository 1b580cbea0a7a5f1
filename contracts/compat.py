"""Backward-compatibility check between two JSON Schemas of the same event type and version.

Once an (event_type, schema_version) is published, consumers rely on its shape
and the store keeps its events forever. A changed schema for it is accepted only
if old events still validate and old consumers still find what they read:

- no property may be removed or renamed;
- no type, format, ``$ref`` target shape, ``const`` or union shape may change;
- no property may become required;
- no enum value may be removed;
- no constraint (pattern, lengths, bounds, additionalProperties) may tighten.

Adding optional properties (and descriptions, titles, examples) is compatible.
"""

from __future__ import annotations

from typing import Any

_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")


def check_backward_compatible(old_schema: dict[str, Any], new_schema: dict[str, Any]) -> list[str]:
    """Problems that make ``new_schema`` an incompatible replacement for ``old_schema`` ([] if none)."""
    checker = _Checker(old_schema, new_schema)
    checker.compare(old_schema, new_schema, "$")
    return checker.problems


class _Checker:
    def __init__(self, old_root: dict[str, Any], new_root: dict[str, Any]) -> None:
        self.old_root = old_root
        self.new_root = new_root
        self.problems: list[str] = []
        self._seen: set[tuple[str, str]] = set()

    def report(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    # --- resolution and normalisation -------------------------------------------------

    def _resolve(self, root: dict[str, Any], schema: Any) -> Any:
        """Follow local ``$ref``s ("#/..."); other refs stay as they are."""
        hops = 0
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#"):
            target: Any = root
            for part in schema["$ref"][1:].split("/")[1:]:
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part) if isinstance(target, dict) else None
            if target is None:
                return schema  # dangling ref: compared as an opaque value
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **siblings} if siblings else target
            hops += 1
            if hops > 50:
                break
        return schema

    def _branches(self, root: dict[str, Any], schema: Any) -> list[Any]:
        """Alternatives of a schema: anyOf/oneOf flattened, refs resolved."""
        schema = self._resolve(root, schema)
        if isinstance(schema, dict):
            for key in ("anyOf", "oneOf"):
                if isinstance(schema.get(key), list):
                    out: list[Any] = []
                    for branch in schema[key]:
                        out.extend(self._branches(root, branch))
                    return out
        return [schema]

    @staticmethod
    def _kind(schema: Any) -> str:
        """A label of what a (non-union) schema admits, used to pair alternatives."""
        if schema is True or schema == {}:
            return "any"
        if schema is False:
            return "nothing"
        if not isinstance(schema, dict):
            return repr(schema)
        if "$ref" in schema:
            return f"ref {schema['$ref']}"
        if "type" in schema:
            t = schema["type"]
            return "|".join(sorted(t)) if isinstance(t, list) else str(t)
        if "const" in schema:
            return f"const {schema['const']!r}"
        if "enum" in schema:
            return "enum"
        return "any"

    # --- comparison ---------------------------------------------------------------------

    def compare(self, old: Any, new: Any, path: str) -> None:
        old_ref, new_ref = _ref(old), _ref(new)
        if old_ref or new_ref:
            # each pair of referenced schemas is compared once (also ends recursion)
            key = (old_ref or str(id(old)), new_ref or str(id(new)))
            if key in self._seen:
                return
            self._seen.add(key)
        old_branches = self._branches(self.old_root, old)
        new_branches = self._branches(self.new_root, new)
        old_kinds = [self._kind(b) for b in old_branches]
        new_kinds = [self._kind(b) for b in new_branches]
        if sorted(old_kinds) != sorted(new_kinds):
            self.report(path, f"type changed from {' | '.join(old_kinds)} to {' | '.join(new_kinds)}")
            return
        remaining = list(new_branches)
        for ob, kind in zip(old_branches, old_kinds):
            index = next(i for i, nb in enumerate(remaining) if self._kind(nb) == kind)
            self._compare_single(ob, remaining.pop(index), path)

    def _compare_single(self, old: Any, new: Any, path: str) -> None:
        if not (isinstance(old, dict) and isinstance(new, dict)):
            if old != new:
                self.report(path, f"schema changed from {old!r} to {new!r}")
            return
        if "$ref" in old or "$ref" in new:  # unresolved (external) refs
            if old.get("$ref") != new.get("$ref"):
                self.report(path, f"$ref changed from {old.get('$ref')} to {new.get('$ref')}")
            return
        for keyword in ("format", "const", "pattern"):
            if old.get(keyword) != new.get(keyword):
                self.report(path, f"{keyword} changed from {old.get(keyword)!r} to {new.get(keyword)!r}")
        if "enum" in new:
            if "enum" not in old:
                self.report(path, "enum added (restricts allowed values)")
            else:
                removed = [v for v in old["enum"] if v not in new["enum"]]
                if removed:
                    self.report(path, f"enum values removed: {removed!r}")
        for keyword in _LOWER_BOUNDS + _UPPER_BOUNDS:
            if keyword not in new:
                continue
            if keyword not in old:
                self.report(path, f"{keyword} {new[keyword]!r} added (restricts allowed values)")
            elif _tighter(new[keyword], old[keyword], lower=keyword in _LOWER_BOUNDS):
                self.report(path, f"{keyword} tightened from {old[keyword]!r} to {new[keyword]!r}")
        self._compare_object(old, new, path)
        for keyword in ("items", "additionalProperties"):
            o, n = old.get(keyword), new.get(keyword)
            if keyword == "additionalProperties":
                # absent and true both allow anything; false forbids everything
                o = True if o is None else o
                n = True if n is None else n
            if o is None and n is None:
                continue
            if o is None or n is None:
                self.report(path, f"{keyword} changed from {o!r} to {n!r}")
            elif o is True and n is not True:
                self.report(path, f"{keyword} restricted (previously unrestricted)")
            elif n is not True:
                self.compare(o, n, f"{path}[]" if keyword == "items" else f"{path}.*")

    def _compare_object(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        old_props = old.get("properties") or {}
        new_props = new.get("properties") or {}
        for name, old_prop in old_props.items():
            if name not in new_props:
                self.report(f"{path}.{name}", "property removed or renamed")
            else:
                self.compare(old_prop, new_props[name], f"{path}.{name}")
        old_required = set(old.get("required") or ())
        new_required = set(new.get("required") or ())
        for name in sorted(new_required - old_required):
            what = "optional property became required" if name in old_props else "new required property"
            self.report(f"{path}.{name}", what)
        for name in sorted((old_required - new_required) & set(new_props)):
            self.report(f"{path}.{name}", "required property became optional (consumers rely on it)")


def _ref(schema: Any) -> str | None:
    return schema.get("$ref") if isinstance(schema, dict) else None


def _tighter(new: Any, old: Any, *, lower: bool) -> bool:
    try:
        return new > old if lower else new < old
    except TypeError:
        return new != old
