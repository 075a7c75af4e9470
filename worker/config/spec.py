"""How one setting is declared and read: ``Spec``, ``setting()`` and what they share (the settings error,
secrets read from files, URLs shown without their password). ``worker.config.settings`` declares the settings."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any
from urllib.parse import urlparse


class SettingsError(ValueError):
    """A setting has a bad value; the message is one line naming the variable."""


@dataclass(frozen=True)
class Spec:
    """How one setting is read: environment variable, default, parser and help text."""

    field: str
    env: str
    default: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False
    url: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.env.removeprefix("GUARDQ_").lower().replace("_", "-")

    @property
    def file_env(self) -> str:
        """The variable naming a file that holds a secret's value (``GUARDQ_GUARD_API_KEY_FILE``)."""
        return self.env + "_FILE"

    def shown(self, raw: str) -> str:
        """How a value given for this setting may be shown in an error or a listing."""
        if self.secret:
            return "<hidden>"
        return repr(mask_url_password(raw) if self.url else raw)


def setting(
    default: str, parse: Callable[[str], Any], help: str, *, secret: bool = False, url: bool = False
) -> Any:
    """Declare one field of ``Settings``: the default (as its variable would spell it), the parser that
    turns the text into the field's value (raising ``ValueError``), a help line, and how it is shown:
    ``secret`` (never a flag, never shown, also read from ``<VAR>_FILE``) or ``url`` (a URL that may
    carry a password: shown with it masked, and refused as a flag when it carries one)."""
    return dataclass_field(metadata={"setting": (default, parse, help, secret, url)})


_USERINFO = re.compile(r"(?<=//)[^/@]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def url_passwords(raw: str) -> list[str]:
    """The passwords a URL carries: in its user info (``redis://user:pw@host``) or its query
    (``?password=pw``, which redis-py reads too)."""
    found: list[str] = []
    try:
        parsed = urlparse(raw)
        if parsed.password:
            found.append(parsed.password)
    except ValueError:  # not a URL at all (a bad port, an unclosed bracket)
        pass
    found += [match.group(0).split("=", 1)[1] for match in _QUERY_PASSWORD.finditer(raw)]
    return [password for password in found if password]


def mask_url_password(raw: str) -> str:
    """``raw`` with every password it carries replaced by ``***`` (user info and ``?password=``); a URL
    that does not parse has its whole user info masked."""
    masked = _QUERY_PASSWORD.sub(r"\1***", raw)
    try:
        parsed = urlparse(masked)
        password = parsed.password
    except ValueError:
        return _USERINFO.sub("***@", masked)
    if not password:
        return masked
    userinfo = f"{parsed.username or ''}:***"
    return parsed._replace(netloc=f"{userinfo}@{parsed.netloc.rpartition('@')[2]}").geturl()


# No key, password or webhook URL comes near this; a longer file is the wrong file.
MAX_SECRET_FILE_CHARS = 64 * 1024


def secret_from_file(spec: Spec, env: Mapping[str, str]) -> str | None:
    """The value of a secret's ``<VAR>_FILE`` (the file's text without its final newline), or None."""
    path = env.get(spec.file_env, "").strip()
    if not path:
        return None
    if env.get(spec.env):
        raise SettingsError(f"set {spec.env} or {spec.file_env}, not both")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_SECRET_FILE_CHARS + 1)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SettingsError(f"{spec.file_env}={path!r}: cannot read the file: {reason}") from None
    if len(text) > MAX_SECRET_FILE_CHARS:
        raise SettingsError(f"{spec.file_env}={path!r}: longer than {MAX_SECRET_FILE_CHARS} characters")
    return text.rstrip("\r\n")


def spelled(value: Any) -> str:
    """A setting's value as its variable spells it (a tuple as its comma-separated steps)."""
    return ",".join(value) if isinstance(value, tuple) else str(value)


def spelling_of_none(spec: Spec) -> str | None:
    """How a setting left unset (None) is written when its default is not None (``auto``): None when
    dropping the variable gives None already."""
    if spec.parse(spec.default) is None:
        return None
    for candidate in ("auto", "none", ""):
        try:
            if spec.parse(candidate) is None:
                return candidate
        except ValueError:
            continue
    raise ValueError(f"{spec.env} has no spelling for an unset value")
