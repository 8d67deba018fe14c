"""A stand-in for Listmonk's HTTP API: the endpoints sendguard uses, with the traps of the real one.

Listmonk cannot be installed on the test machines (it is in neither Debian
nor PyPI), so this server — stdlib ``http.server`` on 127.0.0.1 — answers
as Listmonk v4 documents and as its source does (cmd/settings.go,
cmd/admin.go, internal/manager), and records what a client did wrong.

Modelled:

- ``GET /api/settings``: the flat settings object; every secret masked with
  one ``•`` per character (SMTP, messenger and bounce-mailbox passwords, the S3
  secret, SendGrid and Postmark and ForwardEmail keys, the captcha and OIDC
  secrets).
- ``PUT /api/settings``: the body REPLACES the stored object: a known key
  left out is stored as its zero value ("", 0, false, []) — recorded in
  :attr:`wiped_keys`. A secret sent as ``""`` keeps the stored one (list
  items matched by ``uuid``); any other value is stored as the new secret —
  a changed secret is recorded in :attr:`secret_overwrites`. A value of the
  wrong JSON type is refused (400), as Go's decoder does; at least one
  enabled SMTP server is required (400). While a campaign runs the answer is
  ``{"data": {"needs_restart": true}}`` and the stored settings are NOT
  applied; otherwise ``{"data": true}`` and the stand-in "restarts" after
  ``reload_delay`` (answering 503 for ``downtime`` seconds) and applies them.
- ``GET /api/config``: ``needs_restart``.
- ``POST /api/admin/reload``: restarts at once, campaigns running or not
  (recorded in :attr:`reloads`, with whether campaigns were running).
- ``GET /api/campaigns`` (``status`` filter, ``per_page``), ``GET /api/campaigns/{id}``,
  ``PUT /api/campaigns/{id}/status`` with the documented transitions. A
  paused campaign stays in Listmonk's manager ("running" for needs_restart)
  for ``drain_seconds``, as a real one does until its in-flight messages are done.
- Auth: ``Authorization: token USER:TOKEN`` (unless ``token_auth`` is off,
  as before v4) and HTTP basic; anything else is 403.

Not modelled: sending mail (so not the window's effect — the window
arithmetic is tested against a simulation of Listmonk's counter instead),
sessions and the admin UI, permissions per API user, every other endpoint,
the exact texts of Listmonk's error messages.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MASK = "•"

#: Keys of the object each list item of these list settings holds a secret in.
LIST_SECRETS = {"smtp": "password", "messengers": "password", "bounce.mailboxes": "password"}
#: Top-level secrets: a key, or (key, sub-key) for one inside an object setting.
TOP_SECRETS = (
    ("upload.s3.aws_secret_access_key",),
    ("bounce.sendgrid_key",),
    ("bounce.postmark", "password"),
    ("bounce.forwardemail", "key"),
    ("security.captcha_secret",),
    ("security.oidc", "client_secret"),
)

#: Secrets the stand-in starts with (what a client must never change).
SECRETS = {
    "smtp[0].password": "postfix-relay-pass",
    "bounce.mailboxes[0].password": "pop3-pass",
    "upload.s3.aws_secret_access_key": "s3-secret-key",
    "bounce.postmark.password": "postmark-pass",
    "security.captcha_secret": "hcaptcha-secret",
    "security.oidc.client_secret": "oidc-secret",
}


def default_settings() -> dict[str, Any]:
    """A Listmonk settings object as a fresh v4 install with one SMTP server (Postfix) has it."""
    return {
        "app.site_name": "Mailing list",
        "app.root_url": "https://lists.example.net",
        "app.logo_url": "",
        "app.favicon_url": "",
        "app.from_email": "noreply@send.example.net",
        "app.notify_emails": ["ops@example.net"],
        "app.enable_public_subscription_page": True,
        "app.enable_public_archive": False,
        "app.send_optin_confirmation": True,
        "app.check_updates": False,
        "app.lang": "en",
        "app.batch_size": 1000,
        "app.concurrency": 10,
        "app.max_send_errors": 1000,
        "app.message_rate": 10,
        "app.cache_slow_queries": False,
        "app.cache_slow_queries_interval": "0 3 * * *",
        "app.message_sliding_window": False,
        "app.message_sliding_window_duration": "1h",
        "app.message_sliding_window_rate": 10000,
        "privacy.individual_tracking": False,
        "privacy.unsubscribe_header": True,
        "privacy.allow_blocklist": True,
        "privacy.allow_export": True,
        "privacy.allow_wipe": True,
        "privacy.exportable": ["profile", "subscriptions", "campaign_views", "link_clicks"],
        "privacy.domain_blocklist": [],
        "security.enable_captcha": False,
        "security.captcha_key": "",
        "security.captcha_secret": SECRETS["security.captcha_secret"],
        "security.oidc": {
            "enabled": False, "provider_url": "", "client_id": "", "client_secret": SECRETS["security.oidc.client_secret"]
        },
        "upload.provider": "filesystem",
        "upload.extensions": ["jpg", "png"],
        "upload.filesystem.upload_path": "uploads",
        "upload.filesystem.upload_uri": "/uploads",
        "upload.s3.aws_access_key_id": "",
        "upload.s3.aws_secret_access_key": SECRETS["upload.s3.aws_secret_access_key"],
        "smtp": [
            {
                "uuid": "5d9b2b0e-6c53-4f7a-9a55-3a4b1f0c2d11", "name": "email-postfix", "enabled": True,
                "host": "172.18.0.1", "hello_hostname": "", "port": 25, "auth_protocol": "login",
                "username": "listmonk", "password": SECRETS["smtp[0].password"], "email_headers": [],
                "max_conns": 10, "max_msg_retries": 2, "retry_delay": "5s", "idle_timeout": "15s",
                "wait_timeout": "5s", "tls_type": "STARTTLS", "tls_skip_verify": False,
            }
        ],
        "messengers": [],
        "bounce.enabled": True,
        "bounce.webhooks_enabled": False,
        "bounce.actions": {"soft": {"count": 2, "action": "none"}, "hard": {"count": 1, "action": "blocklist"}},
        "bounce.ses_enabled": False,
        "bounce.sendgrid_enabled": False,
        "bounce.sendgrid_key": "",
        "bounce.postmark": {"enabled": False, "username": "", "password": SECRETS["bounce.postmark.password"]},
        "bounce.forwardemail": {"enabled": False, "key": ""},
        "bounce.mailboxes": [
            {
                "uuid": "0b1f6a9e-2f0d-4f55-8e4e-7d5b8a2c9e01", "enabled": True, "type": "pop", "host": "pop.example.net",
                "port": 995, "auth_protocol": "userpass", "return_path": "bounces@send.example.net",
                "username": "bounces", "password": SECRETS["bounce.mailboxes[0].password"], "tls_enabled": True,
                "tls_skip_verify": False, "scan_interval": "15m",
            }
        ],
        "appearance.admin.custom_css": "",
        "appearance.admin.custom_js": "",
        "appearance.public.custom_css": "",
        "appearance.public.custom_js": "",
    }


def _zero(value: Any) -> Any:
    """Go's zero value for a setting shaped like ``value`` (what a key left out of a PUT becomes)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0
    if isinstance(value, str):
        return ""
    if isinstance(value, list):
        return []
    if isinstance(value, dict):
        return {k: _zero(v) for k, v in value.items()}
    return None


def _same_type(template: Any, value: Any) -> bool:
    if isinstance(template, bool) or isinstance(value, bool):
        return isinstance(template, bool) and isinstance(value, bool)
    if isinstance(template, int):
        return isinstance(value, int)
    if isinstance(template, (str, list)):
        return isinstance(value, type(template))
    if isinstance(template, dict):
        return isinstance(value, dict)
    return True


def _mask(value: str) -> str:
    return MASK * len(value)


class ListmonkStandin:
    """The stand-in server; :meth:`start` it, point a client at :attr:`url`, :meth:`stop` it."""

    def __init__(
        self,
        users: dict[str, str] | None = None,
        token_auth: bool = True,
        reload_delay: float = 0.2,
        downtime: float = 0.2,
        drain_seconds: float = 0.0,
    ) -> None:
        self.users = dict(users if users is not None else {"sendguard": "api-token-1234"})
        self.token_auth = token_auth
        self.reload_delay = reload_delay
        self.downtime = downtime
        self.drain_seconds = drain_seconds
        self.lock = threading.RLock()
        #: The settings as stored (real secrets), and as the running app applies them.
        self.stored: dict[str, Any] = default_settings()
        self.applied: dict[str, Any] = copy.deepcopy(self.stored)
        self.needs_restart = False
        self.restarting = False
        #: Answer every request with 503 (Listmonk down behind its proxy) while set.
        self.down = False
        self.campaigns: dict[int, dict[str, Any]] = {}
        self._draining: dict[int, float] = {}
        #: (setting, stored secret before, value stored now) for every secret a PUT changed.
        self.secret_overwrites: list[tuple[str, str, str]] = []
        #: Known keys a PUT left out (and so reset to their zero value).
        self.wiped_keys: list[str] = []
        #: Every restart: {"via": "settings" | "admin/reload", "campaigns_running": bool}.
        self.reloads: list[dict[str, Any]] = []
        #: (method, path, Authorization header) of every request.
        self.requests: list[tuple[str, str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timers: list[threading.Timer] = []

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> ListmonkStandin:
        """Listen on a free loopback port and serve in a thread."""
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet: tests read the records instead
                pass

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, answer = standin.handle(method, self.path, self.headers.get("Authorization", ""), body)
                raw = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_POST(self) -> None:
                self._handle("POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        for timer in self._timers:
            timer.cancel()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- what tests arrange and look at -------------------------------------------------

    def add_campaign(self, name: str, status: str = "running") -> int:
        """A campaign in ``status`` (a running one is being processed by the manager)."""
        with self.lock:
            cid = max(self.campaigns, default=0) + 1
            self.campaigns[cid] = {
                "id": cid, "uuid": str(uuid.uuid4()), "name": name, "subject": name, "status": status,
                "type": "regular", "to_send": 1000, "sent": 0, "messenger": "email", "lists": [{"id": 1, "name": "list"}],
            }  # fmt: skip
            return cid

    def finish_campaign(self, cid: int) -> None:
        """The campaign ran out of subscribers."""
        with self.lock:
            self.campaigns[cid]["status"] = "finished"
            self._draining.pop(cid, None)

    def status(self, cid: int) -> str:
        with self.lock:
            return str(self.campaigns[cid]["status"])

    def campaigns_running(self) -> bool:
        """What Listmonk's manager answers (HasRunningCampaigns): running, or paused and still draining."""
        with self.lock:
            now = time.monotonic()
            return any(c["status"] == "running" for c in self.campaigns.values()) or any(
                until > now for until in self._draining.values()
            )

    def set_window_by_hand(self, enabled: bool, rate: int, duration: str) -> None:
        """What an operator's change in the admin UI does with no campaign running: stored and applied."""
        with self.lock:
            for target in (self.stored, self.applied):
                target["app.message_sliding_window"] = enabled
                target["app.message_sliding_window_rate"] = rate
                target["app.message_sliding_window_duration"] = duration

    def applied_window(self) -> tuple[bool, int, str]:
        """The sliding window the running app uses: (enabled, rate, duration)."""
        with self.lock:
            a = self.applied
            return (a["app.message_sliding_window"], a["app.message_sliding_window_rate"],
                    a["app.message_sliding_window_duration"])  # fmt: skip

    def stored_secret(self, path: str) -> str:
        """A stored secret by its name in :data:`SECRETS` ("smtp[0].password")."""
        with self.lock:
            if path.startswith("smtp[0]."):
                return str(self.stored["smtp"][0]["password"])
            if path.startswith("bounce.mailboxes[0]."):
                return str(self.stored["bounce.mailboxes"][0]["password"])
            for key, sub in (("bounce.postmark", "password"), ("security.oidc", "client_secret")):
                if path == f"{key}.{sub}":
                    return str(self.stored[key][sub])
            return str(self.stored[path])

    # -- the API ------------------------------------------------------------------------

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "token" and self.token_auth:
            user, _, token = value.partition(":")
        elif scheme.lower() == "basic":
            try:
                user, _, token = base64.b64decode(value, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
        else:
            return False
        return bool(user) and self.users.get(user) == token

    def handle(self, method: str, target: str, authorization: str, body: bytes) -> tuple[int, Any]:
        """Answer one request: (HTTP status, JSON answer)."""
        parts = urlsplit(target)
        path = parts.path
        with self.lock:
            self.requests.append((method, path, authorization))
            if self.down or self.restarting:
                return 503, {"message": "Listmonk is restarting"}
            if not self._authorized(authorization):
                return 403, {"message": "invalid API credentials"}
            if path == "/api/settings" and method == "GET":
                return 200, {"data": self._masked()}
            if path == "/api/settings" and method == "PUT":
                return self._put_settings(body)
            if path == "/api/config" and method == "GET":
                return 200, {"data": {"needs_restart": self.needs_restart, "version": "v4.1.0",
                                      "root_url": self.applied["app.root_url"], "lang": "en"}}  # fmt: skip
            if path == "/api/admin/reload" and method == "POST":
                self._restart("admin/reload", delay=0.5)
                return 200, {"data": True}
            if path == "/api/campaigns" and method == "GET":
                return self._list_campaigns(parse_qs(parts.query))
            segments = path.strip("/").split("/")
            if len(segments) >= 3 and segments[:2] == ["api", "campaigns"] and segments[2].isdigit():
                cid = int(segments[2])
                if cid not in self.campaigns:
                    return 404, {"message": "Campaign not found."}
                if len(segments) == 3 and method == "GET":
                    return 200, {"data": dict(self.campaigns[cid])}
                if segments[3:] == ["status"] and method == "PUT":
                    return self._campaign_status(cid, body)
            return 404, {"message": "404 unknown endpoint"}

    def _masked(self) -> dict[str, Any]:
        out = copy.deepcopy(self.stored)
        for key, field in LIST_SECRETS.items():
            for item in out[key]:
                if item.get(field):
                    item[field] = _mask(item[field])
        for path in TOP_SECRETS:
            holder = out if len(path) == 1 else out[path[0]]
            name = path[-1]
            holder[name] = _mask(holder[name])
        return out

    def _put_settings(self, raw: bytes) -> tuple[int, Any]:
        try:
            body = json.loads(raw)
        except ValueError:
            return 400, {"message": "invalid JSON"}
        if not isinstance(body, dict):
            return 400, {"message": "invalid settings"}
        new: dict[str, Any] = {}
        for key, template in self.stored.items():
            if key not in body:
                self.wiped_keys.append(key)
                new[key] = _zero(template)
                continue
            value = body[key]
            if not _same_type(template, value):
                return 400, {"message": f"invalid value for {key}"}
            new[key] = copy.deepcopy(value)
        if not any(isinstance(s, dict) and s.get("enabled") for s in new["smtp"]):
            return 400, {"message": "At least one SMTP block should be enabled"}
        self._keep_secrets(new)
        self.stored = new
        if self.campaigns_running():
            self.needs_restart = True
            return 200, {"data": {"needs_restart": True}}
        self._restart("settings", delay=self.reload_delay)
        return 200, {"data": True}

    def _keep_secrets(self, new: dict[str, Any]) -> None:
        """Listmonk's rule: "" keeps the stored secret (list items by uuid), anything else replaces it."""
        for key, field in LIST_SECRETS.items():
            old_items = {item.get("uuid"): item for item in self.stored[key]}
            for i, item in enumerate(new[key]):
                if not isinstance(item, dict):
                    continue
                old = old_items.get(item.get("uuid") or "")
                if not item.get("uuid"):
                    item["uuid"] = str(uuid.uuid4())
                if not item.get(field):
                    item[field] = old.get(field, "") if old is not None else ""
                elif old is not None and item[field] != old.get(field):
                    self.secret_overwrites.append((f"{key}[{i}].{field}", old.get(field, ""), item[field]))
        for path in TOP_SECRETS:
            if len(path) == 1:
                holder, old_holder = new, self.stored
            else:
                holder, old_holder = new[path[0]], self.stored[path[0]]
            name = path[-1]
            if not holder.get(name):
                holder[name] = old_holder.get(name, "")
            elif holder[name] != old_holder.get(name):
                self.secret_overwrites.append((".".join(path), old_holder.get(name, ""), holder[name]))

    def _restart(self, via: str, delay: float) -> None:
        self.reloads.append({"via": via, "campaigns_running": self.campaigns_running()})

        def go_down() -> None:
            with self.lock:
                self.restarting = True
            up = threading.Timer(self.downtime, come_up)
            self._timers.append(up)
            up.start()

        def come_up() -> None:
            with self.lock:
                self.applied = copy.deepcopy(self.stored)
                self.needs_restart = False
                self._draining.clear()  # a restart ends what was in flight
                self.restarting = False

        timer = threading.Timer(delay, go_down)
        self._timers.append(timer)
        timer.start()

    def _list_campaigns(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        statuses = set(query.get("status", []))
        found = [dict(c) for cid, c in sorted(self.campaigns.items()) if not statuses or c["status"] in statuses]
        per_page = query.get("per_page", ["20"])[0]
        shown = found if per_page == "all" else found[: int(per_page)]
        return 200, {"data": {"results": shown, "query": "", "total": len(found),
                              "per_page": 0 if per_page == "all" else int(per_page), "page": 1}}  # fmt: skip

    def _campaign_status(self, cid: int, raw: bytes) -> tuple[int, Any]:
        try:
            status = json.loads(raw).get("status")
        except (ValueError, AttributeError):
            return 400, {"message": "invalid JSON"}
        current = self.campaigns[cid]["status"]
        allowed = {
            "draft": current == "scheduled",
            "scheduled": current == "draft",
            "running": current in ("paused", "draft"),
            "paused": current == "running",
            "cancelled": current == "running",
        }
        if not allowed.get(status, False):
            return 400, {"message": f"cannot change a {current} campaign to {status}"}
        self.campaigns[cid]["status"] = status
        if status in ("paused", "cancelled") and self.drain_seconds > 0:
            self._draining[cid] = time.monotonic() + self.drain_seconds
        if status == "running":
            self._draining.pop(cid, None)
        return 200, {"data": dict(self.campaigns[cid])}
