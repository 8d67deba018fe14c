"""A client for the parts of Listmonk's HTTP API that tell it the cap: settings, server config, campaigns.

The endpoints, as Listmonk documents them (docs/swagger/collections.yaml,
docs/content/apis/campaigns.md):

- ``GET /api/settings``: every setting as one flat JSON object
  (``{"data": {"app.message_sliding_window": true, ...}}``). Secrets come back
  masked: each password, key or secret replaced by as many ``•`` as it had
  characters.
- ``PUT /api/settings``: REPLACES the whole object — a key missing from the
  body is stored as empty — and keeps a stored secret only where the body
  sends ``""``. Answers ``{"data": true}`` (applied: Listmonk reloads itself
  half a second later) or ``{"data": {"needs_restart": true}}`` (stored, not
  applied: campaigns are running).
- ``GET /api/config``: ``needs_restart`` is true while stored settings wait for a restart.
- ``GET /api/campaigns?status=running``, ``PUT /api/campaigns/{id}/status``.

Authentication: Listmonk v4 and later take an API user's token as
``Authorization: token USER:TOKEN``; every version takes HTTP basic auth
(an API user and token from v4, the admin user and password before).

Nothing here knows about caps: :mod:`sendguard_policyd.listmonk.sync` decides.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
from dataclasses import dataclass
from typing import Union
from urllib.parse import urlsplit

#: A decoded JSON value (what Listmonk's settings object holds).
JSON = Union[str, int, float, bool, None, list["JSON"], dict[str, "JSON"]]
Settings = dict[str, JSON]

#: The character Listmonk masks secrets with in ``GET /api/settings``.
MASK = "•"

AUTH_SCHEMES = ("token", "basic")


class ListmonkError(Exception):
    """A request Listmonk did not answer as documented: unreachable, refused, or an unexpected answer."""

    def __init__(self, what: str, status: int | None = None) -> None:
        super().__init__(what)
        #: The HTTP status, when there was an answer.
        self.status = status


@dataclass(frozen=True)
class Campaign:
    """The fields of a Listmonk campaign sendguard reads."""

    id: int
    name: str
    status: str


def is_masked(value: JSON) -> bool:
    """Whether ``value`` is a secret as ``GET /api/settings`` masks it (only ``•``, at least one)."""
    return isinstance(value, str) and value != "" and value.strip(MASK) == ""


def unmasked(value: JSON) -> JSON:
    """``value`` with every masked secret replaced by ``""``, which tells Listmonk to keep the stored one.

    Sent back as read, a masked value would be stored as the new password
    (``••••••••``): the SMTP login to Postfix, the bounce mailbox, the S3 key
    would all break at the next reload.
    """
    if is_masked(value):
        return ""
    if isinstance(value, dict):
        return {k: unmasked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unmasked(v) for v in value]
    return value


class ListmonkClient:
    """One Listmonk instance's API (a connection per request: a few requests a minute)."""

    def __init__(self, url: str, username: str, secret: str, auth: str = "token", timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._base = parts.path.rstrip("/")
        self._timeout = timeout
        if auth == "token":
            self._authorization = f"token {username}:{secret}"
        elif auth == "basic":
            self._authorization = "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode("ascii")
        else:
            raise ValueError(f"auth {auth!r} is not one of {', '.join(AUTH_SCHEMES)}")

    def _request(self, method: str, path: str, body: JSON = None, query: str = "") -> JSON:
        """Send one request; the answer's ``data`` (ListmonkError on anything else)."""
        headers = {"Authorization": self._authorization, "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json; charset=utf-8"
        target = f"{self._base}{path}" + (f"?{query}" if query else "")
        conn_type = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = conn_type(self._host, self._port, timeout=self._timeout)
        try:
            conn.request(method, target, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            reason = "timed out" if isinstance(exc, socket.timeout) else (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
            raise ListmonkError(f"{method} {path}: {reason}") from None
        finally:
            conn.close()
        if response.status != 200:
            raise ListmonkError(f"{method} {path}: HTTP {response.status} {_message(raw)}".rstrip(), response.status)
        try:
            decoded = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise ListmonkError(f"{method} {path}: the answer is not JSON", response.status) from None
        if not isinstance(decoded, dict) or "data" not in decoded:
            raise ListmonkError(f"{method} {path}: the answer has no data", response.status)
        return decoded["data"]

    def get_settings(self) -> Settings:
        """Every setting, secrets masked as Listmonk sends them."""
        data = self._request("GET", "/api/settings")
        if not isinstance(data, dict):
            raise ListmonkError("GET /api/settings: the settings are not an object")
        return data

    def put_settings(self, settings: Settings) -> bool:
        """Store the whole settings object (masked secrets blanked first); True when Listmonk applies it now.

        False means Listmonk stored it but answered ``needs_restart``: it runs
        on the old settings until it restarts, which it does not do by itself
        while a campaign runs.
        """
        data = self._request("PUT", "/api/settings", unmasked(settings))
        if data is True:
            return True
        if isinstance(data, dict) and data.get("needs_restart") is True:
            return False
        raise ListmonkError(f"PUT /api/settings: unexpected answer {json.dumps(data)[:80]}")

    def needs_restart(self) -> bool:
        """Whether Listmonk holds stored settings it has not applied yet (``GET /api/config``)."""
        data = self._request("GET", "/api/config")
        if not isinstance(data, dict) or not isinstance(data.get("needs_restart"), bool):
            raise ListmonkError("GET /api/config: no needs_restart in the answer")
        return data["needs_restart"]

    def running_campaigns(self) -> list[Campaign]:
        """The campaigns whose status is ``running``."""
        data = self._request("GET", "/api/campaigns", query="status=running&per_page=all")
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            raise ListmonkError("GET /api/campaigns: no results in the answer")
        return [c for c in (_campaign(r) for r in results) if c is not None and c.status == "running"]

    def campaign(self, campaign_id: int) -> Campaign:
        """One campaign."""
        found = _campaign(self._request("GET", f"/api/campaigns/{campaign_id}"))
        if found is None:
            raise ListmonkError(f"GET /api/campaigns/{campaign_id}: not a campaign")
        return found

    def set_campaign_status(self, campaign_id: int, status: str) -> Campaign:
        """Change a campaign's status ("paused", "running"); the campaign as Listmonk answers."""
        path = f"/api/campaigns/{campaign_id}/status"
        found = _campaign(self._request("PUT", path, {"status": status}))
        if found is None:
            raise ListmonkError(f"PUT {path}: not a campaign")
        return found


def _campaign(data: JSON) -> Campaign | None:
    if not isinstance(data, dict):
        return None
    cid, name, status = data.get("id"), data.get("name"), data.get("status")
    if isinstance(cid, bool) or not isinstance(cid, int) or not isinstance(status, str):
        return None
    return Campaign(cid, name if isinstance(name, str) else "", status)


def _message(raw: bytes) -> str:
    """Listmonk's error message (``{"message": ...}``), short, for a log line."""
    try:
        decoded = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return ""
    message = decoded.get("message") if isinstance(decoded, dict) else None
    return f"({message[:120]})" if isinstance(message, str) else ""
