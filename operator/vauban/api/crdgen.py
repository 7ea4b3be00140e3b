"""CustomResourceDefinitions generated from the pydantic API types.

The models are the one source of truth: `vauban crds` writes `crds/`, and `vauban crds
--check` (run by the test suite) fails when the committed files drift from the models.

Pydantic emits JSON Schema (draft 2020-12); the apiserver wants a *structural* OpenAPI v3
schema. The conversion: inline `$ref`s, turn `anyOf[X, null]` into X (an optional field is
simply absent), `const` into a one-value enum, numeric exclusive bounds into the OpenAPI 3.0
form, and drop what structural schemas refuse (`additionalProperties: false` beside
`properties`, `title`, `$defs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vauban.api.backup import MANAGED_BACKUP
from vauban.api.cluster import MANAGED_CLUSTER
from vauban.api.common import GROUP, VERSION, KindInfo, PrinterColumn
from vauban.api.database import MANAGED_DATABASE

KINDS: tuple[KindInfo, ...] = (MANAGED_CLUSTER, MANAGED_DATABASE, MANAGED_BACKUP)

_DROPPED_KEYS = frozenset({"title", "$defs", "discriminator"})


class SchemaError(ValueError):
    """A model uses a construct that has no structural OpenAPI equivalent."""


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert one pydantic JSON schema node (and its children) to structural OpenAPI v3."""
    defs = schema.get("$defs", defs) or {}
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        merged = {**defs[name], **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs)

    if "anyOf" in schema:
        variants = [v for v in schema["anyOf"] if v.get("type") != "null"]
        if len(variants) != 1:
            raise SchemaError(f"unions other than Optional[X] are not structural: {schema}")
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        merged = {**structural(variants[0], defs), **_convert_keywords(rest, defs)}
        if schema.get("default") is not None:
            merged["default"] = schema["default"]
        return dict(sorted(merged.items()))

    return _convert_keywords(schema, defs)


def _convert_keywords(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out["properties"] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = structural(value, defs)
        elif key == "additionalProperties":
            if value is False:
                continue  # structural schemas prune unknown fields; kubectl refuses them
            out["additionalProperties"] = structural(value, defs)
        elif key in ("propertyNames", "patternProperties"):
            # Not allowed in CRDs: a map whose keys need checking carries a CEL rule instead.
            raise SchemaError(f"constrained map keys are not structural: {schema}")
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out[key.replace("exclusive", "").lower()] = value
            out[key] = True
        elif key == "required":
            out["required"] = sorted(value)
        elif key == "description":
            out["description"] = _flow(value)
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = _enum_type(out["enum"])
    if "properties" in out or "additionalProperties" in out:
        out.setdefault("type", "object")
    return dict(sorted(out.items()))


def _flow(text: str) -> str:
    """Docstrings wrap at the source's line length; a schema description is flowing text whose
    paragraphs are separated by blank lines."""
    paragraphs = [" ".join(p.split()) for p in text.strip().split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


def _enum_type(values: list[Any]) -> str:
    kinds = {type(v) for v in values}
    if kinds == {str}:
        return "string"
    if kinds == {int}:
        return "integer"
    raise SchemaError(f"enum values must all be strings or all be integers: {values}")


def _model_schema(model: type[Any]) -> dict[str, Any]:
    return structural(model.model_json_schema(by_alias=True, mode="validation"))


def crd_for(kind: KindInfo) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    status_schema = _model_schema(kind.status)
    root: dict[str, Any] = {
        "description": _flow(kind.description),
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": _model_schema(kind.spec),
            "status": status_schema,
        },
    }
    if kind.object_rules:
        root["x-kubernetes-validations"] = list(kind.object_rules)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {"app.kubernetes.io/name": "vauban", "app.kubernetes.io/part-of": "vauban"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": list(kind.categories),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [_column(c) for c in kind.printer_columns],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def _column(column: PrinterColumn) -> dict[str, Any]:
    out: dict[str, Any] = {"name": column.name, "type": column.type, "jsonPath": column.json_path}
    if column.description:
        out["description"] = column.description
    if column.priority:
        out["priority"] = column.priority
    return out


DELETION_PROTECTION = f"{GROUP}-deletion-protection"


def deletion_protection() -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy refusing to delete an object whose spec says
    deletionProtection: true. Enforced by the apiserver itself, so it holds when the
    operator is down and for `kubectl delete namespace` too."""
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": DELETION_PROTECTION},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [GROUP],
                            "apiVersions": ["*"],
                            "operations": ["DELETE"],
                            "resources": [
                                kind.plural
                                for kind in KINDS
                                if "deletion_protection" in kind.spec.model_fields
                            ],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "!has(oldObject.spec.deletionProtection)"
                        " || !oldObject.spec.deletionProtection",
                        "messageExpression": "oldObject.kind + ' ' + oldObject.metadata.namespace"
                        " + '/' + oldObject.metadata.name + ' has spec.deletionProtection: true;"
                        " set it to false before deleting it'",
                        "reason": "Forbidden",
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": DELETION_PROTECTION},
            "spec": {"policyName": DELETION_PROTECTION, "validationActions": ["Deny"]},
        },
    ]


_HEADER = (
    "# Generated from the pydantic models in operator/vauban/api by `vauban crds`.\n"
    "# Do not edit: change the models and regenerate.\n"
)


def _dump(documents: list[dict[str, Any]]) -> str:
    return _HEADER + yaml.safe_dump_all(documents, sort_keys=False, width=100, allow_unicode=True)


def render(kind: KindInfo) -> str:
    return _dump([crd_for(kind)])


def manifests() -> dict[str, str]:
    """File name -> content of everything `crds/` holds."""
    files = {f"{GROUP}_{kind.plural}.yaml": render(kind) for kind in KINDS}
    files[f"{DELETION_PROTECTION}.yaml"] = _dump(deletion_protection())
    return files


def write(directory: Path) -> list[Path]:
    """Write every manifest into `directory`; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in manifests().items():
        path = directory / name
        path.write_text(content, encoding="utf-8")
        paths.append(path)
    return paths


def drift(directory: Path) -> list[str]:
    """Files of `directory` that differ from what the models generate, or should not be there."""
    expected = manifests()
    stale = [
        str(directory / name)
        for name, content in expected.items()
        if not (directory / name).is_file()
        or (directory / name).read_text(encoding="utf-8") != content
    ]
    stale += [str(p) for p in sorted(directory.glob("*.yaml")) if p.name not in expected]
    return stale
