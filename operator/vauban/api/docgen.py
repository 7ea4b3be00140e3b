"""docs/api.md: the API reference, generated from the same schema as the CRDs so the two
never disagree."""

from __future__ import annotations

import json
from typing import Any

from vauban.api.common import API_VERSION, KindInfo
from vauban.api.crdgen import KINDS, crd_for

HEADER = """# API reference ({api_version})

Generated from the pydantic models in `operator/vauban/api` by `vauban crds`; do not edit.
The same text is in the CRDs: `kubectl explain managedcluster.spec` shows it too.
Rules marked *CEL* are checked by the apiserver at `kubectl apply`.
"""


def _type(node: dict[str, Any]) -> str:
    kind = str(node.get("type", "object"))
    if kind == "array":
        return f"[]{_type(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type(node['additionalProperties'])}"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    return kind


def _constraints(node: dict[str, Any]) -> list[str]:
    notes = []
    for key, label in (
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minLength", "length ≥"),
        ("maxLength", "length ≤"),
        ("maxItems", "items ≤"),
        ("maxProperties", "entries ≤"),
    ):
        if key in node:
            notes.append(f"{label} {node[key]}")
    if "pattern" in node:
        notes.append(f"pattern `{node['pattern']}`")
    notes += [f"*CEL*: {rule['message']}" for rule in node.get("x-kubernetes-validations", [])]
    return notes


def _default(value: Any) -> str:
    return f"`{value}`" if isinstance(value, str) else f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n\n", "<br>").replace("\n", " ")


def _sections(title: str, node: dict[str, Any], out: list[str]) -> None:
    properties = node.get("properties", {})
    if not properties:
        return
    required = set(node.get("required", []))
    out += [f"### `{title}`", ""]
    if node.get("description"):
        out += [_cell(node["description"]), ""]
    notes = [n for n in _constraints(node) if n.startswith("*CEL*")]
    out += [f"- {n}" for n in notes]
    if notes:
        out.append("")
    out += ["| field | type | required | default | description |", "|---|---|---|---|---|"]
    nested: list[tuple[str, dict[str, Any]]] = []
    for name, sub in properties.items():
        description = sub.get("description", "")
        # An object's own rules are listed in its section, not repeated in its row.
        constraints = [] if sub.get("properties") else _constraints(sub)
        detail = _cell(description) + (
            "<br>" + "; ".join(_cell(c) for c in constraints) if constraints else ""
        )
        default = _default(sub["default"]) if "default" in sub else ""
        out.append(
            f"| `{name}` | {_type(sub)} | {'yes' if name in required else ''} | {default} "
            f"| {detail} |"
        )
        item = sub.get("items", sub)
        if item.get("properties"):
            nested.append((f"{title}.{name}{'[]' if 'items' in sub else ''}", item))
    out.append("")
    for child_title, child in nested:
        _sections(child_title, child, out)


def _kind_section(kind: KindInfo) -> list[str]:
    crd = crd_for(kind)
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    names = crd["spec"]["names"]
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    out = [
        f"## {kind.kind}",
        "",
        root["description"],
        "",
        f"`kubectl get {kind.plural}` (short name `{', '.join(names['shortNames'])}`, "
        f"category `{', '.join(names['categories'])}`), namespaced. Columns: "
        + ", ".join(c["name"] for c in columns if not c.get("priority"))
        + "; `-o wide` adds "
        + ", ".join(c["name"] for c in columns if c.get("priority"))
        + ".",
        "",
    ]
    out += [f"- *CEL*: {rule['message']}" for rule in root.get("x-kubernetes-validations", [])]
    out.append("")
    _sections("spec", root["properties"]["spec"], out)
    _sections("status", root["properties"]["status"], out)
    return out


def render() -> str:
    lines = [HEADER.format(api_version=API_VERSION)]
    for kind in KINDS:
        lines += _kind_section(kind)
    return "\n".join(lines).rstrip() + "\n"
