"""Notes, a Falcon app that gunicorn serves inside the enclave (see gunicorn.conf.py).

It keeps short notes in the enclave's encrypted storage through the app API, with ETags for
safe concurrent updates, and says whether its static secret reached it, never showing it.

Routes:

- ``GET /``: a greeting (``DEFAULT_GREETING``, or ``GREETING`` from enclave.yaml's ``app.env``);
- ``GET /health``: ``ok`` (enclave.yaml's ``health_path``: the runtime waits for it);
- ``GET /secret``: ``{"secret_present", "length"}`` for ``APP_SIGNING_KEY``, never its value;
- ``GET /notes``: ``{"notes": [name, ...]}``;
- ``GET /notes/{name}``: the note, with its ``ETag``;
- ``PUT /notes/{name}``: store the body (201 with the new ``ETag``); ``If-Match: <etag>`` writes
  only over that version and ``If-None-Match: *`` only a new note, else 412 and nothing changes;
- ``DELETE /notes/{name}``: 204, or 404.

The runtime gives the app ``PORT``, ``ENCLAVE_API_URL``, ``ENCLAVE_MGMT_TOKEN`` and
``ENCLAVE_CPU_COUNT``, and the static secrets (here ``APP_SIGNING_KEY``) in its environment.
"""

from __future__ import annotations

import os
import sys

import falcon

from enclave_core.appclient import (
    AppApiError,
    BadRequest,
    EnclaveClient,
    NotFound,
    PreconditionFailed,
    TooLarge,
    Unavailable,
)

DEFAULT_GREETING = "Hello from Simple Enclave and Falcon!"
SIGNING_KEY_ENV = "APP_SIGNING_KEY"
NOTES_PREFIX = "notes/"
MAX_NOTE_BYTES = 1024 * 1024


class Greeting:
    """``GET /``."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Greet in plain text."""
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = (os.environ.get("GREETING") or DEFAULT_GREETING) + "\n"


class Health:
    """``GET /health``: gunicorn is up and this worker answers."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer ``ok``."""
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "ok\n"


class SecretStatus:
    """``GET /secret``: whether the static secret is present and how long it is."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Describe the secret without its value."""
        value = os.environ.get(SIGNING_KEY_ENV, "")
        resp.media = {"secret_present": bool(value), "length": len(value)}


class Notes:
    """``GET /notes``: the names of the notes."""

    def __init__(self, api: EnclaveClient | None) -> None:
        self._api = api

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """List the notes."""
        keys = required(self._api).list(NOTES_PREFIX)
        resp.media = {"notes": [key.removeprefix(NOTES_PREFIX) for key in keys]}


class Note:
    """``GET/PUT/DELETE /notes/{name}``: one note, stored under ``notes/{name}``."""

    def __init__(self, api: EnclaveClient | None) -> None:
        self._api = api

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        """The note's bytes and ETag."""
        note = required(self._api).get(NOTES_PREFIX + name)
        resp.content_type = falcon.MEDIA_TEXT
        resp.set_header("ETag", note.etag)
        resp.data = note.data

    def on_put(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        """Store the body, conditionally with ``If-Match`` or ``If-None-Match: *``."""
        data = req.bounded_stream.read(MAX_NOTE_BYTES + 1)
        if len(data) > MAX_NOTE_BYTES:
            too_large = f"a note is at most {MAX_NOTE_BYTES} bytes"
            raise falcon.HTTPContentTooLarge(description=too_large)
        etag = required(self._api).put(
            NOTES_PREFIX + name,
            data,
            if_match=req.get_header("If-Match"),
            if_none_match=req.get_header("If-None-Match") == "*",
        )
        resp.status = falcon.HTTP_201
        resp.set_header("ETag", etag)
        resp.media = {"name": name, "status": "stored"}

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        """Delete the note."""
        if not required(self._api).delete(NOTES_PREFIX + name):
            raise falcon.HTTPNotFound(description=f"no note {name!r}")
        resp.status = falcon.HTTP_204


def required(api: EnclaveClient | None) -> EnclaveClient:
    """The app API client, or 503 when the app runs without the runtime."""
    if api is None:
        raise falcon.HTTPServiceUnavailable(description="no app API: run the app with enclave dev")
    return api


#: What the app answers when the app API refused a call: its own status for what the client
#: asked (the runtime's description says which rule), 502 when the app itself was refused.
STATUS_OF = {BadRequest: 400, NotFound: 404, PreconditionFailed: 412, TooLarge: 413}


def app_api_error(
    req: falcon.Request, resp: falcon.Response, ex: AppApiError, params: dict[str, str]
) -> None:
    """Answer an app API error as this app's own JSON error (Falcon renders the HTTPError)."""
    status = STATUS_OF.get(type(ex))
    if status is not None:
        raise falcon.HTTPError(status, description=ex.description)
    if isinstance(ex, Unavailable):
        raise falcon.HTTPServiceUnavailable(
            description="encrypted storage is not available right now",
            retry_after=int(ex.retry_after or 1),
        )
    # 401, 403, 409, 5xx: the app's own problem, not the client's; the details go to the log.
    print(f"app API error: {ex}", file=sys.stderr, flush=True)
    raise falcon.HTTPBadGateway(description="the app API refused the call")


def create_app(api: EnclaveClient | None = None) -> falcon.App:
    """The Falcon app; by default with the app API the runtime gave this process, if any."""
    if api is None and os.environ.get("ENCLAVE_API_URL"):
        api = EnclaveClient.from_env()
    app = falcon.App()
    app.add_route("/", Greeting())
    app.add_route("/health", Health())
    app.add_route("/secret", SecretStatus())
    app.add_route("/notes", Notes(api))
    app.add_route("/notes/{name}", Note(api))
    app.add_error_handler(AppApiError, app_api_error)
    return app


#: What gunicorn serves (``app:app``).
app = create_app()
