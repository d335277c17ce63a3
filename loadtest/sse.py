"""Server-Sent Events parsing for the /explain user, kept apart from the locustfile so tests can import it.

(Importing locust monkey-patches the standard library with gevent, which a test process must not get.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def iter_sse(lines: Iterable[bytes | str]) -> Iterator[tuple[str, str]]:
    """(event, data) for each Server-Sent Event in a stream of lines; comments (keep-alive pings) are skipped."""
    event, data = "message", list[str]()
    for raw in lines:
        line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        line = line.rstrip("\r")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", list[str]()
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    if data:
        yield event, "\n".join(data)
