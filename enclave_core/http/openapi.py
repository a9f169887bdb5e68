"""OpenAPI 3 helpers: documents built with apispec from marshmallow schemas, and their route.

Each listener serves its own document at ``GET /openapi.json`` (:class:`OpenApiResource`); the
documents themselves are described in ``runtime/apidoc.py`` and ``supervisor/apidoc.py``, and
written to ``docs/api/`` by :mod:`enclave_core.cli.apidocs`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import falcon
import falcon.asgi
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.common import resolve_schema_cls

from enclave_core import __version__
from enclave_core.http.schemas import ErrorSchema

OPENAPI_VERSION = "3.0.3"
OPENAPI_PATH = "/openapi.json"
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
TEXT = "text/plain"
BEARER = "bearerAuth"


def _schema_name(schema: Any) -> str:
    """Component name of a schema class: its name without the ``Schema`` suffix."""
    cls = resolve_schema_cls(schema)
    name = str(getattr(cls, "__name__", cls))
    return name.removesuffix("Schema") or name


def new_spec(title: str, description: str, **options: Any) -> APISpec:
    """An empty document for one listener, versioned like the package."""
    return APISpec(
        title=title,
        version=__version__,
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin(schema_name_resolver=_schema_name)],
        info={"description": description},
        **options,
    )


def json_body(schema: Any, description: str) -> dict[str, Any]:
    """A response with a JSON body described by ``schema``."""
    return {"description": description, "content": {JSON: {"schema": schema}}}


def error(description: str, schema: Any = ErrorSchema) -> dict[str, Any]:
    """An error response: JSON ``{"title","description"}``."""
    return json_body(schema, description)


def document_operation(description: str) -> dict[str, Any]:
    """The ``GET /openapi.json`` operation's 200 answer."""
    return json_body({"type": "object"}, description)


def add_document_path(spec: APISpec) -> None:
    """``GET /openapi.json`` as a listener without a token answers it (control, supervisor)."""
    spec.path(
        OPENAPI_PATH,
        operations={
            "get": {
                "summary": "This OpenAPI document",
                "responses": {"200": document_operation("this document")},
            }
        },
    )


def add_bearer_scheme(spec: APISpec, description: str) -> None:
    """Declare the Bearer token scheme the protected operations name."""
    spec.components.security_scheme(
        BEARER, {"type": "http", "scheme": "bearer", "description": description}
    )


#: What every listener may answer to any request before a route sees it (``runtime.limits``,
#: ``supervisor.limits``; README "Limits"), each with ``Connection: close``.
LIMIT_RESPONSES = {
    "408": "the request head or body did not arrive within header_timeout_s / request_timeout_s",
    "413": "the body exceeds max_body_bytes (or the route's own limit)",
    "431": "the request line and header fields exceed max_header_bytes",
}
ERROR_REF = "#/components/schemas/Error"
_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})


def add_limit_responses(document: dict[str, Any]) -> None:
    """Declare the listener's limit answers on every operation that does not name them."""
    for item in document.get("paths", {}).values():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for status, description in LIMIT_RESPONSES.items():
                responses.setdefault(status, json_body({"$ref": ERROR_REF}, description))


def render(spec: APISpec) -> dict[str, Any]:
    """The document as plain JSON data (a round trip drops tuples and other Python types),
    with the listener's limit answers on every operation."""
    if "Error" not in spec.components.schemas:
        spec.components.schema("Error", schema=ErrorSchema)
    document: dict[str, Any] = json.loads(json.dumps(spec.to_dict()))
    add_limit_responses(document)
    return document


def dumps(document: dict[str, Any]) -> str:
    """The committed form: keys sorted, indent 2, a trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


class OpenApiResource:
    """``GET /openapi.json``: this listener's OpenAPI document (built on first use)."""

    def __init__(self, build: Callable[[], dict[str, Any]]) -> None:
        self._build = build
        self._body: bytes | None = None

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Answer the document."""
        if self._body is None:
            self._body = json.dumps(self._build(), sort_keys=True).encode("utf-8")
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body
