"""Media types: reading Accept and Content-Type, writing multipart/related bodies."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from node.web.errors import NotAcceptable

CRLF = b"\r\n"


@dataclass(frozen=True)
class MediaRange:
    """One media range of an Accept header: ``type/subtype`` and its parameters."""

    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def matches(self, media: str) -> bool:
        if self.type in ("*/*", media):
            return True
        main, _, _ = media.partition("/")
        return self.type == f"{main}/*"


def parse_media(value: str) -> MediaRange:
    """One media type with parameters (quotes around values removed, names lower-cased)."""
    parts = [p.strip() for p in _split_unquoted(value, ";")]
    params: dict[str, str] = {}
    for p in parts[1:]:
        name, _, val = p.partition("=")
        params[name.strip().lower()] = val.strip().strip('"')
    q = 1.0
    if "q" in params:
        try:
            q = float(params.pop("q"))
        except ValueError:
            q = 0.0
    return MediaRange(parts[0].lower() if parts else "", params, q)


def _split_unquoted(value: str, separator: str) -> list[str]:
    """``value`` split at ``separator`` outside double quotes."""
    out, current, quoted = [], "", False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == separator and not quoted:
            out.append(current)
            current = ""
        else:
            current += ch
    out.append(current)
    return out


def parse_accept(header: str | None) -> list[MediaRange]:
    """The ranges of an Accept header, best first; ``*/*`` when there is none."""
    if not header:
        return [MediaRange("*/*")]
    parsed = [parse_media(r) for r in _split_unquoted(header, ",") if r.strip()]
    return sorted((r for r in parsed if r.q > 0), key=lambda r: -r.q)


def choose(header: str | None, available: list[str]) -> tuple[str, MediaRange]:
    """The first available media type the Accept header takes, and the range that took it.

    Raises NotAcceptable (406) naming what is available."""
    for accepted in parse_accept(header):
        for media in available:
            if accepted.matches(media):
                return media, accepted
    raise NotAcceptable(available)


def accept_of(headers: Mapping[str, str], params: Mapping[str, str]) -> str | None:
    """The Accept of a request: the ``accept`` query parameter wins over the header
    (PS3.18 8.3.3.1; OHIF asks for thumbnails so)."""
    return params.get("accept") or headers.get("accept")


def related_type(accepted: MediaRange) -> str | None:
    """The ``type`` parameter of a ``multipart/related`` range (None when it has none)."""
    return accepted.params.get("type")


class Multipart:
    """A multipart/related body written part by part (never held whole)."""

    def __init__(self, part_type: str) -> None:
        self.boundary = secrets.token_hex(16)
        self.part_type = part_type

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="{self.part_type}"; boundary={self.boundary}'

    def part(self, chunks: Iterable[bytes], content_type: str | None = None,
             location: str | None = None) -> Iterator[bytes]:
        head = b"--" + self.boundary.encode() + CRLF
        head += b"Content-Type: " + (content_type or self.part_type).encode() + CRLF
        if location:
            head += b"Content-Location: " + location.encode() + CRLF
        yield head + CRLF
        yield from chunks
        yield CRLF

    def end(self) -> bytes:
        return b"--" + self.boundary.encode() + b"--" + CRLF
