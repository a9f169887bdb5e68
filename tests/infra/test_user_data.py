"""The host bootstrap script: what it runs, in which order, and its size limit."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from enclave_infra.user_data import USER_DATA_LIMIT, host_script

from enclave_core.errors import ConfigError
from tests.infra.synthesis import write_production_config

EIF = "/opt/simple-enclave/app/artifacts/image.eif"


def test_the_config_travels_base64_so_no_character_breaks_the_script(tmp_path: Path) -> None:
    config = write_production_config(tmp_path)
    hostile = "name: x\n# EOF\n'$(reboot)'\n`id`\n\"quoted\" \\ back\n"
    script = host_script(config, hostile, bucket="eif-bucket", eif_path=EIF)
    found = re.search(r"^echo (\S+) \| base64 -d > \"\$APP/enclave.yaml\"$", script, re.M)
    assert found is not None
    assert base64.b64decode(found.group(1)).decode() == hostile
    assert "reboot" not in script and "`id`" not in script


def test_it_waits_for_the_artifacts_then_installs_and_starts(tmp_path: Path) -> None:
    config = write_production_config(tmp_path)
    script = host_script(config, "name: x\n", bucket="eif-bucket", eif_path=EIF)
    lines = script.splitlines()
    assert lines[:3] == ["#!/bin/bash", lines[1], "set -euo pipefail"]
    assert "export AWS_DEFAULT_REGION=eu-west-1" in lines
    assert "BUCKET=eif-bucket" in lines
    steps = [
        "dnf install -y aws-nitro-enclaves-cli python3.11 python3.11-pip",
        'until aws s3api head-object --bucket "$BUCKET" --key image.eif',
        'aws s3 cp --recursive --only-show-errors "s3://$BUCKET/wheels/" "$ROOT/wheels/"',
        '"$ROOT/venv/bin/pip" install --no-index --find-links "$ROOT/wheels" simple-enclave',
        f'aws s3 cp --only-show-errors "s3://$BUCKET/image.eif" {EIF}',
        '"$ROOT/venv/bin/enclave" host install -c "$APP/enclave.yaml"',
        "systemctl enable --now nitro-enclaves-allocator",
        "systemctl enable --now enclave-supervisor",
    ]
    positions = [script.index(step) for step in steps]
    assert positions == sorted(positions)


def test_a_config_too_large_for_user_data_is_refused(tmp_path: Path) -> None:
    config = write_production_config(tmp_path)
    big = "# " + "x" * USER_DATA_LIMIT + "\n"
    with pytest.raises(ConfigError, match="too large for EC2 user data"):
        host_script(config, big, bucket="eif-bucket", eif_path=EIF)
