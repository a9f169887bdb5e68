"""Shared plumbing of the AWS backends (KMS, S3, SSM): lazy boto3 clients and error mapping.

Clients are built on first use from the injected session (or a default one), never copying
credentials; an ``endpoint_url`` option wins over botocore's ``AWS_ENDPOINT_URL*`` variables;
every call has ``standard`` retries and explicit timeouts. :class:`AwsCredentialOptions` is the
``credentials`` option, :func:`aws_errors` maps failures to the project's exceptions (naming the
operation and resource, never a value), :func:`principal_arn` turns an STS caller ARN into a
principal. Why: docs/architecture.md, "AWS clients and credentials".
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from loguru import logger
from marshmallow import Schema, fields, validate, validates_schema
from marshmallow import ValidationError as SchemaError

from enclave_core import __version__
from enclave_core.errors import (
    AccessDenied,
    BackendError,
    ConfigError,
    EnclaveError,
    ValidationError,
)

if TYPE_CHECKING:
    from botocore.config import Config

# boto3, botocore.config and the IMDS credential provider are imported where they are first
# used: they take ~0.25 s to import, which every `enclave` process would otherwise pay at start
# (the plugins import this module) even with only local backends configured.

DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 20.0
DEFAULT_MAX_ATTEMPTS = 5
USER_AGENT_EXTRA = f"simple-enclave/{__version__}"
_MAX_AWS_MESSAGE = 500  # AWS access-denied messages name two ARNs and a reason
#: Values of the ``credentials`` option.
CREDENTIAL_SOURCES = ("default", "imds")

#: Error codes every AWS service shares; a backend adds its own on top.
COMMON_ERRORS: Mapping[str, type[EnclaveError]] = {
    "AccessDeniedException": AccessDenied,
    "AccessDenied": AccessDenied,
    "ValidationException": ValidationError,
    "ValidationError": ValidationError,
}

#: Error codes that mean "throttled"; botocore has already retried them when they reach us.
THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
    }
)


def client_config(
    *,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Config:
    """Return the botocore config every backend client uses: standard retries, timeouts, UA.

    ``max_attempts`` counts every attempt, the first included (botocore's ``total_max_attempts``,
    as ``AWS_MAX_ATTEMPTS`` does; botocore's own ``max_attempts`` key counts retries only).
    """
    from botocore.config import Config

    return Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        user_agent_extra=USER_AGENT_EXTRA,
    )


class AwsCredentialOptions(Schema):
    """Options every AWS backend shares: where its credentials come from.

    A backend's ``Options`` derives from this class (``class Options(AwsCredentialOptions)``) and
    passes ``credentials`` and ``imds_endpoint`` on to :class:`AwsClients`.

    - ``credentials``: ``default`` (boto3's chain: env, profile, container, EC2 instance role) or
      ``imds`` (the instance role through IMDSv2 only, refreshed before expiry; for enclaves).
    - ``imds_endpoint``: ``http://host[:port]`` of IMDS for ``credentials: imds``; default
      ``$AWS_EC2_METADATA_SERVICE_ENDPOINT``, else ``http://169.254.169.254``.
    """

    credentials = fields.String(load_default="default", validate=validate.OneOf(CREDENTIAL_SOURCES))
    imds_endpoint = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.URL(schemes={"http"}, require_tld=False),
    )

    @validates_schema
    def _endpoint_needs_imds(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("imds_endpoint") and data.get("credentials") != "imds":
            raise SchemaError("needs credentials: imds", field_name="imds_endpoint")


class AwsClients:
    """Builds one boto3 client per service on first use, from an injected or a default session.

    :param session: a ``boto3.session.Session``; None builds one on the first call, with
        ``session_factory`` (default ``boto3.session.Session``).
    :param region: the region for every client; None leaves it to the session.
    :param config: the botocore config (see :func:`client_config`).
    :param endpoints: ``{service: endpoint_url}``; a missing or None entry lets botocore apply
        ``AWS_ENDPOINT_URL_<SERVICE>`` / ``AWS_ENDPOINT_URL``, else the public endpoint.
    :param credentials: ``"default"`` or ``"imds"``; ``"imds"`` builds the session with
        :func:`~enclave_core.aws.credentials.enclave_session` (at ``imds_endpoint``) on first use,
        in place of any injected session or factory.
    """

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], context: Any, endpoints: Mapping[str, str | None]
    ) -> AwsClients:
        """Clients for a backend from its validated options (region, timeouts, max_attempts,
        credentials, imds_endpoint) and the deployment's :class:`BackendContext`.

        :param endpoints: ``{service: endpoint_url option value}``.
        """
        return cls(
            session=context.session,
            region=options.get("region") or context.region,
            config=client_config(
                connect_timeout_s=options.get("connect_timeout_s", 5.0),
                read_timeout_s=options.get("read_timeout_s", 20.0),
                max_attempts=options.get("max_attempts", 5),
            ),
            endpoints=endpoints,
            credentials=options.get("credentials", "default"),
            imds_endpoint=options.get("imds_endpoint"),
        )

    def __init__(
        self,
        *,
        session: Any = None,
        region: str | None = None,
        config: Config | None = None,
        endpoints: Mapping[str, str | None] | None = None,
        session_factory: Callable[[], Any] | None = None,
        credentials: str = "default",
        imds_endpoint: str | None = None,
    ) -> None:
        if credentials not in CREDENTIAL_SOURCES:
            raise ConfigError(f"AWS credentials must be one of {CREDENTIAL_SOURCES}")
        if credentials == "imds":
            from enclave_core.aws.credentials import enclave_session

            session = None
            session_factory = partial(enclave_session, region, imds_endpoint=imds_endpoint)
        self._session = session
        self._session_factory = session_factory
        self.region = region
        self.config = config or client_config()
        self.endpoints = dict(endpoints or {})
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def session(self) -> Any:
        """The boto3 session, built on first use when none was injected."""
        with self._lock:
            if self._session is None:
                # looked up now, not at import, so tests can substitute the class
                import boto3.session

                factory = self._session_factory or boto3.session.Session
                self._session = factory()
            return self._session

    def client(self, service: str) -> Any:
        """Return the client of ``service`` (``"kms"``, ``"s3"``...), building it once."""
        session = self.session
        with self._lock:
            existing = self._clients.get(service)
            if existing is not None:
                return existing
            kwargs: dict[str, Any] = {"config": self.config}
            if self.region:
                kwargs["region_name"] = self.region
            if self.endpoints.get(service):
                kwargs["endpoint_url"] = self.endpoints[service]
            created = session.client(service, **kwargs)
            self._clients[service] = created
            return created


def error_code(exc: ClientError) -> str:
    """Return the AWS error code of a ClientError (``""`` when the answer had none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def _aws_message(exc: ClientError, sensitive: Iterable[bytes]) -> str:
    """AWS's own message, bounded, and dropped if it quotes a sensitive value."""
    message = str(exc.response.get("Error", {}).get("Message", "") or "")[:_MAX_AWS_MESSAGE]
    for value in sensitive:
        if value and (
            value.decode("latin-1") in message or base64.b64encode(value).decode() in message
        ):
            return "(message withheld: it quotes request data)"
    return message


def map_client_error(
    exc: Exception,
    *,
    service: str,
    operation: str,
    resource: str,
    codes: Mapping[str, type[EnclaveError]] | None = None,
    sensitive: Iterable[bytes] = (),
) -> EnclaveError:
    """Translate a botocore exception into the project's exception tree.

    :param service: e.g. ``"KMS"``; :param operation: e.g. ``"Decrypt"``;
    :param resource: what the call was about (``"key 1234..."``), named in the message.
    :param codes: service-specific ``{AWS error code: project error}``, over :data:`COMMON_ERRORS`.
    :param sensitive: request values that must never appear in the message.
    """
    where = f"{service} {operation} of {resource}"
    if isinstance(exc, ClientError):
        code = error_code(exc)
        detail = _aws_message(exc, sensitive)
        table = {**COMMON_ERRORS, **(codes or {})}
        if code in THROTTLING_CODES:
            return BackendError(f"{where}: throttled by AWS after retries ({code})")
        cls = table.get(code, BackendError)
        return cls(f"{where} failed: {code or 'unknown error'}" + (f": {detail}" if detail else ""))
    if isinstance(exc, ParamValidationError):
        return ValidationError(f"{where}: invalid request parameters")
    if isinstance(exc, NoCredentialsError):
        return BackendError(f"{where}: no AWS credentials found (instance role, env or profile)")
    if isinstance(exc, (HTTPClientError, BotoConnectionError)):
        return BackendError(f"{where}: could not reach the endpoint ({type(exc).__name__})")
    return BackendError(f"{where} failed: {type(exc).__name__}")


_ASSUMED_ROLE = re.compile(
    r"^arn:(?P<p>[\w-]+):sts::(?P<acct>\d{12}):assumed-role/(?P<role>[^/]+)/[^/]+$"
)
_STS_USER = re.compile(r"^arn:(?P<p>[\w-]+):sts::(?P<acct>\d{12}):user/(?P<user>.+)$")
_PRINCIPAL = re.compile(
    r"^arn:[\w-]+:(iam::\d{12}:(root|user/.+|role/.+)|sts::\d{12}:federated-user/.+)$"
)


def principal_arn(arn: str) -> str:
    """Turn an STS caller ARN into the IAM principal a key policy can name.

    ``arn:<p>:sts::<acct>:assumed-role/<Role>/<session>`` becomes
    ``arn:<p>:iam::<acct>:role/<Role>`` (STS drops the role's path, so a role with a path must
    be named without it in the policy).
    ``arn:<p>:sts::<acct>:user/<name>``, which moto answers for unknown credentials, becomes the
    IAM user ARN. IAM user, role and root ARNs and federated users pass through; anything else is
    a BackendError.
    """
    match = _ASSUMED_ROLE.match(arn)
    if match:
        return f"arn:{match['p']}:iam::{match['acct']}:role/{match['role']}"
    match = _STS_USER.match(arn)
    if match:
        return f"arn:{match['p']}:iam::{match['acct']}:user/{match['user']}"
    if _PRINCIPAL.match(arn):
        return arn
    raise BackendError(f"STS GetCallerIdentity: caller {arn!r} is not an IAM principal ARN")


@contextmanager
def aws_errors(
    service: str,
    operation: str,
    resource: str,
    *,
    codes: Mapping[str, type[EnclaveError]] | None = None,
    sensitive: Iterable[bytes] = (),
) -> Iterator[None]:
    """Run an AWS call, turning botocore exceptions into project errors (logged once, here).

    ``sensitive`` values (plaintexts...) are kept out of the message even if AWS quotes them.
    """
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        error = map_client_error(
            exc,
            service=service,
            operation=operation,
            resource=resource,
            codes=codes,
            sensitive=tuple(sensitive),
        )
        code = error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
        logger.warning(
            "AWS call failed",
            service=service,
            operation=operation,
            resource=resource,
            code=code,
            error_class=type(error).__name__,
        )
        raise error from None
