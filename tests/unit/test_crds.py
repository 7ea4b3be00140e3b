"""The committed CRDs are what the models generate, and what they generate is structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from vauban.api import crdgen, docgen
from vauban.api.cluster import MANAGED_CLUSTER, ManagedClusterSpec
from vauban.api.common import GROUP, KindInfo, human_size
from vauban.api.database import MANAGED_DATABASE, ManagedDatabaseSpec

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crds_match_the_models() -> None:
    assert crdgen.drift(ROOT / "crds") == [], "run `vauban crds` and commit crds/"


def test_committed_api_reference_matches_the_models() -> None:
    reference = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert reference == docgen.render(), "run `vauban crds` and commit docs/api.md"


def test_argocd_customization_carries_the_health_check_for_every_kind() -> None:
    lua = (ROOT / "docs" / "argocd" / "health.lua").read_text(encoding="utf-8")
    patch = yaml.safe_load((ROOT / "docs" / "argocd" / "argocd-cm.yaml").read_text("utf-8"))
    assert patch["metadata"] == {"name": "argocd-cm", "namespace": "argocd"}
    assert patch["data"] == {
        f"resource.customizations.health.{GROUP}_{kind.kind}": lua for kind in crdgen.KINDS
    }


def _nodes(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)]
    for name, sub in schema.get("properties", {}).items():
        found += _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        found += _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        found += _nodes(schema["additionalProperties"], f"{path}{{}}")
    return found


@pytest.mark.parametrize("kind", crdgen.KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind: KindInfo) -> None:
    root = crdgen.crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _nodes(root):
        assert "type" in node, f"{path} has no type"
        for forbidden in ("$ref", "anyOf", "allOf", "oneOf", "const", "title", "$defs"):
            assert forbidden not in node, f"{path} carries {forbidden}"
        assert not ("properties" in node and "additionalProperties" in node), path


@pytest.mark.parametrize("kind", crdgen.KINDS, ids=lambda k: k.kind)
def test_every_spec_field_is_documented(kind: KindInfo) -> None:
    spec = crdgen.crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    for path, node in _nodes(spec["spec"], ".spec"):
        if path.endswith(("[]", "{}")):
            continue
        assert node.get("description"), f"{path} is not documented"


def _apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """The apiserver's defaulting: fill absent properties that declare a default, recursively."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for name, sub in schema.get("properties", {}).items():
        if name not in out and "default" in sub:
            out[name] = sub["default"]
        if name in out:
            out[name] = _apply_defaults(sub, out[name])
    return out


def _strip_empty(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_empty(v) for k, v in value.items() if v not in ({}, [])}
    return value


MINIMAL_SPECS = [
    (MANAGED_CLUSTER, ManagedClusterSpec, {"version": "17", "storage": {"size": "1Gi"}}),
    (
        MANAGED_CLUSTER,
        ManagedClusterSpec,
        {
            "mode": "External",
            "external": {"host": "db.example", "adminSecretRef": {"name": "admin"}},
            "backup": {
                "objectStore": {
                    "bucket": "backups",
                    "region": "eu-west-par",
                    "credentialsSecretRef": {"name": "s3"},
                }
            },
        },
    ),
    (
        MANAGED_DATABASE,
        ManagedDatabaseSpec,
        {"clusterRef": {"name": "main"}, "databaseName": "app", "owner": "app", "backup": {}},
    ),
]


@pytest.mark.parametrize(("kind", "model", "spec"), MINIMAL_SPECS)
def test_schema_defaults_agree_with_model_defaults(
    kind: KindInfo, model: type[ManagedClusterSpec | ManagedDatabaseSpec], spec: dict[str, Any]
) -> None:
    """What the apiserver stores after defaulting is what the operator assumes."""
    schema = crdgen.crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    defaulted = _apply_defaults(schema["properties"]["spec"], spec)
    assert _strip_empty(defaulted) == _strip_empty(model.model_validate(spec).to_wire())


def test_structural_conversion_rules() -> None:
    converted = crdgen.structural(
        {
            "$defs": {
                "Inner": {
                    "type": "object",
                    "properties": {"a": {"const": "x"}},
                    "additionalProperties": False,
                    "title": "Inner",
                }
            },
            "type": "object",
            "properties": {
                "opt": {"anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}], "default": None},
                "n": {"type": "number", "exclusiveMinimum": 0},
            },
        }
    )
    assert converted == {
        "type": "object",
        "properties": {
            "opt": {"type": "object", "properties": {"a": {"enum": ["x"], "type": "string"}}},
            "n": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
        },
    }


def test_unions_are_refused() -> None:
    with pytest.raises(crdgen.SchemaError):
        crdgen.structural({"anyOf": [{"type": "string"}, {"type": "integer"}]})


def test_generated_yaml_parses_back() -> None:
    for kind in crdgen.KINDS:
        text = crdgen.render(kind)
        assert yaml.safe_load(text) == crdgen.crd_for(kind)


@pytest.mark.parametrize("kind", crdgen.KINDS, ids=lambda k: k.kind)
def test_kubectl_explain_says_what_the_kind_is(kind: KindInfo) -> None:
    root = crdgen.crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # The root's description is what `kubectl explain <kind>` prints first.
    assert len(root["description"]) > 100
    assert root["description"] != root["properties"]["spec"]["description"]


@pytest.mark.parametrize("kind", crdgen.KINDS, ids=lambda k: k.kind)
def test_columns_show_why_not_ready_a_readable_size_and_wide_extras(kind: KindInfo) -> None:
    columns = {
        c["name"]: c
        for c in crdgen.crd_for(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
    }
    assert columns["Reason"]["jsonPath"] == ".status.conditions[?(@.type=='Ready')].reason"
    assert columns["Size"]["type"] == "string"
    assert "priority" not in columns["Size"]
    wide = {name for name, c in columns.items() if c.get("priority") == 1}
    assert "Last Backup" in wide or "Finished" in wide
    if kind is MANAGED_CLUSTER:
        assert {"Primary", "Endpoint", "Last Backup"} <= wide


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (None, None),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536 * 1024 * 1024, "1.5 GiB"),
        (5 * 1024**5, "5.0 PiB"),
        (3 * 1024**6, "3072.0 PiB"),
    ],
)
def test_human_size(size: int | None, shown: str | None) -> None:
    assert human_size(size) == shown
    # The status field's schema bounds what it may hold.
    assert shown is None or len(shown) <= 16
