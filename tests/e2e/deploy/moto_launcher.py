"""TEST-ONLY: the deploy test's moto server: moto, corrected, with Run Command and fake hosts.

``python -m tests.e2e.deploy.moto_launcher --port PORT --hosts DIR`` (from the repository's
root) applies :mod:`tests.e2e.deploy.moto_patches`, makes ``AWS-RunShellScript`` run on the fake
hosts (:mod:`tests.e2e.deploy.run_command`), boots a fake host when EC2 launches an instance
(:mod:`tests.e2e.deploy.first_boot`) and powers it off when the instance terminates, then runs
moto's own server (``moto.server.main``) on ``127.0.0.1:PORT``. The test starts and stops it by
pid (:mod:`tests.e2e.deploy.conftest`).
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from tests.e2e.deploy import moto_patches, run_command
from tests.e2e.deploy.first_boot import FirstBoot, user_data_text
from tests.e2e.deploy.hosts import Host

#: The marker of simple-enclave's user data: other instances boot to nothing.
USER_DATA_MARKER = "simple-enclave host bootstrap"


def install_hosts(hosts: Path) -> None:
    """Boot a fake host per launched instance; power it off when the instance terminates."""
    from moto.ec2.models.instances import Instance, InstanceBackend

    run_instances = InstanceBackend.run_instances

    def launch(self: InstanceBackend, *args: Any, **kwargs: Any) -> Any:
        reservation = run_instances(self, *args, **kwargs)
        for instance in reservation.instances:
            script = user_data_text(instance.user_data)
            if USER_DATA_MARKER in script:
                boot = FirstBoot(hosts, instance.id, script)
                threading.Thread(target=boot.run, name=f"boot-{instance.id}", daemon=True).start()
        return reservation

    terminate = Instance.terminate

    def power_off(self: Instance) -> Any:
        previous = terminate(self)
        if previous.name != "terminated":
            Host.of(hosts, self.id).power_off()
        return previous

    InstanceBackend.run_instances = launch  # type: ignore[method-assign]
    Instance.terminate = power_off  # type: ignore[method-assign]


def log_actions() -> None:
    """Log each API call's service, action and status, with the error of a failed one.

    werkzeug's access log shows only ``POST /``; this line says what failed (the moto server's
    log is quoted when the test fails).
    """
    from moto.core.responses import BaseResponse

    call_action = BaseResponse.call_action

    def logged(self: BaseResponse) -> Any:
        status, headers, body = call_action(self)
        try:
            action = self._get_action()
        except Exception:  # noqa: BLE001 - logging only
            action = "?"
        line = f"moto: {type(self).__name__} {action} -> {status}"
        if int(status) >= 400:
            text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
            line += f": {text[:400]}"
        print(line, flush=True)
        return status, headers, body

    BaseResponse.call_action = logged  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    """Patch moto, then serve until terminated."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hosts", type=Path, required=True)
    args = parser.parse_args(argv)
    applied = moto_patches.apply_all()
    run_command.install(args.hosts)
    install_hosts(args.hosts)
    log_actions()
    print(f"moto patches: {', '.join(applied)}; Run Command and hosts in {args.hosts}", flush=True)
    from moto.server import main as moto_main

    moto_main(["-H", "127.0.0.1", "-p", str(args.port)])


if __name__ == "__main__":
    main(sys.argv[1:])
