"""A real IMAP server for tests: Debian's Dovecot on 127.0.0.1 and a free port, one user, maildir.

Dovecot runs in the foreground (``-F``) with its own config: every path (base,
state, log, the users' maildirs) in a folder of its own, plaintext login allowed
on loopback only, no TLS listener. It runs as root, as Dovecot does, and reads
mail as the ``dovecot`` system user (the package makes it): the folder is made
outside pytest's private temporary tree, which that user could not enter.
"""

from __future__ import annotations

import imaplib
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ports import free_port

DOVECOT = "/usr/sbin/dovecot"
USER = "dmarc-rua"
PASSWORD = "s3cret-rua"

CONFIG = """
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
service anvil {{
  chroot =
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/mail/%u
}}
mail_location = maildir:~/Maildir
"""


class DovecotServer:
    """Dovecot serving one user's mailbox over IMAP on 127.0.0.1; :meth:`stop` ends it and removes its folder."""

    def __init__(self, tls: bool = False) -> None:
        assert Path(DOVECOT).exists(), "dovecot not installed: bash scripts/bootstrap.sh test installs dovecot-imapd"
        self.root = Path(tempfile.mkdtemp(prefix="sendguard-dovecot-"))
        self.root.chmod(0o755)
        self.port = free_port()
        #: With ``tls``: the implicit-TLS port (STARTTLS is offered on :attr:`port`), and the CA file
        #: that verifies the server's certificate (made for 127.0.0.1 and localhost at start).
        self.tls_port = free_port() if tls else 0
        self.ca_file = self.root / "ca.pem" if tls else None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DovecotServer:
        """Start Dovecot and return once it answers a login."""
        user = pwd.getpwnam("dovecot")
        (self.root / "mail").mkdir()
        shutil.chown(self.root / "mail", user.pw_uid, user.pw_gid)
        (self.root / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        conf = self.root / "dovecot.conf"
        ssl_lines = "ssl = no"
        if self.ca_file is not None:
            self._make_certificate()
            ssl_lines = f"ssl = yes\nssl_cert = <{self.root}/cert.pem\nssl_key = <{self.root}/key.pem"
        conf.write_text(CONFIG.format(root=self.root, port=self.port, tls_port=self.tls_port, ssl=ssl_lines))
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, f"dovecot exited: {self.log()}"
            try:
                self.client().logout()
                return self
            except (OSError, imaplib.IMAP4.error):
                assert time.monotonic() < deadline, f"dovecot did not answer: {self.log()}"
                time.sleep(0.1)

    def _make_certificate(self) -> None:
        """A self-signed certificate for 127.0.0.1 and localhost; it is its own CA (``ca.pem``)."""
        import datetime as dt
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        pem = cert.public_bytes(serialization.Encoding.PEM)
        (self.root / "cert.pem").write_bytes(pem)
        assert self.ca_file is not None
        self.ca_file.write_bytes(pem)
        (self.root / "key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
        (self.root / "key.pem").chmod(0o600)

    def log(self) -> str:
        """Dovecot's log so far."""
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def client(self) -> imaplib.IMAP4:
        """A logged-in IMAP connection as the test user."""
        conn = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        conn.login(USER, PASSWORD)
        return conn

    def deliver(self, message: bytes, mailbox: str = "INBOX") -> None:
        """Put a message in the mailbox (APPEND, as a delivery agent or a mail client would)."""
        conn = self.client()
        try:
            if mailbox != "INBOX":
                conn.create(mailbox)
            typ, data = conn.append(mailbox, None, None, message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
            assert typ == "OK", data
        finally:
            conn.logout()

    def flags(self, mailbox: str = "INBOX") -> list[bytes]:
        """Each message's flags, in UID order (to see that nothing was marked)."""
        conn = self.client()
        try:
            conn.select(mailbox, readonly=True)
            typ, data = conn.uid("FETCH", "1:*", "(FLAGS)")
            return [item for item in data if isinstance(item, bytes)]
        finally:
            conn.logout()

    def stop(self) -> None:
        """Stop Dovecot and remove its folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
