"""Addresses and host names as written in a LoadBalancer, checked field by field.

Checked in the model (not only when the state is built) so that a bad endpoint address or an out-of-range
port is reported with the other schema errors of the same run, not after they are fixed.
"""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)


def split_address(address: str) -> tuple[str, int | None]:
    """`host:port`, `[v6]:port`, `host` or a bare IPv6 -> (host, port or None). Raises ValueError."""
    text = address.strip()
    if not text:
        raise ValueError("is empty")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r} has '[' without ']'")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r} is not host:port")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        ipaddress.IPv6Address(text)  # a bare IPv6 address
        return text, None
    elif ":" in text:
        host, port_text = text.split(":", 1)
    else:
        host, port_text = text, None
    if not host or any(c in host for c in " /@?#"):
        raise ValueError(f"{text!r} is not host:port or host")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def check_endpoint_address(address: str) -> str:
    """A static endpoint's `address`: `host:port`, `[v6]:port`, `host` or a bare IPv6 (pydantic validator)."""
    try:
        split_address(address)
    except ValueError as exc:
        raise ValueError(f"{address!r} is not host:port or host ({exc})") from None
    return address


def _is_dns_name(name: str) -> bool:
    name = name[:-1] if name.endswith(".") else name  # a fully qualified `example.com.`
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def check_host(host: str) -> str:
    """One of `spec.hosts`: an exact DNS name, an IPv4 address or a bracketed IPv6 address (pydantic
    validator). Matched against the request's Host without its port, case-insensitively."""
    text = host.strip()
    if "*" in text:
        raise ValueError(f"{host!r}: wildcards are not supported; list exact host names only")
    if text.startswith("["):
        if not text.endswith("]"):
            raise ValueError(f"{host!r} has a port or is not closed: a host is a name without a port "
                             "(the listener's port is spec.ports[].port); write an IPv6 address as [::1]")
        try:
            ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address in brackets") from None
        return host
    if text.count(":") > 1:
        raise ValueError(f"{host!r}: write an IPv6 address in brackets, as in a Host header: [{text}]")
    if ":" in text:
        raise ValueError(f"{host!r} has a port: a host is a name without a port (the listener's port is "
                         "spec.ports[].port)")
    if re.fullmatch(r"[0-9.]+", text):
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
        return host
    if _is_dns_name(text):
        return host
    raise ValueError(f"{host!r} is not a DNS name, an IPv4 address or a bracketed IPv6 address")
