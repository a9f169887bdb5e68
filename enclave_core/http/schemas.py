"""What the runtime's and the supervisor's HTTP APIs share: the error body and request loading.

Every request body, query string, path parameter and conditional header the APIs accept is a
marshmallow schema (``enclave_core.runtime.schemas``, ``enclave_core.supervisor.schemas``); the
same classes generate the OpenAPI documents (:mod:`enclave_core.http.openapi`). :func:`load_request`
turns marshmallow's messages into one :class:`~enclave_core.errors.ValidationError` (a 400 JSON
``{"title","description"}``) naming each bad field by its dotted path, never echoing its value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import marshmallow
from marshmallow import EXCLUDE, RAISE, Schema, fields

from enclave_core.errors import ValidationError

__all__ = [
    "ErrorSchema",
    "ParamsSchema",
    "RequestSchema",
    "describe_errors",
    "load_request",
]


class RequestSchema(Schema):
    """A JSON request body: an object whose unknown fields are errors."""

    class Meta:
        unknown = RAISE

    error_messages = {"type": "the body must be a JSON object"}


class ParamsSchema(Schema):
    """Query, path or header parameters: those not declared are ignored, as HTTP APIs do."""

    class Meta:
        unknown = EXCLUDE


class ErrorSchema(Schema):
    """Every error answer of the APIs: ``{"title", "description"}``."""

    title = fields.String(required=True, metadata={"description": "short name of the error"})
    description = fields.String(
        required=True, metadata={"description": "what was wrong, naming the field or resource"}
    )


def describe_errors(messages: Any, path: str = "") -> list[str]:
    """Flatten marshmallow's error messages into ``"dotted.path: message"`` lines."""
    if isinstance(messages, Mapping):
        lines: list[str] = []
        for key in sorted(messages, key=str):
            if key == "_schema":
                lines += describe_errors(messages[key], path)
            else:
                lines += describe_errors(messages[key], f"{path}.{key}" if path else str(key))
        return lines
    if isinstance(messages, list | tuple):
        return [line for message in messages for line in describe_errors(message, path)]
    return [f"{path}: {messages}" if path else str(messages)]


def load_request(schema: Schema, data: Any) -> dict[str, Any]:
    """Load ``data`` with ``schema``; ValidationError (400) naming every bad field otherwise."""
    try:
        loaded: dict[str, Any] = schema.load(data)
    except marshmallow.ValidationError as exc:
        raise ValidationError("; ".join(describe_errors(exc.messages))) from None
    return loaded
