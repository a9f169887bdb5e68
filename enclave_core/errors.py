"""The project's exception tree.

Every error a user can cause or meet derives from :class:`EnclaveError`. Messages name the
operation and the resource (key, parameter, backend) but never a secret value, a data key, a token
or a plaintext. The CLI prints ``ERROR: <message>`` for these without a traceback, and the HTTP APIs
map each class to one status code.
"""

from __future__ import annotations


class EnclaveError(Exception):
    """Base class of every error the project raises on purpose."""

    #: HTTP status the APIs answer with when this error reaches them.
    http_status: int = 500
    #: Short title used in JSON error bodies ``{"title", "description"}``.
    title: str = "Internal error"


class ConfigError(EnclaveError):
    """enclave.yaml (or a value in it) is invalid. ``errors`` holds one line per problem."""

    http_status = 400
    title = "Invalid configuration"

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        self.errors = errors or [message]
        super().__init__(message)


class BackendNotFound(ConfigError):
    """A backend named in enclave.yaml is not installed."""


class DuplicateBackend(EnclaveError):
    """Two plugins registered a backend under the same name for one capability."""


class PluginError(EnclaveError):
    """A plugin failed while it was being loaded or called."""


class ValidationError(EnclaveError):
    """A request to one of the APIs is malformed (bad key, bad JSON, out-of-range PCR...)."""

    http_status = 400
    title = "Bad request"


class BackendError(EnclaveError):
    """A backend operation failed. Subclasses say how."""

    http_status = 502
    title = "Backend error"


class NotFound(BackendError):
    """The object, parameter or key does not exist."""

    http_status = 404
    title = "Not found"


class PreconditionFailed(BackendError):
    """A conditional write (``If-Match`` / ``If-None-Match: *``) lost."""

    http_status = 412
    title = "Precondition failed"


class AccessDenied(BackendError):
    """The backend refused the call (for example a KMS policy condition was not met)."""

    http_status = 403
    title = "Access denied"


class InvalidKeyState(BackendError):
    """A KMS key is disabled, pending deletion or otherwise unusable."""

    http_status = 409
    title = "Invalid key state"


class CryptoError(EnclaveError):
    """Decryption or authentication failed: the data was tampered with or belongs elsewhere."""

    http_status = 500
    title = "Decryption failed"


class AttestationError(EnclaveError):
    """An attestation document is malformed or does not verify, or the NSM refused a call."""

    http_status = 502
    title = "Attestation error"


class NsmError(AttestationError):
    """The Nitro Secure Module answered with an error code (``code`` holds its name)."""

    def __init__(self, code: str, message: str | None = None) -> None:
        self.code = code
        super().__init__(message or f"NSM error: {code}")


class LauncherError(EnclaveError):
    """Starting, describing or stopping the enclave failed."""

    http_status = 500
    title = "Launcher error"


class StateConflict(EnclaveError):
    """The requested change conflicts with the current state (already running or stopped)."""

    http_status = 409
    title = "Conflict"


class KeyRefused(EnclaveError):
    """A KMS key is not one that only the attested image can ever use; nothing was done with it."""

    http_status = 403
    title = "Key refused"


class TamperingDetected(EnclaveError):
    """Something the host controls is not what an attested enclave made: an integrity failure.

    Raised before anything is decrypted or adopted, and always logged at ERROR as a tampering
    event with its cause.
    """

    http_status = 500
    title = "Integrity failure"
