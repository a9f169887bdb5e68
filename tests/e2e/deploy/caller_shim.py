"""TEST-ONLY: the KMS Recipient shim deciding each request for the principal that signed it.

:class:`~tests.services.kms_shim_server.KmsShimServer` evaluates every key policy for one fixed
principal. The deployed enclave calls KMS as the stack's instance role (the fake host gives it
that role's credentials, from STS AssumeRole), and the stack's key policy names that role, so
here the principal is found per request, as KMS does: the access key in the request's
``Authorization`` header, looked up with STS ``GetCallerIdentity`` on moto (an assumed-role ARN
becomes its role's ARN, :func:`enclave_core.aws.clients.principal_arn`).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import boto3

from enclave_core.aws.clients import principal_arn
from tests.services.kms_recipient_shim import MOTO_PRINCIPAL, KmsRecipientShim
from tests.services.kms_shim_server import KmsShimServer, RootFile, _ShimHandler

_CREDENTIAL = re.compile(r"Credential=([A-Z0-9]+)/")


class _PerRequestShim(KmsRecipientShim):
    """The shim, with ``principal`` the caller of the request this thread is handling."""

    _local = threading.local()

    @property  # type: ignore[override]
    def principal(self) -> str:
        return str(getattr(self._local, "principal", None) or self._default)

    @principal.setter
    def principal(self, value: str) -> None:
        self._default = value

    def deciding_for(self, principal: str | None) -> None:
        """Make ``principal`` the caller of this thread's request (None: the default)."""
        self._local.principal = principal


class _CallerHandler(_ShimHandler):
    def _kms(self, operation: str, body: bytes) -> None:
        server = self.server
        assert isinstance(server, CallerKmsShim)
        server.per_request.deciding_for(server.principal_of(self.headers.get("Authorization", "")))
        try:
            super()._kms(operation, body)
        finally:
            server.per_request.deciding_for(None)


class CallerKmsShim(KmsShimServer):
    """The KMS shim on a free loopback port, in front of the moto server at ``upstream``.

    :param root: the trusted root's PEM file (read lazily).
    """

    def __init__(self, *, upstream: str, root: Path, region: str = "us-east-1") -> None:
        super().__init__(upstream=upstream, root=root, region=region)
        self.per_request = _PerRequestShim(
            root=RootFile(root), endpoint_url=upstream, region=region, principal=MOTO_PRINCIPAL
        )
        self.shim = self.per_request
        self.RequestHandlerClass = _CallerHandler
        self._upstream_url = upstream
        self._region = region
        self._principals: dict[str, str] = {}
        self._lock = threading.Lock()
        #: The principals seen, for the test's assertions.
        self.callers: set[str] = set()

    def principal_of(self, authorization: str) -> str | None:
        """The IAM principal of the access key that signed a request (cached per key)."""
        found = _CREDENTIAL.search(authorization)
        if found is None:
            return None
        access_key = found.group(1)
        with self._lock:
            if access_key not in self._principals:
                sts: Any = boto3.session.Session(
                    aws_access_key_id=access_key,
                    aws_secret_access_key="unused-moto-checks-no-signature",
                    region_name=self._region,
                ).client("sts", endpoint_url=self._upstream_url)
                arn = sts.get_caller_identity()["Arn"]
                self._principals[access_key] = principal_arn(arn)
            principal = self._principals[access_key]
            self.callers.add(principal)
            return principal
