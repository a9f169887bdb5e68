"""Check a real answer against an OpenAPI document: documented status, media type and schema."""

from __future__ import annotations

import json
import re
from typing import Any

from openapi_schema_validator import OAS30Validator, oas30_format_checker


def resolve(document: dict[str, Any], node: Any) -> Any:
    """``node`` with every local ``$ref`` replaced by what it points at (our schemas nest, never
    recurse)."""
    if isinstance(node, dict):
        if set(node) == {"$ref"}:
            target: Any = document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolve(document, target)
        return {key: resolve(document, value) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(document, item) for item in node]
    return node


def _template_regex(template: str) -> re.Pattern[str]:
    # {key} of /v1/storage/{key} spans segments; every other parameter is one segment.
    pattern = re.escape(template)
    pattern = pattern.replace(r"\{key\}", "(?P<key>.+)")
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", pattern)
    return re.compile(pattern + r"\Z")


def find_operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    """The operation of ``document`` that serves ``method path`` (AssertionError if none)."""
    bare = path.split("?", 1)[0]
    for template, item in document["paths"].items():
        if _template_regex(template).match(bare) and method.lower() in item:
            operation: dict[str, Any] = item[method.lower()]
            return operation
    raise AssertionError(f"{method} {bare} is not in the document {document['info']['title']!r}")


def check_answer(
    document: dict[str, Any],
    method: str,
    path: str,
    status: int,
    headers: dict[str, str],
    body: bytes,
) -> None:
    """Fail unless the answer is one the document describes, exactly."""
    where = f"{method} {path} -> {status}"
    operation = find_operation(document, method, path)
    responses = operation["responses"]
    assert str(status) in responses, f"{where}: status not documented ({sorted(responses)})"
    response = resolve(document, responses[str(status)])
    lower = {name.lower(): value for name, value in headers.items()}
    for name, header in response.get("headers", {}).items():
        if name.lower() in lower:
            OAS30Validator(header["schema"], format_checker=oas30_format_checker).validate(
                lower[name.lower()]
            )
    content = response.get("content")
    if not content:
        assert not body, f"{where}: a body where the document has none"
        return
    media = lower.get("content-type", "").split(";", 1)[0].strip()
    assert media in content, f"{where}: content type {media!r} not documented ({sorted(content)})"
    schema = content[media]["schema"]
    if media == "application/json":
        instance = json.loads(body)
    elif media.startswith("text/"):
        instance = body.decode("utf-8")
    else:
        assert schema == {"type": "string", "format": "binary"}, where
        return
    validator = OAS30Validator(schema, format_checker=oas30_format_checker)
    errors = sorted(validator.iter_errors(instance), key=str)
    assert not errors, f"{where}: {errors[0].message} at {list(errors[0].absolute_path)}"
