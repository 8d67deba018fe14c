"""examples/sendguard.toml is the brief's deployment and must pass check-config as shipped."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sendguard.cli.settings import load
from sendguard.streams import match_stream
from sendguard_testing.command import sendguard_command

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sendguard.toml"


def installed_example(tmp_path: Path) -> Path:
    """The example with its absolute paths moved under tmp_path, keys and stamps created."""
    text = EXAMPLE.read_text()
    text = text.replace("/var/lib/sendguard", str(tmp_path / "state")).replace("/etc/sendguard", str(tmp_path / "etc"))
    (tmp_path / "state").mkdir()
    (tmp_path / "etc" / "keys").mkdir(parents=True)
    for stream in ("trucking", "healthcare"):
        (tmp_path / "state" / f"{stream}.start").write_text(f"{int(time.time()) - 5 * 86400}\n")
    for name in ("send.example.net.send.pem", "example.net.mail.pem"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path = tmp_path / "etc" / "keys" / name
        path.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        os.chmod(path, 0o600)
    cfg = tmp_path / "sendguard.toml"
    cfg.write_text(text)
    return cfg


def test_example_models_the_brief(tmp_path):
    config = load(installed_example(tmp_path))
    trucking, healthcare = config.streams
    assert (trucking.name, trucking.daily_cap, trucking.ramp_cap(5), trucking.ramp_cap(9)) == ("trucking", 4000, 250, 300)
    assert (healthcare.name, healthcare.daily_cap, healthcare.ramp_cap(4), healthcare.ramp_cap(10)) == (
        "healthcare",
        10000,
        300,
        1000,
    )
    assert match_stream(config.streams, {"server_port": "25", "client_address": "172.18.0.5"}) is trucking
    assert match_stream(config.streams, {"server_port": "2526", "client_address": "172.18.0.25"}) is healthcare
    assert match_stream(config.streams, {"server_port": "25", "client_address": "127.0.0.1"}) is None


def test_example_passes_check_config(tmp_path):
    cfg = installed_example(tmp_path)
    result = subprocess.run([sendguard_command(), "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "[streams.healthcare]" in result.stdout


def test_every_problem_of_the_example_is_reported_in_one_run(tmp_path):
    """The example once needed three runs: one stamp file, the other, then the keys."""
    cfg = installed_example(tmp_path)
    for stream in ("trucking", "healthcare"):
        (tmp_path / "state" / f"{stream}.start").unlink()
    os.chmod(tmp_path / "etc" / "keys" / "example.net.mail.pem", 0o644)
    (tmp_path / "etc" / "keys" / "send.example.net.send.pem").unlink()
    result = subprocess.run([sendguard_command(), "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [
        f"sendguard: config error: {cfg}: streams.trucking.start_file: stamp file {tmp_path}/state/trucking.start does not exist",
        f"sendguard: config error: {cfg}: streams.healthcare.start_file: stamp file {tmp_path}/state/healthcare.start does not exist",
        f"sendguard: config error: {cfg}: signing.keys.send.key_file: key file {tmp_path}/etc/keys/send.example.net.send.pem does not exist",
        f"sendguard: config error: {cfg}: signing.keys.mail.key_file: key file {tmp_path}/etc/keys/example.net.mail.pem"
        f" is world-readable (mode 0644); chmod o-rwx {tmp_path}/etc/keys/example.net.mail.pem",
    ]


def test_the_effective_configuration_reads_back_as_the_same_configuration(tmp_path):
    """`sendguard check-config <(sendguard check-config FILE)` passes and prints the same text."""
    cfg = installed_example(tmp_path)
    command = sendguard_command()
    first = subprocess.run([command, "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(
        ["bash", "-c", f'"{command}" check-config <("{command}" check-config "{cfg}")'],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    # What it reads back is the same configuration, keys and stamps found by their absolute paths.
    reread = tmp_path / "effective.toml"
    reread.write_text(first.stdout)
    assert load(reread).streams == load(cfg).streams
    assert load(reread).milter == load(cfg).milter
    assert f'key_file = "{tmp_path}/etc/keys/send.example.net.send.pem"' in first.stdout
