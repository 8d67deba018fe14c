"""``[listmonk.NAME]``: a Listmonk instance sendguard tells the cap of the stream it feeds.

Each table names one Listmonk: its URL, the API user, the file holding that
user's token (never the token itself: the config file gets pasted into
tickets), and the stream whose cap it is told. The reference is docs/listmonk.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sendguard.config import ConfigDocument
from sendguard.config_reader import REQUIRED, Section, check_one_of
from sendguard_policyd.listmonk.client import AUTH_SCHEMES
from sendguard_policyd.redis_settings import read_password_file

#: What the sync does when Listmonk answers ``needs_restart`` (campaigns are running):
#: pause them, apply, start them again — or wait until none runs.
APPLY_WHILE_RUNNING = ("pause_briefly", "wait")


@dataclass(frozen=True)
class ListmonkSettings:
    """One ``[listmonk.NAME]`` table (see docs/listmonk.md for each key)."""

    name: str
    url: str
    username: str
    password_file: str
    stream: str
    #: The API token (or, with ``auth = "basic"`` on Listmonk before v4, the admin password),
    #: read from ``password_file`` at start: never printed, not even by ``check-config``.
    secret: str = field(default="", repr=False)
    auth: str = "token"
    #: While the stream is paused, also pause Listmonk's running campaigns.
    pause_campaigns: bool = False
    #: When the pause ends, start again the campaigns sendguard paused for it.
    resume_campaigns: bool = False
    apply_while_running: str = "pause_briefly"
    #: Seconds between two looks at the cap in force and Listmonk's window.
    interval: float = 60.0
    #: Seconds an HTTP request to Listmonk may take.
    timeout: float = 10.0
    enabled: bool = True
    #: Where the campaigns sendguard paused are remembered across restarts.
    state_file: str = ""


def _check_url(value: str) -> str | None:
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - parsing the port is what raises on a malformed one
    except ValueError as exc:
        return f"{value!r} is not a URL: {exc}"
    if url.scheme not in ("http", "https") or not url.hostname:
        return f"{value!r}: Listmonk's URL is http:// or https:// with a host, like http://127.0.0.1:9000"
    if url.username is not None or url.password is not None:
        return "carries credentials: put the user in username and the token in the file named by password_file"
    if url.query or url.fragment:
        return f"{value!r}: Listmonk's root URL has no query or fragment"
    return None


def _check_name(value: str) -> str | None:
    if not value or any(c.isspace() or c == ":" for c in value):
        return f"{value!r}: an API user name has no white space or ':'"
    return None


def _instance_key(url: str) -> str:
    """The Listmonk instance a URL reaches, for spotting two tables that would fight over one window."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}{parts.path.rstrip('/')}"


def _stream_names(doc: ConfigDocument) -> list[str]:
    # Every [streams.NAME] of the file, parsed or not: a stream with an error of its own is reported
    # there, not again as unknown here.
    raw = doc.top.data.get("streams")
    return list(raw) if isinstance(raw, dict) else []


def _parse_one(name: str, section: Section, doc: ConfigDocument, streams: list[str]) -> ListmonkSettings:
    if not name.replace("-", "").replace("_", "").isalnum():
        raise section.error("", "Listmonk names may hold letters, digits, '-' and '_' only")
    defaults = ListmonkSettings(name, "", "", "", "")
    url = section.get("url", str, check=_check_url)
    username = section.get("username", str, check=_check_name)
    password_path = section.get_path("password_file", doc.config.base_dir, default=REQUIRED)
    stream = section.get(
        "stream", str,
        check=lambda v: None if v in streams else f"{v!r} is not a configured stream ({', '.join(streams) or 'none'})",
    )  # fmt: skip
    auth = section.get("auth", str, defaults.auth, check_one_of(*AUTH_SCHEMES))
    pause = section.get("pause_campaigns", bool, defaults.pause_campaigns)
    resume = section.get("resume_campaigns", bool, defaults.resume_campaigns)
    while_running = section.get("apply_while_running", str, defaults.apply_while_running, check_one_of(*APPLY_WHILE_RUNNING))
    interval = section.get(
        "interval", float, defaults.interval, lambda v: None if 5 <= v <= 3600 else "must be between 5 and 3600 seconds"
    )
    timeout = section.get(
        "timeout", float, defaults.timeout, lambda v: None if 0.5 <= v <= 120 else "must be between 0.5 and 120 seconds"
    )
    enabled = section.get("enabled", bool, defaults.enabled)
    section.finish()
    assert password_path is not None
    secret = ""
    if enabled:
        try:
            secret = read_password_file(str(password_path))
        except ValueError as exc:
            raise section.error("password_file", str(exc)) from None
    return ListmonkSettings(
        name=name, url=url.rstrip("/"), username=username, password_file=str(password_path), stream=stream,
        secret=secret, auth=auth, pause_campaigns=pause, resume_campaigns=resume, apply_while_running=while_running,
        interval=float(interval), timeout=float(timeout), enabled=enabled,
        state_file=os.path.join(doc.config.general.state_dir, f"listmonk-{name}.json"),
    )  # fmt: skip


def parse_listmonk(doc: ConfigDocument) -> tuple[ListmonkSettings, ...]:
    """Parse every ``[listmonk.NAME]`` table: each one's problems reported, then two tables on one instance."""
    streams = _stream_names(doc)
    found: list[ListmonkSettings] = []
    top = doc.top
    for name, section in top.tables("listmonk"):
        one = doc.errors.attempt(lambda name=name, section=section: _parse_one(name, section, doc, streams))
        if one is not None:
            found.append(one)
    seen: dict[str, str] = {}
    for one in found:
        key = _instance_key(one.url)
        if one.enabled and key in seen:
            # One Listmonk has one window for all its campaigns: two tables would set it in turn.
            doc.errors.errors.append(
                top.sub("listmonk").sub(one.name).error("url", f"the same Listmonk as listmonk.{seen[key]} (one window per instance)")
            )
        elif one.enabled:
            seen[key] = one.name
    return tuple(found)
