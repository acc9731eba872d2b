"""The bad-input corpus (manifests/samples/bad-input/): every object is refused, naming the field.

Each file's header says who refuses it on an API server without CEL rules (Kubernetes 1.20):
``schema`` (the CRD's structural schema: a 422 from the API server), ``operator`` (the pydantic
models: condition Valid=False) or ``webhook`` (an immutable field changed: the second document,
applied over the first, is refused at admission). Offline, the generated CRD schema stands in
for the API server; the integration tier applies the same files to a real one.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import kopf
import pytest
import yaml

from whetstone_operator.api import KINDS
from whetstone_operator.api.errors import SpecError, parse_spec
from whetstone_operator.reconcile.validation import decide_validity, spec_model
from whetstone_operator.webhooks import validate_spec

from tests.conftest import REPO_ROOT, sample_header

CORPUS = REPO_ROOT / "manifests" / "samples" / "bad-input"
FILES = sorted(CORPUS.glob("*.yaml"))
REFUSERS = {"schema", "operator", "webhook"}
CONDITION_MESSAGE_LIMIT = 32768


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _go_pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    # The API server's regexes are Go's: `$` is the end of the text, while Python's `$` also
    # matches before a final newline.
    if not isinstance(instance, str):
        return
    match = re.search(pattern, instance)
    if match is None or (pattern.endswith("$") and match.end() != len(instance)):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


ApiServerSchema = jsonschema.validators.extend(jsonschema.Draft4Validator, {"pattern": _go_pattern})


def crd_schema(kind: str) -> dict[str, Any]:
    info, _ = KINDS[kind]
    crd = yaml.safe_load((REPO_ROOT / "crds" / f"whetstone.dev_{info.plural}.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Field paths the CRD's structural schema refuses (`spec.a.b[0].c`)."""
    paths = []
    for error in ApiServerSchema(crd_schema(obj["kind"])).iter_errors(obj):
        where = ""
        for part in error.absolute_path:
            where += f"[{part}]" if isinstance(part, int) else f".{part}"
        if error.validator == "required":
            missing = re.match(r"'([^']+)' is a required property", error.message)
            if missing:
                where += f".{missing.group(1)}"
        paths.append(where.lstrip("."))
    return paths


def names_field(path: str, field: str) -> bool:
    return path == field or path.startswith((field + ".", field + "["))


def test_the_corpus_is_large_and_covers_every_kind_and_refuser() -> None:
    assert len(FILES) >= 60
    kinds = Counter(documents(p)[0]["kind"] for p in FILES)
    assert set(kinds) == set(KINDS) and min(kinds.values()) >= 15, kinds
    refusers = Counter(sample_header(p).get("refused-by") for p in FILES)
    assert set(refusers) == REFUSERS, refusers
    for path in FILES:
        docs = documents(path)
        assert {"refused-by", "field", "case"} <= sample_header(path).keys(), path.name
        assert all(d["metadata"]["name"] == path.stem for d in docs), path.name


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_refused_with_a_message_naming_the_field(path: Path) -> None:
    head = sample_header(path)
    field, refuser = head["field"], head["refused-by"]
    docs = documents(path)
    obj = docs[0]
    kind = obj["kind"]
    if refuser == "schema":
        paths = schema_errors(obj)
        assert any(names_field(p, field) for p in paths), f"schema errors: {paths}"
        return

    # Everything else passes the structural schema, so only the models (or the webhook) stand
    # between it and the operator.
    assert schema_errors(obj) == []
    if refuser == "operator":
        with pytest.raises(SpecError) as info:
            parse_spec(spec_model(kind), obj["spec"])
        assert any(names_field(m.partition(":")[0], field) for m in info.value.messages), (
            info.value.messages
        )
        outcome = decide_validity(kind, obj["spec"], {}, 1, datetime.now(UTC))
        message = outcome.status_patch["message"]
        assert not outcome.valid and field in message, message
        assert head.get("mentions", "") in message, message
        assert len(message) < CONDITION_MESSAGE_LIMIT
        return

    old, new = docs
    assert schema_errors(new) == []
    parse_spec(spec_model(kind), old["spec"])
    resource = kopf.Resource("whetstone.dev", "v1alpha1", KINDS[kind][0].plural)
    with pytest.raises(kopf.AdmissionError) as refused:
        asyncio.run(validate_spec(body=kopf.Body(new), resource=resource, old=old))
    assert field in str(refused.value), refused.value
