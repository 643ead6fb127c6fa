"""Flag parsing shared by both daemons' settings: addresses, numbers, booleans, secrets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final


class SettingsError(ValueError):
    """A bad flag: the message says which and what to give instead."""


@dataclass(frozen=True)
class HttpAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, flag: str = "--http") -> HttpAddress | None:
        if text.strip().lower() == "off":
            return None
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise SettingsError(f"{flag} {text!r}: expected HOST:PORT (e.g. 0.0.0.0:9402) or off")
        return cls(host.strip("[]") or "0.0.0.0", int(port))


def positive(value: str, flag: str, *, integer: bool = False) -> float:
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        raise SettingsError(f"{flag} {value!r}: expected a positive number") from None
    if number <= 0:
        raise SettingsError(f"{flag} {value!r}: must be greater than 0")
    return number


_TRUE: Final = frozenset({"1", "true", "yes", "on", "y"})
_FALSE: Final = frozenset({"0", "false", "no", "off", "n", ""})
BOOLEAN_SPELLINGS: Final = "1/true/yes/on or 0/false/no/off"


def parse_bool(text: str, name: str) -> bool:
    """A boolean from an environment twin, in any case; anything else is refused by name, so
    ``GPUWARDEN_DRY_RUN=enabled`` never quietly means "live"."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise SettingsError(f"{name} {text!r}: expected a boolean ({BOOLEAN_SPELLINGS})")


def bool_setting(value: bool | str | None, variable: str) -> bool:
    """A ``BooleanOptionalAction`` flag whose default is its raw environment twin: the flag
    (``--x`` / ``--no-x``) wins, else the twin is parsed strictly, else False."""
    if value is None or isinstance(value, bool):
        return bool(value)
    return parse_bool(value, variable)


def read_secret(path: str, flag: str) -> str:
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise SettingsError(f"{flag}: cannot read {path} ({exc})") from None
    if not text:
        raise SettingsError(f"{flag}: {path} is empty")
    return text
