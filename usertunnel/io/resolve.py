"""Host names for --local and --remote: resolved once, at start (and on a daemon's reload), never per packet.

A tunnel's endpoints are addresses on the wire; a name is a convenience for the
person typing it. We resolve it with the host's resolver (/etc/hosts, DNS) in
the family the mode's outer header needs, take the first answer as `ip` would,
and say which address we took. A name that does not resolve is a configuration
error, reported in one line.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from ..core.errors import ConfigError

# RFC 1123 host names: labels of letters, digits and hyphens, not starting or ending with a hyphen.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")


def is_host_name(text: str) -> bool:
    """Whether `text` reads as a host name (and not as an address: those are parsed, not resolved)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return bool(_HOSTNAME.match(text)) and not text.replace(".", "").isdigit()
    return False


def resolve(name: str, outer: int, what: str) -> bytes:
    """The first IPv`outer` address of host `name`, packed; ConfigError naming the name if there is none."""
    family = socket.AF_INET if outer == 4 else socket.AF_INET6
    try:
        answers = socket.getaddrinfo(name, None, family, socket.SOCK_RAW)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else str(exc)
        raise ConfigError(
            f"cannot resolve {what} {name!r} to an IPv{outer} address ({reason}): give an address, "
            "or a name this host resolves (/etc/hosts, DNS)"
        ) from None
    address = str(answers[0][4][0])
    return ipaddress.ip_address(address.split("%", 1)[0]).packed
