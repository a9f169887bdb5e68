"""JSON errors for every Falcon app of the project: each error is ``{"title","description"}``.

``EnclaveError`` subclasses map to their ``http_status``; NSM errors carry the module's error
code; a marshmallow ValidationError that was not turned into ours already is a 400 naming the
fields; anything unexpected becomes a 500 without a traceback (the log gets the exception type).
"""

from __future__ import annotations

import json
from typing import Any

import falcon
import falcon.asgi
import marshmallow
from loguru import logger

from enclave_core.errors import EnclaveError, NsmError, ValidationError
from enclave_core.http.schemas import describe_errors

#: NSM error codes caused by the caller (400) or by the PCR's state (409); others are 502.
NSM_STATUS = {
    "InvalidArgument": 400,
    "InvalidIndex": 400,
    "InputTooLarge": 400,
    "ReadOnlyIndex": 409,
    "InvalidOperation": 409,
}


def _body(title: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"title": title, "description": description, **extra}


def _serialize(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """Falcon's own errors (404 route, 405, 413...) in the same two-field shape."""
    title = exc.title or str(exc.status)
    resp.data = json.dumps(_body(title, exc.description or title)).encode("utf-8")
    resp.content_type = falcon.MEDIA_JSON


async def _enclave_error(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: EnclaveError, params: Any, **_: Any
) -> None:
    resp.status = exc.http_status
    resp.media = _body(exc.title, str(exc))


async def _nsm_error(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: NsmError, params: Any, **_: Any
) -> None:
    resp.status = NSM_STATUS.get(exc.code, 502)
    resp.media = _body("NSM error", f"{exc.code}: {exc}", code=exc.code)


async def _invalid(
    req: falcon.asgi.Request,
    resp: falcon.asgi.Response,
    exc: marshmallow.ValidationError,
    params: Any,
    **_: Any,
) -> None:
    resp.status = ValidationError.http_status
    resp.media = _body(ValidationError.title, "; ".join(describe_errors(exc.messages)))


def _unexpected(log_name: str, traceback: bool) -> Any:
    """The 500 handler: logged at ERROR with its cause, described to the client without it."""

    async def handle(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: Exception, params: Any, **_: Any
    ) -> None:
        log = logger.bind(method=req.method, path=req.path, error=type(exc).__name__)
        if traceback:
            log.opt(exception=exc).error("unexpected error while serving a request")
        else:
            log.error("unexpected error while serving a request")
        resp.status = 500
        resp.media = _body("Internal error", f"unexpected error; see {log_name}")

    return handle


def install_error_handlers(
    app: falcon.asgi.App, *, log_name: str = "the runtime log", traceback: bool = False
) -> None:
    """Make every error of ``app`` a JSON ``{"title","description"}`` body, never a traceback.

    :param log_name: where an operator finds the cause of a 500 (named in its description).
    :param traceback: log a 500's traceback too (the host's supervisor: nothing secret passes
        through it); the runtime logs the exception's type only.
    """
    app.set_error_serializer(_serialize)
    app.add_error_handler(Exception, _unexpected(log_name, traceback))
    app.add_error_handler(EnclaveError, _enclave_error)
    app.add_error_handler(NsmError, _nsm_error)
    app.add_error_handler(marshmallow.ValidationError, _invalid)
