"""gunicorn's settings for the app in the enclave.

Used as ``python3 -m gunicorn -c gunicorn.conf.py app:app`` (``app.command`` in enclave.yaml):
the runtime starts that command as its child, in this folder, and proxies its clients to
``127.0.0.1:$PORT``. gunicorn's own lines (stderr) and its access log (stdout, one JSON object per
request) reach the runtime's log like any app output: `enclave logs` shows them, and under
`enclave dev` they are in ``.enclave/logs/runtime.log``.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

from gunicorn.glogging import Logger

# Loopback only: clients reach the app through the runtime's TLS listener, never directly.
bind = f"127.0.0.1:{os.environ.get('PORT', '7074')}"

# One worker process per enclave CPU. The runtime sets ENCLAVE_CPU_COUNT from enclave.cpu_count;
# under `enclave dev`, os.cpu_count() would count the whole machine's.
workers = int(os.environ.get("ENCLAVE_CPU_COUNT") or os.cpu_count() or 1)
# Threads, so that requests waiting for the app API (storage, secrets) do not hold a whole
# worker; gthread also keeps the runtime's connections to the app alive between requests.
worker_class = "gthread"
threads = 4
keepalive = 5

# On SIGTERM the runtime gives the app 10 s (enclave_core/runtime/child.py, stop_grace_s) and the
# supervisor gives the whole enclave 6 s before SIGKILL: requests in flight get 5 s to finish.
graceful_timeout = 5

# No control socket (recent gunicorn opens one under $HOME by default): nothing in the enclave
# manages gunicorn but the runtime, with signals.
control_socket_disable = True


class JsonAccessLogger(Logger):
    """gunicorn's logger, with one JSON object per request as the access log line."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """Log a finished request: no query string, no headers (they may carry credentials)."""
        if not self.cfg.accesslog:
            return
        atoms = self.atoms(resp, req, environ, request_time)
        forwarded = environ.get("HTTP_X_FORWARDED_FOR", "")
        record = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "type": "access",
            "method": atoms["m"],
            "path": atoms["U"],
            "status": int(str(atoms["s"]).split()[0]),
            "bytes": atoms["B"] or 0,
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            # The runtime appends the client's address it saw: the last entry is the one to trust.
            "client": forwarded.rsplit(",", 1)[-1].strip() or atoms["h"],
            "user_agent": atoms["a"],
            "pid": os.getpid(),
        }
        self.access_log.info("%s", json.dumps(record))


logger_class = JsonAccessLogger
accesslog = "-"  # stdout
errorlog = "-"  # stderr
loglevel = "info"
