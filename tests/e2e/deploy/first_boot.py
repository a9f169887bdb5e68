"""TEST-ONLY: the first boot of a fake EC2 host, standing in for the stack's user data.

Runs in the patched moto server when EC2 launches an instance whose user data is simple-enclave's
(:func:`enclave_infra.user_data.host_script`). It reads what it needs from that user data as
the stack delivered it (the bucket, the app folder, enclave.yaml carried in base64, the EIF's
path: a user data that no longer carries them fails here), then does what the script does, under
the host's folder (:class:`~tests.e2e.deploy.hosts.Host`):

1. the instance role's credentials: the instance profile's role, assumed through STS (what IMDS
   gives a real host);
2. wait for ``image.eif`` and ``wheels/simple_enclave-*`` in the EIF bucket (``enclave deploy``
   uploads them after the stack is up);
3. fetch the wheelhouse and check that simple-enclave installs from it alone (``pip install
   --dry-run --no-index --find-links``: the user data installs from it with no route to PyPI);
4. write enclave.yaml and fetch the EIF;
5. run the real ``enclave host install --prefix-dir <host root>`` (the unit, its environment
   file, the allocator config);
6. lay out the enclave image: the build context's app and enclave.yaml, in ``mode:
   development`` with the ``simulated`` NSM reporting the EIF's PCR0 (no NSM here), chaining to
   the shared dev CA (the stand-in for AWS's Nitro PKI);
7. ``systemctl enable --now`` the allocator and the supervisor (the fake systemctl starts the
   real supervisor).

It logs to the host's ``var/log/simple-enclave-init.log``; a failure is also written to
``first-boot.failed``, which the test watches so it fails at once instead of at step 5's timeout.
What it cannot be: the real script on Amazon Linux (dnf, the virtualenv, root): see the test
module's docstring.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
import yaml

from tests.doubles.host_tools import FAKES
from tests.e2e.deploy.hosts import HOST_TOOLS, Host, Settings

#: How often the host looks for the EIF and the wheels (the user data: every 15 s).
POLL_S = 1.0
#: How long CloudFormation may take to attach the instance profile after launching.
PROFILE_WAIT_S = 60.0
STEP_TIMEOUT_S = 300.0
UNIT = "enclave-supervisor"


@dataclass(frozen=True)
class UserData:
    """What the first boot takes from the stack's user data script."""

    region: str
    bucket: str
    root: PurePosixPath
    app_dir: PurePosixPath
    eif_key: str
    wheels_prefix: str
    eif_path: PurePosixPath
    config_text: str


def _one(pattern: str, text: str, what: str) -> re.Match[str]:
    found = re.search(pattern, text, re.MULTILINE)
    if found is None:
        raise ValueError(f"the user data has no {what} (pattern {pattern!r})")
    return found


def _word(value: str) -> str:
    """A shell word as the script's shell reads it (quotes removed)."""
    words = shlex.split(value)
    if len(words) != 1:
        raise ValueError(f"user data: {value!r} is not one shell word")
    return words[0]


def parse_user_data(text: str) -> UserData:
    """Read the bucket, the paths, the S3 keys and enclave.yaml out of the host script.

    :raises ValueError: naming the line that is missing.
    """
    _one(r'host install -c "\$APP/enclave\.yaml"$', text, "`enclave host install`")
    _one(rf"^systemctl enable --now {UNIT}$", text, f"`systemctl enable --now {UNIT}`")
    config_b64 = _one(r'^echo (\S+) \| base64 -d > "\$APP/enclave\.yaml"$', text, "enclave.yaml")
    eif = _one(r'^aws s3 cp --only-show-errors "s3://\$BUCKET/([^"]+)" (\S+)$', text, "EIF copy")
    wheels = _one(
        r'^aws s3 cp --recursive --only-show-errors "s3://\$BUCKET/([^"]+)" "\$ROOT/wheels/"$',
        text,
        "wheelhouse copy",
    )
    return UserData(
        region=_word(_one(r"^export AWS_DEFAULT_REGION=(.+)$", text, "region").group(1)),
        bucket=_word(_one(r"^BUCKET=(.+)$", text, "bucket").group(1)),
        root=PurePosixPath(_word(_one(r"^ROOT=(.+)$", text, "root folder").group(1))),
        app_dir=PurePosixPath(_word(_one(r"^APP=(.+)$", text, "app folder").group(1))),
        eif_key=eif.group(1),
        wheels_prefix=wheels.group(1),
        eif_path=PurePosixPath(_word(eif.group(2))),
        config_text=base64.b64decode(config_b64.group(1)).decode("utf-8"),
    )


def user_data_text(raw: Any) -> str:
    """The script from moto's ``Instance.user_data`` (base64: a string, or moto's wrapper)."""
    if raw is None:
        return ""
    if hasattr(raw, "decode") and not isinstance(raw, bytes | str):
        return str(raw.decode())
    encoded = raw if isinstance(raw, str) else raw.decode("ascii")
    return base64.b64decode(encoded).decode("utf-8", errors="replace")


def eif_pcr0(eif: Path) -> str:
    """The PCR0 the fake nitro-cli's ``build-enclave`` stored in a fake EIF."""
    spec = importlib.util.spec_from_file_location("fake_eif", FAKES / "fake_eif.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    details = module.read_fake_eif(eif)
    if details is None:
        raise ValueError(f"{eif} is not an EIF the fake nitro-cli built")
    return str(details["Measurements"]["PCR0"]).lower()


class FirstBoot:
    """The first boot of one host (see the module docstring); :meth:`run` in a thread."""

    def __init__(self, hosts: Path, instance_id: str, user_data: str) -> None:
        self.host = Host.of(hosts, instance_id)
        self.hosts = hosts
        self.user_data = user_data
        settings = Settings.read(hosts)
        assert settings is not None
        self.settings = settings
        self.endpoint = settings.env["AWS_ENDPOINT_URL"]

    def log(self, line: str) -> None:
        """One line in the host's init log."""
        self.host.init_log.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self.host.init_log.open("a", encoding="utf-8") as out:
            out.write(f"{stamp} {line}\n")

    def run(self) -> None:
        """Boot; on failure log it and write the failure marker."""
        try:
            self._boot()
        except Exception as exc:  # a thread: the test must hear of it, not a traceback on stderr
            self.log(traceback.format_exc())
            self.host.failed_marker.write_text(f"{type(exc).__name__}: {exc}\n", encoding="utf-8")

    def _client(self, service: str, credentials: dict[str, str] | None = None) -> Any:
        creds = credentials or {
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        return boto3.session.Session(**creds, region_name="us-east-1").client(
            service, endpoint_url=self.endpoint
        )

    def _boot(self) -> None:
        self.host.root.mkdir(parents=True, exist_ok=True)
        plan = parse_user_data(self.user_data)
        self.log(f"user data: bucket {plan.bucket}, app {plan.app_dir}, EIF {plan.eif_path}")
        self._credentials()
        s3 = self._client("s3", self._role_session())
        self._wait_for_artifacts(s3, plan)
        self._wheelhouse(s3, plan)
        config_path = self.host.path(plan.app_dir) / "enclave.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(plan.config_text, encoding="utf-8")
        config_path.chmod(0o640)
        eif = self.host.path(plan.eif_path)
        eif.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(plan.bucket, plan.eif_key, str(eif))
        self._run(
            [self.settings.python, "-m", "enclave_core.cli.main", "host", "install"]
            + ["-c", str(config_path), "--prefix-dir", str(self.host.root)]
        )
        self._image(eif)
        systemctl = str(HOST_TOOLS / "systemctl")
        self._run([systemctl, "daemon-reload"])
        self._run([systemctl, "enable", "--now", "nitro-enclaves-allocator"])
        self._run([systemctl, "enable", "--now", UNIT])
        self.log("simple-enclave host ready")

    def _gone(self) -> bool:
        return self.host.powered_off.exists()

    def _credentials(self) -> None:
        """The instance profile's role, assumed: ``instance.json`` (IMDS's credentials)."""
        ec2, iam, sts = self._client("ec2"), self._client("iam"), self._client("sts")
        deadline = time.monotonic() + PROFILE_WAIT_S
        while True:
            found = ec2.describe_iam_instance_profile_associations(
                Filters=[{"Name": "instance-id", "Values": [self.host.instance_id]}]
            )["IamInstanceProfileAssociations"]
            if found:
                break
            if time.monotonic() > deadline or self._gone():
                raise RuntimeError("the instance has no instance profile: no role, no credentials")
            time.sleep(POLL_S)
        profile = found[0]["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1]
        [role] = iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"]["Roles"]
        credentials = sts.assume_role(RoleArn=role["Arn"], RoleSessionName=self.host.instance_id)
        doc = {
            "instance_id": self.host.instance_id,
            "instance_profile": profile,
            "role_arn": role["Arn"],
            "credentials": {
                k: credentials["Credentials"][k]
                for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")
            },
        }
        (self.host.root / "instance.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
        self.log(f"instance role {role['Arn']} (instance profile {profile})")

    def _role_session(self) -> dict[str, str]:
        creds = self.host.credentials()
        return {
            "aws_access_key_id": creds["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": creds["AWS_SECRET_ACCESS_KEY"],
            "aws_session_token": creds["AWS_SESSION_TOKEN"],
        }

    def _wait_for_artifacts(self, s3: Any, plan: UserData) -> None:
        """Until the EIF and a simple-enclave wheel are in the bucket, as the user data waits."""
        deadline = time.monotonic() + self.settings.artifact_wait_s
        wheel = f"{plan.wheels_prefix}simple_enclave-"
        while True:
            listed = s3.list_objects_v2(Bucket=plan.bucket).get("Contents") or []
            keys = {item["Key"] for item in listed}
            if plan.eif_key in keys and any(key.startswith(wheel) for key in keys):
                self.log(f"found s3://{plan.bucket}/{plan.eif_key} and {wheel}*")
                return
            if self._gone():
                raise RuntimeError("the instance terminated during its first boot")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"gave up waiting for s3://{plan.bucket}/{plan.eif_key} and {wheel}*"
                )
            time.sleep(POLL_S)

    def _wheelhouse(self, s3: Any, plan: UserData) -> None:
        """Fetch ``wheels/`` and check simple-enclave resolves from it alone (no PyPI)."""
        wheels = self.host.path(plan.root) / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        fetched = self._wheel_keys(s3, plan)
        for key in fetched:
            s3.download_file(plan.bucket, key, str(wheels / key[len(plan.wheels_prefix) :]))
        report = self.host.root / "var" / "log" / "wheelhouse-report.json"
        try:
            self._run(
                [self.settings.python, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
                + ["--disable-pip-version-check", "--no-index", "--find-links", str(wheels)]
                + ["--report", str(report), "simple-enclave"]
            )
        except RuntimeError as exc:
            late = sorted(set(self._wheel_keys(s3, plan)) - set(fetched))
            if late:
                # What the user data does too: it waits for image.eif and simple_enclave-*,
                # not for the whole wheelhouse (a product race, named so it is not a mystery).
                raise RuntimeError(
                    f"{exc}: the first boot copied {plan.wheels_prefix} while enclave deploy "
                    f"was still uploading it ({', '.join(late)} came later)"
                ) from None
            raise
        installed = json.loads(report.read_text(encoding="utf-8")).get("install") or []
        names = sorted(str(item["metadata"]["name"]).lower() for item in installed)
        self.log(f"the wheelhouse installs {len(names)} distributions: {', '.join(names)}")

    @staticmethod
    def _wheel_keys(s3: Any, plan: UserData) -> list[str]:
        listed = s3.list_objects_v2(Bucket=plan.bucket, Prefix=plan.wheels_prefix)
        return sorted(item["Key"] for item in listed.get("Contents") or [])

    def _image(self, eif: Path) -> None:
        """The enclave image's files, its enclave.yaml simulating the NSM for the EIF's PCR0."""
        context = Path(self.settings.image_context)
        image = self.host.image
        if image.exists():
            shutil.rmtree(image)
        shutil.copytree(context / "app", image)
        document = yaml.safe_load((context / "enclave.yaml").read_text(encoding="utf-8"))
        # No NSM on this machine: the simulated one, which only development mode accepts,
        # reporting the PCR0 of the EIF the host fetched (the key decrypts for that one alone).
        document["mode"] = "development"
        document["attestation"] = {"backend": "simulated", "options": {"pcr0": eif_pcr0(eif)}}
        (image / "enclave.yaml").write_text(yaml.safe_dump(document, sort_keys=False), "utf-8")
        state = image / ".enclave"
        shutil.copytree(Path(self.settings.pki) / "dev-ca", state / "dev-ca")
        shutil.copy2(Path(self.settings.pki) / "dev-root.pem", state / "dev-root.pem")
        state.chmod(0o700)
        self.log(f"enclave image laid out in {image}")

    def _run(self, argv: list[str]) -> None:
        """Run one step on the host; its output goes to the init log; failure raises."""
        self.log("+ " + shlex.join(argv))
        done = subprocess.run(  # noqa: S603 - argument list, test harness
            argv,
            env=self.host.env(self.settings),
            cwd=self.host.root,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
            check=False,
        )
        for line in (done.stdout + done.stderr).splitlines():
            self.log(f"  {line}")
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv[:4])}... exited {done.returncode}")
