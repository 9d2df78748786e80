"""The Ansible role (deploy/ansible, collection retentiond.fleet) against two real machines.

Two Debian 12 machines boot with systemd as PID 1 (tests/nspawn.py), each with an SSH server on
a loopback port of its own (they share the host's network); ansible-core from the dev venv
connects to them over SSH as it would to a customer's PBX, with the collection installed by
`ansible-galaxy collection install deploy/ansible` and an inventory written here. Each machine's
PBX keeps its call records in a database of its own on the host's MariaDB, reached with a
password the role hands over as a systemd credential. pbx-a runs the daemon, pbx-b the timer.

The tests tell one story in file order: the first deployment (package, config, credentials,
key, units), a hold added to the controller's folder arriving on both and keeping what it holds
through a run, the logs verifying with the fetched keys, the hold removed and ended, a second
run of the playbook changing nothing, `--check --diff` showing a change without making it, and
the collection playbook fetching each host's log, config in force and key, verifying each here
and writing the fleet report, then naming the host whose log was tampered with.
Every check is by effect on the machines: systemd's view, the files, the database, the log.

The package is `make deb` of this tree (tests/debpackage.py, shared with test_nspawn_systemd.py;
RETENTIOND_DEB=path uses one built before). Measured on the CI machine (2 AMD EPYC cores shared
with other jobs, load 5 to 6), with the Debian tree, the package and the Debian packages cached:
2 min 15 s for the module (13 s to boot both machines and start their sshd, 43 s for the first
deployment, 12 to 26 s for each later run of the playbook); 3 min 42 s with CI set and the
package built for this tree first (85 s of setup; in a whole session conftest.py starts that build
while the tests before run). Where machines cannot boot the module skips and says why; with CI set
it fails.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from machines import tree_and_package, unavailable
from nspawn import Boot, Machine, Unavailable, archives, booted_together
from pbxdata import PbxDatabase, cdr_rows
from ruamel.yaml import YAML
from sqlalchemy import Engine, text

pytestmark = [pytest.mark.mariadb, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
CONFIG = "/etc/retentiond/retentiond.yaml"
AUDIT = "/var/lib/retentiond/audit.jsonl"
HOLDS = "/etc/retentiond/holds.d"
HOLD_ID = "LIT-FLEET-1"
# The PBXs: a port each for sshd, the mode the role enables.
HOSTS = {"pbx-a": (2201, "daemon"), "pbx-b": (2202, "timer")}
KEEP = "30d"
NOW = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
HELD_DAY = (NOW - timedelta(days=40)).date()  # the hold's window: this whole day (UTC)
YOUNG, HELD, EXPIRED = 6, 4, 5  # rows per host


@dataclass
class Pbx:
    """One machine and its PBX's database."""

    name: str
    port: int
    mode: str
    user: str
    password: str
    database: PbxDatabase
    machine: Machine | None = None

    @property
    def url(self) -> str:
        url = self.database.engine.url
        return f"mariadb+pymysql://{self.user}@127.0.0.1:{url.port or 3306}/{url.database}"

    @property
    def host(self) -> Machine:
        assert self.machine is not None
        return self.machine

    def counts(self) -> dict[str, int]:
        """Rows left: young, expired inside the hold's window, expired outside it."""
        day = datetime.combine(HELD_DAY, datetime.min.time())
        cutoff = NOW - timedelta(days=30)
        db = self.database
        return {
            "young": db.count("cdr", "calldate > :at", at=cutoff),
            "held": db.count(
                "cdr", "calldate >= :a AND calldate < :b", a=day, b=day + timedelta(1)
            ),
            "expired": db.count("cdr", "calldate < :a", a=day),
        }


@dataclass
class Fleet:
    """The controller's side: inventory, holds folder, keys folder, collection, outputs."""

    root: Path
    pbxs: list[Pbx]
    env: dict[str, str]
    outputs: list[str]

    @property
    def holds(self) -> Path:
        return self.root / "holds"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    def play(self, *args: str) -> tuple[str, dict[str, dict[str, int]]]:
        """ansible-playbook with the deploy playbook; its output and the recap per host."""
        command = [
            str(BIN / "ansible-playbook"),
            "-i",
            str(self.root / "inventory.yml"),
            "retentiond.fleet.deploy",
            *args,
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, env=self.env, timeout=600, check=False
        )
        output = result.stdout + result.stderr
        self.outputs.append(output)
        assert result.returncode == 0, output[-6000:]
        return output, recap(output)

    def collect(self, *args: str) -> subprocess.CompletedProcess[str]:
        """ansible-playbook with the collection playbook, the fleet report as JSON for the last
        60 days, and its metrics textfile; the result, whatever its exit code."""
        extra = {
            "retentiond_fleet_dir": str(self.root / "fleet"),
            "retentiond_controller_command": str(BIN / "retentiond"),
            "retentiond_report_from": str((NOW - timedelta(days=60)).date()),
            "retentiond_report_to": str(NOW.date()),
            "retentiond_report_format": "json",
            "retentiond_report_file": str(self.root / "fleet-report.json"),
            "retentiond_fleet_metrics_textfile": str(self.root / "fleet.prom"),
        }
        command = [
            str(BIN / "ansible-playbook"),
            "-i",
            str(self.root / "inventory.yml"),
            "retentiond.fleet.collect",
            "-e",
            json.dumps(extra),
            *args,
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, env=self.env, timeout=600, check=False
        )
        self.outputs.append(result.stdout + result.stderr)
        return result


def recap(output: str) -> dict[str, dict[str, int]]:
    found = {}
    for host, counts in re.findall(r"^(pbx-\w+)\s+:\s+(ok=.*)$", output, re.MULTILINE):
        found[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    assert set(found) == set(HOSTS), output[-3000:]
    return found


# -- the PBXs' databases on the host's MariaDB -----------------------------------------------------


@pytest.fixture(scope="module")
def pbxs(mariadb_server: Engine) -> Iterator[list[Pbx]]:
    made: list[Pbx] = []
    try:
        for host, (port, mode) in HOSTS.items():
            name = f"rtd_fleet_{secrets.token_hex(4)}"
            password = secrets.token_urlsafe(18)
            with mariadb_server.connect() as connection:
                connection.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
                connection.execute(
                    text(f"CREATE USER '{name}'@'127.0.0.1' IDENTIFIED BY :p"), {"p": password}
                )
                connection.execute(
                    text(f"GRANT SELECT, DELETE ON {name}.* TO '{name}'@'127.0.0.1'")
                )
            url = mariadb_server.url.set(database=name).render_as_string(hide_password=False)
            database = PbxDatabase.connect(url)
            made.append(Pbx(host, port, mode, name, password, database))
            database.create("cdr")
            young = [NOW - timedelta(days=1 + i) for i in range(YOUNG)]
            database.insert("cdr", cdr_rows(young, seed=port))
        yield made
    finally:
        for pbx in made:
            pbx.database.close()
            with mariadb_server.connect() as connection:
                connection.execute(text(f"DROP DATABASE IF EXISTS {pbx.user}"))
                connection.execute(text(f"DROP USER IF EXISTS '{pbx.user}'@'127.0.0.1'"))


# -- two machines with sshd, and the controller's files --------------------------------------------


def _ssh_server(machine: Machine, port: int, public_key: str) -> None:
    """openssh-server on 127.0.0.1:PORT (the machines share the host's network), root by key;
    python3 for Ansible's modules, python3-apt for its apt module; the PBX's group."""
    machine.sh(
        "mkdir -p /etc/ssh/sshd_config.d /root/.ssh\n"
        f"printf 'Port {port}\\nListenAddress 127.0.0.1\\nPasswordAuthentication no\\n'"
        " > /etc/ssh/sshd_config.d/test.conf\n"
        "chmod 700 /root/.ssh\n"
        "groupadd --system asterisk"
    )
    (machine.path("/root/.ssh/authorized_keys")).write_text(public_key)
    machine.run("chmod", "600", "/root/.ssh/authorized_keys")
    machine.apt_install("openssh-server", "python3", "python3-apt")
    machine.systemctl("restart", "ssh.service")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, pbxs: list[Pbx]) -> Iterator[Fleet]:
    if os.geteuid() != 0:
        unavailable("booting a container with systemd-nspawn needs root")
    if not (BIN / "ansible-playbook").exists():
        unavailable(f"ansible-core is not installed in {BIN.parent} (pip install -e '.[dev]')")
    if shutil.which("ssh") is None:
        unavailable("the ssh client is not installed (Debian package openssh-client)")
    root = tmp_path_factory.mktemp("fleet")
    tree, package = tree_and_package()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", root / "id"], check=True)
    boots = [
        Boot(
            f"{pbx.name}-{secrets.token_hex(3)}",
            root / f"{pbx.name}.console",
            binds=[
                (archives("archives" if i == 0 else f"archives-{i}"), "/var/cache/apt/archives")
            ],
        )
        for i, pbx in enumerate(pbxs)
    ]
    env = _controller(root, pbxs, package)
    try:
        with booted_together(tree, boots) as machines:
            setups = []
            for pbx, machine in zip(pbxs, machines, strict=True):
                pbx.machine = machine
                setups.append(
                    threading.Thread(
                        target=_ssh_server,
                        args=(machine, pbx.port, (root / "id.pub").read_text()),
                    )
                )
            for setup in setups:
                setup.start()
            for setup in setups:
                setup.join()
            for pbx in pbxs:  # a thread's failure shows here, as sshd not answering
                reached = subprocess.run(
                    [
                        "ssh",
                        *SSH_OPTIONS,
                        "-i",
                        root / "id",
                        "-p",
                        str(pbx.port),
                        "root@127.0.0.1",
                        "true",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                assert reached.returncode == 0, reached.stderr
            yield Fleet(root, pbxs, env, [])
    except Unavailable as error:
        unavailable(f"systemd-nspawn cannot boot the machines here: {error}")


SSH_OPTIONS = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
]


def _controller(root: Path, pbxs: list[Pbx], package: Path) -> dict[str, str]:
    """The collection installed with ansible-galaxy, the inventory, and Ansible's environment."""
    (root / "holds").mkdir()
    env = {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "ANSIBLE_COLLECTIONS_PATH": str(root / "collections"),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCAL_TEMP": str(root / "ansible-tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(root / "cp"),
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
        "PYTHONWARNINGS": "ignore",
    }
    installed = subprocess.run(
        [
            BIN / "ansible-galaxy",
            "collection",
            "install",
            REPO / "deploy/ansible",
            "-p",
            root / "collections",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    hosts = {
        pbx.name: {
            "ansible_host": "127.0.0.1",
            "ansible_port": pbx.port,
            "retentiond_mode": pbx.mode,
            "retentiond_preset_settings": {"cdr_url": pbx.url},
            "retentiond_passwords": {"cdrdb": pbx.password},
        }
        for pbx in pbxs
    }
    inventory = {
        "pbx": {
            "hosts": hosts,
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(root / "id"),
                "ansible_ssh_common_args": " ".join(SSH_OPTIONS),
                "retentiond_deb": str(package),
                "retentiond_preset": "asterisk",
                "retentiond_keep": KEEP_PERIODS,
                "retentiond_timezone": "UTC",
                "retentiond_safety": {"max_delete_fraction": 0.95},
                "retentiond_holds_dir": str(root / "holds"),
                "retentiond_keys_dir": str(root / "keys"),
            },
        }
    }
    (root / "inventory.yml").write_text(json.dumps(inventory, indent=2))  # JSON is YAML
    return env


KEEP_PERIODS = {"call-records": KEEP, "voicemail": "off", "call-recordings": KEEP}


# -- what the machines show ------------------------------------------------------------------------


def entries(pbx: Pbx) -> list[dict[str, Any]]:
    path = pbx.host.path(AUDIT)
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def unit(pbx: Pbx, name: str) -> tuple[str, str]:
    shown = pbx.host.show(name, "ActiveState", "UnitFileState")
    return shown["ActiveState"], shown["UnitFileState"]


def stat(pbx: Pbx, *paths: str) -> list[str]:
    return pbx.host.run("stat", "-c", "%a %U %G", *paths).stdout.splitlines()


def run_once(pbx: Pbx) -> None:
    """`systemctl start retentiond-once.service`: every rule once, as the timer would."""
    pbx.host.systemctl("start", "retentiond-once.service")
    result = pbx.host.show("retentiond-once.service", "Result", "ExecMainStatus")
    assert result == {"Result": "success", "ExecMainStatus": "0"}, result


def hold_file() -> str:
    review = (NOW + timedelta(days=365)).date()
    return (
        f"id: {HOLD_ID}\n"
        "reason: Litigation 3 O 17/26\n"
        "approved_by: DPO\n"
        f"review_by: {review}\n"
        "rules: [call-records]\n"
        f"from: {HELD_DAY}\n"
        f"to: {HELD_DAY}\n"
    )


# -- the story -------------------------------------------------------------------------------------


def test_the_first_run_installs_configures_and_enables_each_host(fleet: Fleet) -> None:
    _, counts = fleet.play("-v")
    assert all(
        c["failed"] == 0 and c["unreachable"] == 0 and c["changed"] > 0 for c in counts.values()
    )
    for pbx in fleet.pbxs:
        assert pbx.host.run("dpkg-query", "-f", "${Status}", "-W", "retentiond").stdout == (
            "install ok installed"
        )
        daemon, timer = unit(pbx, "retentiond.service"), unit(pbx, "retentiond-once.timer")
        if pbx.mode == "daemon":
            assert (daemon, timer) == (("active", "enabled"), ("inactive", "disabled"))
        else:
            assert (daemon, timer) == (("inactive", "disabled"), ("active", "enabled"))


def test_the_config_is_rendered_from_the_variables(fleet: Fleet) -> None:
    for pbx in fleet.pbxs:
        written = YAML(typ="safe").load(pbx.host.path(CONFIG).read_text())
        assert written == {
            "version": 1,
            "preset": "asterisk",
            "preset_settings": {"cdr_url": pbx.url},
            "keep": KEEP_PERIODS,
            "timezone": "UTC",
            "audit": {"path": AUDIT, "signing_key": "/etc/retentiond/credentials/signing-key"},
            "holds_dir": HOLDS,
            "safety": {"max_delete_fraction": 0.95},
        }
        assert stat(pbx, CONFIG, HOLDS) == ["640 root retentiond", "750 root retentiond"]
        checked = pbx.host.run("retentiond", "-c", CONFIG, "check", "--config-only")
        assert checked.stdout.startswith(f"config {CONFIG}: valid (2 rules"), checked.stdout


def test_the_password_is_a_credential_and_nowhere_else(fleet: Fleet) -> None:
    for pbx in fleet.pbxs:
        credential = "/etc/retentiond/credentials/cdrdb"
        assert pbx.host.path(credential).read_text() == pbx.password + "\n"
        assert stat(pbx, credential) == ["600 root root"]
        assert pbx.password not in pbx.host.path(CONFIG).read_text()
        if pbx.mode == "daemon":  # systemd's copy for the service; the timer's runs below
            pid = pbx.host.show("retentiond.service", "MainPID")["MainPID"]
            environ = pbx.host.path(f"/proc/{pid}/environ").read_text().split("\0")
            (folder,) = [e.split("=", 1)[1] for e in environ if e.startswith("CREDENTIALS_")]
            assert sorted(p.name for p in pbx.host.path(folder).iterdir()) == [
                "cdrdb",
                "signing-key",
            ]
            assert pbx.host.path(f"{folder}/cdrdb").read_text() == pbx.password + "\n"
        for output in fleet.outputs:
            assert pbx.password not in output
    first = fleet.outputs[0]  # the task ran and said nothing of what it wrote
    assert "One file per database password" in first and "output has been hidden" in first


def test_the_signing_key_stays_on_the_host_and_its_public_half_is_fetched(fleet: Fleet) -> None:
    assert sorted(p.name for p in fleet.keys.iterdir()) == ["pbx-a.pub", "pbx-b.pub"]
    for pbx in fleet.pbxs:
        key = "/etc/retentiond/credentials/signing-key"
        assert stat(pbx, key) == ["600 root root"]
        public = pbx.host.run(
            "/opt/retentiond/bin/python",
            "-c",
            "from cryptography.hazmat.primitives import serialization as s;"
            f"k = s.load_pem_private_key(open({key!r}, 'rb').read(), None);"
            "print(k.public_key().public_bytes(s.Encoding.PEM, "
            "s.PublicFormat.SubjectPublicKeyInfo).decode(), end='')",
        ).stdout
        assert (fleet.keys / f"{pbx.name}.pub").read_text() == public
        assert "PRIVATE" not in public
    a, b = (fleet.keys / f"{p.name}.pub" for p in fleet.pbxs)
    assert a.read_text() != b.read_text()


def test_a_hold_added_centrally_arrives_on_every_host_and_keeps_its_data(fleet: Fleet) -> None:
    for pbx in fleet.pbxs:
        day = datetime.combine(HELD_DAY, datetime.min.time())
        held = [day + timedelta(hours=8 + i) for i in range(HELD)]
        old = [day - timedelta(days=3 + i) for i in range(EXPIRED)]
        pbx.database.insert("cdr", cdr_rows([*held, *old], seed=pbx.port + 1))
        assert pbx.counts() == {"young": YOUNG, "held": HELD, "expired": EXPIRED}
    (fleet.holds / "lit-fleet-1.yaml").write_text(hold_file())
    (fleet.holds / ".lit-fleet-1.yaml.swp").write_text("an editor's file: not a hold")
    marks = {pbx.name: len(entries(pbx)) for pbx in fleet.pbxs}
    _, counts = fleet.play()
    assert all(c["changed"] >= 1 for c in counts.values()), counts
    for pbx in fleet.pbxs:
        assert sorted(p.name for p in pbx.host.path(HOLDS).iterdir()) == ["lit-fleet-1.yaml"]
        assert pbx.host.path(f"{HOLDS}/lit-fleet-1.yaml").read_text() == hold_file()
        assert stat(pbx, f"{HOLDS}/lit-fleet-1.yaml") == ["640 root retentiond"]
        run_once(pbx)
        assert pbx.counts() == {"young": YOUNG, "held": HELD, "expired": 0}
        # the daemon records a hold when it reloads; the timer's run when it starts
        log = entries(pbx)[marks[pbx.name] :]
        added = [e for e in log if e["type"] == "hold_added"]
        assert [e["hold"] for e in added] == [HOLD_ID], log
        finished = [e for e in log if e["type"] == "run_finished" and e["rule"] == "call-records"]
        assert [e["status"] for e in finished] == ["done"], finished


def test_each_log_verifies_with_its_hosts_fetched_key_only(fleet: Fleet) -> None:
    for pbx in fleet.pbxs:
        copy = fleet.root / f"{pbx.name}-audit.jsonl"
        copy.write_bytes(pbx.host.path(AUDIT).read_bytes())
        assert any(e["type"] == "checkpoint" for e in entries(pbx))
        for other in fleet.pbxs:
            verified = subprocess.run(
                [
                    BIN / "retentiond",
                    "audit",
                    "verify",
                    "--public-key",
                    fleet.keys / f"{other.name}.pub",
                    copy,
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert (verified.returncode == 0) == (other is pbx), verified.stdout


def test_a_hold_removed_centrally_is_removed_and_ended_on_every_host(fleet: Fleet) -> None:
    (fleet.holds / "lit-fleet-1.yaml").unlink()
    marks = {pbx.name: len(entries(pbx)) for pbx in fleet.pbxs}
    output, counts = fleet.play("-v")
    assert all(c["changed"] >= 1 for c in counts.values()), counts
    for pbx in fleet.pbxs:
        assert list(pbx.host.path(HOLDS).iterdir()) == []
        log = entries(pbx)[marks[pbx.name] :]
        ended = [e for e in log if e["type"] == "hold_ended"]
        assert [e["hold"] for e in ended] == [HOLD_ID], (log, output[-8000:])
        assert "--end-hold" in str(ended[0].get("ended")), ended
        assert not [e for e in log if e["type"] == "run_refused"], log
        assert pbx.counts() == {"young": YOUNG, "held": 0, "expired": 0}  # released, deleted
        assert not pbx.host.path(
            "/run/systemd/system/retentiond-once.service.d/end-holds.conf"
        ).exists()
    daemon = next(p for p in fleet.pbxs if p.mode == "daemon")
    assert unit(daemon, "retentiond.service") == ("active", "enabled")


def test_a_second_run_changes_nothing(fleet: Fleet) -> None:
    _, counts = fleet.play()
    assert {host: c["changed"] for host, c in counts.items()} == dict.fromkeys(HOSTS, 0), counts


def test_check_mode_shows_a_change_and_makes_none(fleet: Fleet) -> None:
    before = {pbx.name: pbx.host.path(CONFIG).read_text() for pbx in fleet.pbxs}
    changed = json.dumps({"retentiond_keep": KEEP_PERIODS | {"call-records": "45d"}})
    output, counts = fleet.play("--check", "--diff", "-e", changed)
    assert all(c["changed"] >= 1 and c["failed"] == 0 for c in counts.values()), counts
    assert "-  call-records: 30d" in output and "+  call-records: 45d" in output, output[-4000:]
    for pbx in fleet.pbxs:
        assert pbx.host.path(CONFIG).read_text() == before[pbx.name]
    daemon = next(p for p in fleet.pbxs if p.mode == "daemon")
    assert unit(daemon, "retentiond.service") == ("active", "enabled")


def test_the_collection_verifies_each_log_here_and_writes_one_fleet_report(fleet: Fleet) -> None:
    result = fleet.collect()
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    collected = fleet.root / "fleet"
    for pbx in fleet.pbxs:
        folder = collected / pbx.name
        assert (folder / "audit.jsonl").read_bytes() == pbx.host.path(AUDIT).read_bytes()
        assert (folder / "retentiond.pub").read_text() == (
            fleet.keys / f"{pbx.name}.pub"
        ).read_text()
        in_force = YAML(typ="safe").load((folder / "retentiond.yaml").read_text())
        assert "preset" not in in_force  # expanded on the host: readable here without its PBX
        assert [r["name"] for r in in_force["rules"]] == ["call-records", "call-recordings"]
        assert pbx.password not in (folder / "retentiond.yaml").read_text()
    report = json.loads((fleet.root / "fleet-report.json").read_text())
    systems = {s["name"]: s for s in report["systems"]}
    assert set(systems) == set(HOSTS)
    assert all(s["log_verified"] and s["problem"] is None for s in systems.values())
    assert all(s["report"]["compliance"] for s in systems.values())
    metrics = (fleet.root / "fleet.prom").read_text()
    for name in HOSTS:
        assert f'retentiond_fleet_log_verified{{system="{name}"}} 1.0' in metrics


def test_a_tampered_log_on_one_host_is_named_and_fails_the_collection(fleet: Fleet) -> None:
    tampered = next(p for p in fleet.pbxs if p.mode == "timer")  # no daemon writes its log
    log = tampered.host.path(AUDIT)
    lines = log.read_text().splitlines(keepends=True)
    done = max(i for i, line in enumerate(lines) if '"type":"run_finished"' in line)
    lines[done] = re.sub(
        r'"deleted":(\d+)', lambda m: f'"deleted":{int(m[1]) + 1}', lines[done], count=1
    )
    log.write_text("".join(lines))
    result = fleet.collect()
    output = result.stdout + result.stderr
    assert result.returncode != 0
    sound = next(p for p in fleet.pbxs if p is not tampered)
    # the verification on the controller fails the tampered host only, by name
    verify = output.split("TASK [Verify the log here against the host's public key]", 1)[1]
    verify = verify.split("TASK [", 1)[0]
    assert f"fatal: [{tampered.name} -> localhost]" in verify, output[-6000:]
    assert f"ok: [{sound.name} -> localhost]" in verify, verify
    # and the play ends failed, with the fleet report's reason for it
    assert f"{tampered.name}: its deletion log does not verify" in output
    report = json.loads((fleet.root / "fleet-report.json").read_text())
    verified = {s["name"]: s["log_verified"] for s in report["systems"]}
    assert verified == {sound.name: True, tampered.name: False}
    metrics = (fleet.root / "fleet.prom").read_text()
    assert f'retentiond_fleet_log_verified{{system="{tampered.name}"}} 0.0' in metrics
