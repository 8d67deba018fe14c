"""scripts/install.sh and the units in systemd/: installed for real (into a staged root, with a
user of its own created on this machine), verified with systemd-analyze, run again without
changing what an operator wrote, and each service's ExecStart run as the unprivileged user it
names (with setpriv, as systemd would: the sandbox itself needs a running systemd): the milter signs with a key from the keys folder, the policy daemon answers on its unix
socket and keeps its counters in the state folder."""

from __future__ import annotations

import base64
import grp
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from ports import free_port, wait_listening
from sendguard_testing.milter_client import MilterClient, final_message
from sendguard_testing.policy_client import PolicyClient, postfix_message

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install.sh"
UNITS = sorted((ROOT / "systemd").glob("*.service"))


@dataclass
class Staged:
    root: Path
    user: str

    def unit(self, name: str) -> Path:
        return self.root / "etc" / "systemd" / "system" / name

    def exec_start(self, name: str) -> list[str]:
        line = next(l for l in self.unit(name).read_text().splitlines() if l.startswith("ExecStart="))
        return shlex.split(line.removeprefix("ExecStart="))


def run_install(staged: Staged) -> subprocess.CompletedProcess:
    out = subprocess.run(["bash", str(INSTALL), "--root", str(staged.root), "--user", staged.user],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.fixture(scope="module")
def staged():
    # Under /var/tmp and opened up: pytest's own temp folders are root's alone (0700), and the
    # service user must reach its venv and its files.
    root = Path(tempfile.mkdtemp(prefix="sendguard-install.", dir="/var/tmp"))
    root.chmod(0o755)
    # A user of this run's own, removed afterwards: nothing stays behind on a shared machine.
    s = Staged(root, f"sgtest{os.getpid() % 100000}")
    try:
        run_install(s)
        yield s
    finally:
        subprocess.run(["userdel", s.user], capture_output=True)
        subprocess.run(["groupdel", s.user], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_the_shipped_units_are_installed_with_only_paths_and_user_changed(staged):
    for unit in UNITS:
        installed = staged.unit(unit.name).read_text()
        back = installed.replace(str(staged.root), "").replace(f"User={staged.user}\n", "User=sendguard\n").replace(
            f"Group={staged.user}\n", "Group=sendguard\n")  # fmt: skip
        assert back == unit.read_text(), unit.name
    assert {u.name for u in UNITS} == {
        "sendguard-milter.service", "sendguard-policyd.service", "sendguard-release.service", "sendguard-watch.service",
        "sendguard-dmarc.service",
    }  # fmt: skip


def test_systemd_analyze_verifies_every_installed_unit(staged):
    for unit in UNITS:
        out = subprocess.run(["systemd-analyze", "verify", str(staged.unit(unit.name))], capture_output=True, text=True)
        # verify exits 0 on warnings such as an unknown key: any output is a failure here.
        assert out.returncode == 0 and out.stdout + out.stderr == "", f"{unit.name}: {out.stdout}{out.stderr}"


def test_the_units_sandbox_each_service(staged):
    for unit in UNITS:
        keys = [l.split("=", 1) for l in unit.read_text().splitlines() if "=" in l and not l.startswith("#")]
        have = {k: v for k, v in keys}
        assert have["NoNewPrivileges"] == "yes" and have["ProtectSystem"] == "strict", unit.name
        assert have["PrivateTmp"] == "yes" and have["Restart"] == "on-failure", unit.name
        assert have["RuntimeDirectory"] == "sendguard" and "/var/lib/sendguard" in have["ReadWritePaths"].split(), unit.name
        # Only the releaser runs as root: Postfix's postsuper serves no one else.
        assert have["User"] == ("root" if unit.name == "sendguard-release.service" else "sendguard"), unit.name
        # SIGHUP reloads only the milter; a reload elsewhere would look like it worked and change nothing.
        assert ("ExecReload" in have) == (unit.name == "sendguard-milter.service"), unit.name
    assert "ExecReload=/bin/kill -HUP $MAINPID" in (ROOT / "systemd" / "sendguard-milter.service").read_text()


def test_the_user_folders_and_config_are_set_up(staged):
    user = pwd.getpwnam(staged.user)
    assert user.pw_uid < 1000 and user.pw_shell == "/usr/sbin/nologin"
    gid = grp.getgrnam(staged.user).gr_gid

    def owner_mode(path: Path) -> tuple[int, int, int]:
        st = os.stat(path)
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    assert owner_mode(staged.root / "etc/sendguard/keys") == (0, gid, 0o750)
    assert owner_mode(staged.root / "var/lib/sendguard") == (user.pw_uid, gid, 0o750)
    config = staged.root / "etc/sendguard/sendguard.toml"
    assert owner_mode(config) == (0, gid, 0o640)
    assert config.read_bytes() == (ROOT / "examples" / "sendguard.toml").read_bytes()
    assert os.access(staged.root / "opt/sendguard/venv/bin/sendguard", os.X_OK)


def _service_config(staged: Staged, ports: dict[str, int], socket: Path, key: Path) -> str:
    return f"""
[general]
state_dir = "{staged.root}/var/lib/sendguard"

[policyd]
listen = "127.0.0.1:{ports['policyd']}"
metrics_listen = "127.0.0.1:{ports['policyd_metrics']}"
socket = "{socket}"
socket_mode = "0660"
socket_group = "{staged.user}"

[milter]
listen = "inet:127.0.0.1:{ports['milter']}"
metrics_listen = "127.0.0.1:{ports['milter_metrics']}"

[signing.keys.send]
domain = "send.example.net"
selector = "send"
key_file = "{key}"

[signing.table]
"send.example.net" = "send"
"""


def _as_user(staged: Staged, argv: list[str], log: Path) -> subprocess.Popen:
    # setpriv execs the command itself, as systemd does with User=/Group=: the service is the process
    # that gets SIGTERM, and its exit status is the one seen (runuser would stay in between).
    user = pwd.getpwnam(staged.user)
    return subprocess.Popen(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--", *argv],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def _stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def test_a_second_run_keeps_the_config_and_each_exec_start_serves_as_the_user(staged, tmp_path):
    gid = grp.getgrnam(staged.user).gr_gid
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = staged.root / "etc/sendguard/keys/send.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))  # fmt: skip
    os.chown(key_file, 0, gid)
    key_file.chmod(0o640)  # as install.sh's closing lines say
    # What systemd's RuntimeDirectory= would make for the unit.
    run_dir = staged.root / "run/sendguard"
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chown(run_dir, pwd.getpwnam(staged.user).pw_uid, gid)
    socket = run_dir / "policy"
    ports = {name: free_port() for name in ("policyd", "policyd_metrics", "milter", "milter_metrics")}
    config = staged.root / "etc/sendguard/sendguard.toml"
    config.write_text(_service_config(staged, ports, socket, key_file))
    written = config.read_bytes()
    (staged.root / "var/lib/sendguard").chmod(0o777)  # drifted: the second run puts it right

    out = run_install(staged)
    assert "sendguard.toml exists: left as it is" in out.stderr
    assert config.read_bytes() == written
    assert stat.S_IMODE(os.stat(staged.root / "var/lib/sendguard").st_mode) == 0o750

    policyd_argv = staged.exec_start("sendguard-policyd.service")
    assert policyd_argv[1:] == ["policyd", "--config", str(config)]
    policyd = _as_user(staged, policyd_argv, tmp_path / "policyd.log")
    try:
        wait_listening(ports["policyd"], policyd, (tmp_path / "policyd.log").read_text)
        st = os.stat(socket)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid
        with PolicyClient(str(socket)) as client:
            answers = [client.ask(r) for r in postfix_message("i1", "4F00D1", ["someone@aol.com"])]
        assert answers[0].startswith("HOLD ")
        database = staged.root / "var/lib/sendguard/policyd.sqlite"
        assert os.stat(database).st_uid == pwd.getpwnam(staged.user).pw_uid
    finally:
        assert _stop(policyd) == 0, (tmp_path / "policyd.log").read_text()

    milter_argv = staged.exec_start("sendguard-milter.service")
    assert milter_argv[1:] == ["milter", "--config", str(config)]
    milter = _as_user(staged, milter_argv, tmp_path / "milter.log")
    try:
        wait_listening(ports["milter"], milter, (tmp_path / "milter.log").read_text)
        client = MilterClient(ports["milter"])
        client.connect("127.0.0.1", 40020)
        message = (b"From: Trucking <noreply@send.example.net>\r\nTo: carrier@example.org\r\nSubject: Loads\r\n"
                   b"Date: Sun, 22 Nov 2026 08:00:00 +0000\r\nMessage-ID: <i1@send.example.net>\r\n\r\nHello.\r\n")  # fmt: skip
        r = client.message(message, "bounce@send.example.net")
        client.close()
        der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
        assert dkim.verify(final_message(r), dnsfunc=lambda name, timeout=5: record)
    finally:
        assert _stop(milter) == 0, (tmp_path / "milter.log").read_text()


def test_install_refuses_to_run_as_another_user(staged):
    script = staged.root / "install-copy.sh"  # where the user can read it
    shutil.copy(INSTALL, script)
    script.chmod(0o644)
    out = subprocess.run(["runuser", "-u", staged.user, "--", "bash", str(script), "--root", str(staged.root)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 1 and "run as root" in out.stderr


def test_a_socket_group_the_user_is_not_in_stops_start_up_naming_the_key(staged, tmp_path):
    # Only root, or a member of the group, may give a file to a group: the service says which key to fix.
    gid = grp.getgrnam(staged.user).gr_gid
    run_dir = staged.root / "run/sendguard-eperm"
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chown(run_dir, pwd.getpwnam(staged.user).pw_uid, gid)
    config = staged.root / "etc/sendguard/eperm.toml"
    config.write_text(f"""
[general]
state_dir = "{staged.root}/var/lib/sendguard"
[policyd]
listen = "127.0.0.1:{free_port()}"
metrics_listen = "127.0.0.1:{free_port()}"
socket = "{run_dir}/policy"
socket_group = "mail"
[milter]
listen = "unix:{run_dir}/milter"
metrics_listen = "127.0.0.1:{free_port()}"
socket_group = "mail"
""")
    os.chown(config, 0, gid)
    config.chmod(0o640)
    for unit, key, path in (("sendguard-policyd.service", "policyd.socket_group", "policy"),
                            ("sendguard-milter.service", "milter.socket_group", "milter")):  # fmt: skip
        argv = staged.exec_start(unit)
        argv[argv.index("--config") + 1] = str(config)
        log = tmp_path / f"{path}.log"
        proc = _as_user(staged, argv, log)
        try:
            code = proc.wait(timeout=30)
        finally:
            _stop(proc)
        text = log.read_text()
        assert code == 78, text
        assert f"{config}: {key}: cannot set the access of {run_dir}/{path}: Operation not permitted" in text
        assert not (run_dir / path).exists(), "no socket left behind that Postfix could not use"
