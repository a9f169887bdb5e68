"""enclave.yaml: the marshmallow schema (version 1), ``$env`` references and loading.

Every key has a default except ``name``. Unknown keys and wrong types are reported one per line
with their dotted path, for example ``storage.options.bukcet: Unknown field.``. Values may be
written ``{"$env": "VAR"}``; :func:`load_config` resolves them and remembers where they were, so
``enclave config show`` can print the reference instead of the value.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import marshmallow
import yaml
from marshmallow import RAISE, Schema, fields, post_load, pre_load, validate, validates_schema

from enclave_core.errors import ConfigError
from enclave_core.plugin.capabilities import Capability

CONFIG_FILENAME = "enclave.yaml"
STATE_DIRNAME = ".enclave"
DEVELOPMENT_ONLY_BACKENDS: dict[Capability, set[str]] = {
    Capability.STORAGE: {"local"},
    Capability.SECRETS: {"local"},
    Capability.KMS: {"local"},
    Capability.ATTESTATION: {"simulated"},
    Capability.LAUNCHER: {"process"},
}
NAME_RE = r"^[a-z][a-z0-9-]{0,31}$"
SECRET_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # noqa: S105 - a pattern, not a password
ENV_VAR_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
#: Bounds on a parsed document: YAML aliases can nest or repeat a node without end (cycles,
#: "billion laughs"), which would otherwise exhaust the stack or hang the recursive checks below.
MAX_DOCUMENT_DEPTH = 64
MAX_DOCUMENT_NODES = 100_000


class _Strict(Schema):
    """A schema that rejects unknown keys and fills absent nested blocks with their defaults."""

    class Meta:
        unknown = RAISE

    _nested_defaults: dict[str, Any] = {}

    @pre_load
    def _fill_nested(self, data: Any, **_: Any) -> Any:
        if isinstance(data, dict):
            for key, default in self._nested_defaults.items():
                if key not in data:
                    data = {**data, key: copy.deepcopy(default)}
        return data


def _port(**kw: Any) -> fields.Integer:
    return fields.Integer(validate=validate.Range(1, 65535), **kw)


def _listen_address(value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise marshmallow.ValidationError("must be HOST:PORT, for example 127.0.0.1:8443.")


@dataclass
class EnclaveSettings:
    """The ``enclave:`` block: resources and image of the enclave."""

    cpu_count: int = 2
    memory_mib: int = 4096
    cid: int = 16
    eif: str = "artifacts/image.eif"
    debug_mode: bool = False


class EnclaveSchema(_Strict):
    cpu_count = fields.Integer(load_default=2, validate=validate.Range(1, 256))
    memory_mib = fields.Integer(load_default=4096, validate=validate.Range(64, 4 * 1024 * 1024))
    cid = fields.Integer(load_default=16, validate=validate.Range(4, 2**32 - 2))
    eif = fields.String(load_default="artifacts/image.eif")
    debug_mode = fields.Boolean(load_default=False)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> EnclaveSettings:
        return EnclaveSettings(**data)


@dataclass
class AppSettings:
    """The ``app:`` block: the user's HTTP app, run by the runtime as its child."""

    dir: str = "."
    command: list[str] = field(default_factory=lambda: ["python3", "app.py"])
    port: int = 7074
    env: dict[str, str] = field(default_factory=dict)
    health_path: str | None = None
    #: Patterns of files left out of the image, on top of the built-in ones
    #: (:data:`enclave_core.image.files.DEFAULT_EXCLUDE`).
    exclude: list[str] = field(default_factory=list)


class AppSchema(_Strict):
    dir = fields.String(load_default=".")
    command = fields.List(
        fields.String(validate=validate.Length(min=1)),
        load_default=lambda: ["python3", "app.py"],
        validate=validate.Length(min=1),
    )
    port = _port(load_default=7074)
    env = fields.Dict(
        keys=fields.String(validate=validate.Regexp(ENV_VAR_RE)),
        values=fields.String(),
        load_default=dict,
    )
    health_path = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Regexp(r"^/", error="must start with /."),
    )
    # ``exclude`` is a Schema attribute of marshmallow's: the field has another attribute name.
    excluded = fields.List(
        fields.String(validate=validate.Length(min=1, max=256)),
        data_key="exclude",
        load_default=list,
        validate=validate.Length(max=256),
    )

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> AppSettings:
        data["exclude"] = data.pop("excluded")
        return AppSettings(**data)


#: ``runtime.limits.max_body_bytes``: room for the app API's 10 MiB storage objects (README: App
#: API), whose route limits (storage 10 MiB, secrets 64 KiB) stay on top of this one.
RUNTIME_MAX_BODY = 16 * 1024 * 1024
#: ``supervisor.limits.max_body_bytes``: the management API takes small JSON bodies only.
SUPERVISOR_MAX_BODY = 1024 * 1024


@dataclass
class LimitsSettings:
    """What one client may send and hold on a listener (``runtime.limits``, ``supervisor.limits``).

    The defaults are those of mature HTTP servers: a 16 KiB request head (Node.js, uvicorn), a
    head within 20 s (Apache's mod_reqtimeout), a whole request within 300 s (Node.js), keep-alive
    connections closed after 60 s without a request (nginx: 75 s) and 1024 connections per
    listener (nginx: 512 or 768 per worker), so a client holding 500 idle connections does not
    lock anybody out. Each limit applies per listener; see README "Limits" for what a client sees.
    """

    #: The request line and header fields: beyond it, 431 and close.
    max_header_bytes: int = 16 * 1024
    #: The request body, Content-Length or chunked: beyond it, 413 and close.
    max_body_bytes: int = RUNTIME_MAX_BODY
    #: From a connection's accept, or a request's first byte, to the end of its head: 408 (or, if
    #: no byte of a request came, a silent close); also bounds the TLS handshake.
    header_timeout_s: float = 20.0
    #: From a request's first byte to the end of its body: 408 and close. It bounds receiving the
    #: request, never the answer (a streamed response or a WebSocket runs as long as it needs).
    request_timeout_s: float = 300.0
    #: A keep-alive connection with no request in progress is closed after this.
    idle_timeout_s: float = 60.0
    #: A client that takes none of what it is sent for this long, while more waits for it (a
    #: slow reader holding the app's answer), is cut (nginx's ``send_timeout``: 60 s).
    send_timeout_s: float = 60.0
    #: A tunnel after a ``101`` (WebSocket) in which no byte moved either way for this long is
    #: closed; WebSocket pings count as traffic.
    tunnel_idle_timeout_s: float = 3600.0
    #: Connections open at once, per listener (TLS handshakes included); beyond it a new
    #: connection is closed as soon as it is accepted, before any byte is read or written.
    max_connections: int = 1024


def _limits_schema(max_body_default: int) -> type[_Strict]:
    class _LimitsSchema(_Strict):
        max_header_bytes = fields.Integer(
            load_default=16 * 1024, validate=validate.Range(1024, 1024 * 1024)
        )
        max_body_bytes = fields.Integer(
            load_default=max_body_default, validate=validate.Range(1024, 2**40)
        )
        header_timeout_s = fields.Float(load_default=20.0, validate=validate.Range(0.1, 3600))
        request_timeout_s = fields.Float(load_default=300.0, validate=validate.Range(0.1, 86400))
        idle_timeout_s = fields.Float(load_default=60.0, validate=validate.Range(0.1, 86400))
        send_timeout_s = fields.Float(load_default=60.0, validate=validate.Range(0.1, 86400))
        tunnel_idle_timeout_s = fields.Float(
            load_default=3600.0, validate=validate.Range(0.1, 7 * 86400)
        )
        max_connections = fields.Integer(load_default=1024, validate=validate.Range(1, 1_000_000))

        @validates_schema
        def request_covers_head(self, data: dict[str, Any], **_: Any) -> None:
            head, whole = data.get("header_timeout_s"), data.get("request_timeout_s")
            if head is not None and whole is not None and whole < head:
                raise marshmallow.ValidationError(
                    "must be at least header_timeout_s (the request includes its head).",
                    "request_timeout_s",
                )

        @post_load
        def make(self, data: dict[str, Any], **_: Any) -> LimitsSettings:
            return LimitsSettings(**data)

    return _LimitsSchema


@dataclass
class RuntimeSettings:
    """The ``runtime:`` block: the enclave-side listeners."""

    port: int = 7073
    app_api_port: int = 7075
    control_port: int = 7076
    tls: bool = True
    #: Applied to the public listener, the app API and the control listener, each on its own.
    limits: LimitsSettings = field(default_factory=LimitsSettings)


class RuntimeSchema(_Strict):
    _nested_defaults = {"limits": {}}
    port = _port(load_default=7073)
    app_api_port = _port(load_default=7075)
    control_port = _port(load_default=7076)
    tls = fields.Boolean(load_default=True)
    limits = fields.Nested(_limits_schema(RUNTIME_MAX_BODY))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> RuntimeSettings:
        return RuntimeSettings(**data)


@dataclass
class StaticSecret:
    """One static secret: generated on first boot, given to the app as ``env_var``."""

    name: str
    env_var: str


class StaticSecretSchema(_Strict):
    name = fields.String(required=True, validate=validate.Regexp(SECRET_NAME_RE))
    env_var = fields.String(required=True, validate=validate.Regexp(ENV_VAR_RE))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> StaticSecret:
        return StaticSecret(**data)


@dataclass
class BackendSettings:
    """A capability block: ``{backend, options}``."""

    backend: str
    options: dict[str, Any] = field(default_factory=dict)


def _backend_schema(default: str) -> type[_Strict]:
    class _BackendSchema(_Strict):
        backend = fields.String(load_default=default, validate=validate.Length(min=1))
        options = fields.Dict(keys=fields.String(), load_default=dict)

        @post_load
        def make(self, data: dict[str, Any], **_: Any) -> BackendSettings:
            return BackendSettings(**data)

    return _BackendSchema


@dataclass
class SecretsSettings(BackendSettings):
    """The ``secrets:`` block: the parameter store and the static secrets."""

    static: list[StaticSecret] = field(default_factory=list)


class SecretsSchema(_Strict):
    backend = fields.String(load_default="local", validate=validate.Length(min=1))
    options = fields.Dict(keys=fields.String(), load_default=dict)
    static = fields.List(fields.Nested(StaticSecretSchema), load_default=list)

    @validates_schema
    def unique(self, data: dict[str, Any], **_: Any) -> None:
        names = [s.name for s in data.get("static", [])]
        env_vars = [s.env_var for s in data.get("static", [])]
        if len(set(names)) != len(names):
            raise marshmallow.ValidationError("static secret names must be unique.", "static")
        if len(set(env_vars)) != len(env_vars):
            raise marshmallow.ValidationError(
                "static secret env_var values must be unique.", "static"
            )

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> SecretsSettings:
        return SecretsSettings(**data)


@dataclass
class Ingress:
    """One ingress forwarder: host ``listen`` address to enclave ``port``."""

    listen: str
    port: int


class IngressSchema(_Strict):
    listen = fields.String(required=True, validate=_listen_address)
    port = _port(required=True)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Ingress:
        return Ingress(**data)


@dataclass
class WatchdogSettings:
    """The watchdog's poll interval, restart backoff and health threshold."""

    interval_s: float = 1.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    unhealthy_after: int = 3


class WatchdogSchema(_Strict):
    interval_s = fields.Float(load_default=1.0, validate=validate.Range(0.05, 3600))
    backoff_initial_s = fields.Float(load_default=1.0, validate=validate.Range(0.0, 3600))
    backoff_max_s = fields.Float(load_default=30.0, validate=validate.Range(0.0, 86400))
    unhealthy_after = fields.Integer(load_default=3, validate=validate.Range(1, 1000))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> WatchdogSettings:
        return WatchdogSettings(**data)


@dataclass
class SupervisorSettings:
    """The ``supervisor:`` block: management API, ingress and watchdog."""

    listen: str = "127.0.0.1:8443"
    ingress: list[Ingress] = field(default_factory=lambda: [Ingress("0.0.0.0:443", 7073)])
    watchdog: WatchdogSettings = field(default_factory=WatchdogSettings)
    #: Applied to the management API (all of them) and to each ingress listener (max_connections:
    #: an ingress forwarder never reads the bytes; the runtime's public listener behind it
    #: enforces the others).
    limits: LimitsSettings = field(
        default_factory=lambda: LimitsSettings(max_body_bytes=SUPERVISOR_MAX_BODY)
    )


class SupervisorSchema(_Strict):
    _nested_defaults = {"watchdog": {}, "limits": {}}
    listen = fields.String(load_default="127.0.0.1:8443", validate=_listen_address)
    ingress = fields.List(
        fields.Nested(IngressSchema),
        load_default=lambda: [Ingress("0.0.0.0:443", 7073)],
    )
    watchdog = fields.Nested(WatchdogSchema)
    limits = fields.Nested(_limits_schema(SUPERVISOR_MAX_BODY))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> SupervisorSettings:
        return SupervisorSettings(**data)


DEFAULT_EGRESS_ALLOW = [
    "kms.{region}.amazonaws.com:443",
    "ssm.{region}.amazonaws.com:443",
    "s3.{region}.amazonaws.com:443",
]


@dataclass
class EgressSettings:
    """The ``egress:`` block: the host's egress proxy and IMDS forwarder."""

    port: int = 8001
    imds_port: int = 8002
    allow: list[str] = field(default_factory=lambda: list(DEFAULT_EGRESS_ALLOW))


class EgressSchema(_Strict):
    port = _port(load_default=8001)
    imds_port = _port(load_default=8002)
    allow = fields.List(fields.String(), load_default=lambda: list(DEFAULT_EGRESS_ALLOW))

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> EgressSettings:
        return EgressSettings(**data)


@dataclass
class PluginSettings:
    """The ``plugins:`` block."""

    disable: list[str] = field(default_factory=list)


class PluginSettingsSchema(_Strict):
    disable = fields.List(fields.String(), load_default=list)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> PluginSettings:
        return PluginSettings(**data)


@dataclass
class Config:
    """A validated enclave.yaml, with the paths it resolves against."""

    name: str
    version: int = 1
    prefix: str = "dev"
    mode: str = "development"
    region: str = "us-east-1"
    account: str | None = None
    instance_type: str = "m6i.xlarge"
    #: EC2 hosts to run; more than 1 puts an auto-scaling group behind a network load balancer.
    instances: int = 1
    enclave: EnclaveSettings = field(default_factory=EnclaveSettings)
    app: AppSettings = field(default_factory=AppSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    secrets: SecretsSettings = field(default_factory=lambda: SecretsSettings("local"))
    storage: BackendSettings = field(
        default_factory=lambda: BackendSettings("local", {"path": ".enclave/storage"})
    )
    kms: BackendSettings = field(default_factory=lambda: BackendSettings("local"))
    attestation: BackendSettings = field(default_factory=lambda: BackendSettings("simulated"))
    launcher: BackendSettings = field(default_factory=lambda: BackendSettings("process"))
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    egress: EgressSettings = field(default_factory=EgressSettings)
    plugins: PluginSettings = field(default_factory=PluginSettings)
    #: The file this came from (None when running on defaults alone).
    path: Path | None = None
    #: The folder relative paths resolve against.
    base_dir: Path = field(default_factory=Path.cwd)
    #: Dotted paths whose values came from ``{"$env": VAR}``, mapped to VAR.
    env_refs: dict[str, str] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        """The state directory, ``.enclave/`` beside enclave.yaml."""
        return self.base_dir / STATE_DIRNAME

    @property
    def app_dir(self) -> Path:
        """The app's folder, resolved."""
        return self.resolve(self.app.dir)

    @property
    def secrets_path(self) -> str:
        """The parameter path ``/{prefix}/{name}/``."""
        return f"/{self.prefix}/{self.name}/"

    def resolve(self, path: str | Path) -> Path:
        """Resolve ``path`` relative to the folder of enclave.yaml."""
        p = Path(path)
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def backend(self, capability: str) -> BackendSettings:
        """Return the ``{backend, options}`` block of a capability."""
        settings: BackendSettings = getattr(self, capability)
        return settings


class ConfigSchema(_Strict):
    _nested_defaults = {
        "enclave": {},
        "app": {},
        "runtime": {},
        "secrets": {},
        "storage": {"backend": "local", "options": {"path": ".enclave/storage"}},
        "kms": {},
        "attestation": {"backend": "simulated"},
        "launcher": {"backend": "process"},
        "supervisor": {},
        "egress": {},
        "plugins": {},
    }
    version = fields.Integer(
        load_default=1, validate=validate.Equal(1, error="only schema version 1 is supported.")
    )
    name = fields.String(
        required=True,
        validate=validate.Regexp(NAME_RE, error="must match ^[a-z][a-z0-9-]{{0,31}}$."),
    )
    prefix = fields.String(
        load_default="dev",
        validate=validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", error="invalid prefix."),
    )
    mode = fields.String(
        load_default="development", validate=validate.OneOf(["development", "production"])
    )
    region = fields.String(
        load_default="us-east-1",
        validate=validate.Regexp(r"^[a-z]{2}(-[a-z]+)+-\d+$", error="not an AWS region name."),
    )
    account = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Regexp(r"^\d{12}$", error="must be 12 digits, quoted."),
    )
    instance_type = fields.String(load_default="m6i.xlarge")
    instances = fields.Integer(load_default=1, validate=validate.Range(1, 100))
    enclave = fields.Nested(EnclaveSchema)
    app = fields.Nested(AppSchema)
    runtime = fields.Nested(RuntimeSchema)
    secrets = fields.Nested(SecretsSchema)
    storage = fields.Nested(_backend_schema("local"))
    kms = fields.Nested(_backend_schema("local"))
    attestation = fields.Nested(_backend_schema("simulated"))
    launcher = fields.Nested(_backend_schema("process"))
    supervisor = fields.Nested(SupervisorSchema)
    egress = fields.Nested(EgressSchema)
    plugins = fields.Nested(PluginSettingsSchema)

    @validates_schema
    def production_backends(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("mode") != "production":
            return
        errors: dict[str, Any] = {}
        for capability, names in DEVELOPMENT_ONLY_BACKENDS.items():
            settings = data.get(capability)
            if settings is not None and settings.backend in names:
                errors[capability] = {
                    "backend": [
                        f"{settings.backend!r} is for development only; mode: production "
                        "needs a production backend."
                    ]
                }
        if errors:
            raise marshmallow.ValidationError(errors)

    @validates_schema
    def production_refuses_debug_mode(self, data: dict[str, Any], **_: Any) -> None:
        # A debug-mode enclave reports PCR0 all zero whatever it runs: nothing it attests to
        # can be told apart from any other image, so no production key may be used by it.
        enclave = data.get("enclave")
        if data.get("mode") == "production" and enclave is not None and enclave.debug_mode:
            raise marshmallow.ValidationError(
                {
                    "debug_mode": [
                        "must be false with mode: production: a debug-mode enclave reports PCR0 "
                        "all zero whatever image it runs, so its attestation proves nothing."
                    ]
                },
                "enclave",
            )

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Config:
        return Config(**data)


def flatten_errors(messages: Any, path: str = "") -> list[str]:
    """Turn marshmallow's nested error dict into ``dotted.path: message`` lines."""
    lines: list[str] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            sub = (
                f"{path}.{key}"
                if path and key != "_schema"
                else (path if key == "_schema" else str(key))
            )
            lines.extend(flatten_errors(value, sub))
    elif isinstance(messages, list):
        if all(isinstance(m, str) for m in messages):
            for m in messages:
                lines.append(f"{path}: {m}" if path else m)
        else:
            for m in messages:
                lines.extend(flatten_errors(m, path))
    else:
        lines.append(f"{path}: {messages}" if path else str(messages))
    return lines


def resolve_env_refs(
    value: Any, path: str = "", refs: dict[str, str] | None = None, errors: list[str] | None = None
) -> Any:
    """Replace every ``{"$env": "VAR"}`` with the variable's value, recording where it was."""
    refs = {} if refs is None else refs
    errors = [] if errors is None else errors
    if isinstance(value, dict):
        if set(value) == {"$env"}:
            var = value["$env"]
            if not isinstance(var, str) or not re.match(ENV_VAR_RE, var):
                errors.append(f"{path}: $env must name an environment variable.")
                return None
            if var not in os.environ:
                errors.append(f"{path}: environment variable {var} is not set.")
                return None
            refs[path] = var
            return os.environ[var]
        return {
            k: resolve_env_refs(v, f"{path}.{k}" if path else str(k), refs, errors)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            resolve_env_refs(v, f"{path}.{i}" if path else str(i), refs, errors)
            for i, v in enumerate(value)
        ]
    return value


def _check_size(document: Any, where: str) -> None:
    """Raise ConfigError when ``document`` nests too deep or has too many nodes (aliases count)."""
    stack: list[tuple[Any, int]] = [(document, 0)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if depth > MAX_DOCUMENT_DEPTH or nodes > MAX_DOCUMENT_NODES:
            raise ConfigError(
                f"{where}: the document nests deeper than {MAX_DOCUMENT_DEPTH} levels or has "
                f"more than {MAX_DOCUMENT_NODES} values (recursive or repeated YAML aliases?)"
            )
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def parse_config(document: Any, *, base_dir: Path, path: Path | None = None) -> Config:
    """Validate an already-parsed enclave.yaml document; raise ConfigError with every problem."""
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path or CONFIG_FILENAME}: the top level must be a mapping.")
    _check_size(document, str(path or CONFIG_FILENAME))
    refs: dict[str, str] = {}
    env_errors: list[str] = []
    resolved = resolve_env_refs(document, refs=refs, errors=env_errors)
    try:
        config: Config = ConfigSchema().load(resolved)
    except marshmallow.ValidationError as exc:
        env_paths = {line.split(":", 1)[0] for line in env_errors}
        schema_lines = [
            line for line in flatten_errors(exc.messages) if line.split(":", 1)[0] not in env_paths
        ]
        lines = env_errors + schema_lines
        raise ConfigError(_summary(path, lines), lines) from None
    if env_errors:
        raise ConfigError(_summary(path, env_errors), env_errors)
    config.path = path
    config.base_dir = base_dir
    config.env_refs = refs
    return config


def _summary(path: Path | None, lines: list[str]) -> str:
    where = str(path) if path else CONFIG_FILENAME
    return f"{where} is invalid:\n" + "\n".join(lines)


def default_name(folder: Path) -> str:
    """A valid app name derived from a folder name (used when there is no enclave.yaml)."""
    name = re.sub(r"[^a-z0-9-]+", "-", folder.resolve().name.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:32]
    return name or "app"


def load_config(path: str | Path | None = None, *, allow_missing: bool = False) -> Config:
    """Read and validate enclave.yaml.

    :param path: the file; default ``./enclave.yaml``.
    :param allow_missing: when the file does not exist, return the defaults (name from the folder)
        instead of raising.
    """
    file = Path(path) if path is not None else Path.cwd() / CONFIG_FILENAME
    # Absolute, but a symlinked enclave.yaml keeps its own folder: the state (.enclave/) and the
    # relative paths in it belong beside the link the user chose, not beside its target.
    file = Path(os.path.abspath(file))
    if file.is_symlink() and not file.exists():
        raise ConfigError(f"{file}: a symlink to {os.readlink(file)}, which does not exist")
    if not file.exists():
        if allow_missing:
            return parse_config({"name": default_name(file.parent)}, base_dir=file.parent)
        raise ConfigError(f"{file}: no such file (run 'enclave init' to create one)")
    if file.is_dir():
        raise ConfigError(f"{file}: is a directory, expected enclave.yaml")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read: {exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{file}: malformed YAML{where}: {problem}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"{file}: malformed YAML: nested too deep") from None
    return parse_config(document, base_dir=file.parent, path=file)


def effective_config(config: Config) -> dict[str, Any]:
    """The configuration with every default filled in and ``$env`` values shown as references."""
    from dataclasses import asdict

    data = asdict(config)
    for key in ("path", "base_dir", "env_refs"):
        data.pop(key, None)
    for dotted, var in config.env_refs.items():
        node: Any = data
        parts = dotted.split(".")
        try:
            for part in parts[:-1]:
                node = node[int(part)] if isinstance(node, list) else node[part]
            last = parts[-1]
            if isinstance(node, list):
                node[int(last)] = {"$env": var}
            else:
                node[last] = {"$env": var}
        except (KeyError, IndexError, ValueError):
            continue
    return data
