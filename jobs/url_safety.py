"""Is a webhook URL safe to call? http(s), a host, and only public addresses once resolved.

A webhook URL is an SSRF door: a client could make the service POST to Redis,
a cloud metadata endpoint or anything else on the private network. Both the API (at submit)
and the webhook worker (at each delivery) resolve the host and check every address it gives;
the worker then connects to an address it checked, so a second resolution that answers
differently (DNS rebinding) cannot send the request elsewhere. Standard library only: the API
and the webhook worker import it, neither needs more.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

MAX_URL_LENGTH = 2048
SCHEMES = ("http", "https")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# The well-known NAT64 prefix: a gateway turns 64:ff9b::7f00:1 into 127.0.0.1.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


NOT_PUBLIC = "the host {host!r} does not resolve to a public address; webhooks go to public addresses only"


class UnsafeUrl(ValueError):
    """The URL may not be called; the message says why, in words a client can act on."""


class Unresolvable(UnsafeUrl):
    """The host does not resolve (now: at delivery, it may again later)."""


@dataclass(frozen=True)
class CheckedUrl:
    """A URL whose host resolved to `addresses`, each checked."""

    url: str
    scheme: str
    host: str  # as written, lower case, without brackets
    port: int
    addresses: tuple[str, ...]
    parts: SplitResult

    @property
    def host_header(self) -> str:
        """The Host header the URL implies (the port only when it is not the scheme's default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def url_for(self, address: str) -> str:
        """The same URL with the host replaced by one of its checked addresses."""
        netloc = f"[{address}]" if ":" in address else address
        userinfo = self.parts.netloc.rpartition("@")[0]  # user:password, sent as Basic auth
        netloc = f"{userinfo}@{netloc}" if userinfo else netloc
        path = self.parts.path or "/"
        query = f"?{self.parts.query}" if self.parts.query else ""
        return f"{self.scheme}://{netloc}:{self.port}{path}{query}"


def forbidden_reason(address: IPAddress) -> str | None:
    """Why a webhook may not go to `address` (None: it may). An IPv4 address written inside IPv6
    (::ffff:10.0.0.1, 6to4, Teredo) is judged as the IPv4 address it carries."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is None and address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return forbidden_reason(embedded)
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        # fec0::/10, deprecated site-local: Python still counts it as global.
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
    )
    for name, hit in checks:
        if hit:
            return name
    # Shared address space (100.64.0.0/10), documentation ranges and the like: not private,
    # not global either.
    return None if address.is_global else "not globally routable"


def parse_url(url: str) -> SplitResult:
    """The URL's parts, or UnsafeUrl for anything but an absolute http(s) URL with a host."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise UnsafeUrl("contains spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise UnsafeUrl(f"not a valid URL: {exc}") from exc
    if parts.scheme.lower() not in SCHEMES:
        raise UnsafeUrl("must be an http:// or https:// URL")
    if not parts.hostname:
        raise UnsafeUrl("has no host")
    if parts.port == 0:
        raise UnsafeUrl("port 0 cannot be called")
    return parts


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (an IP literal resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise Unresolvable(NOT_PUBLIC.format(host=host)) from exc
    found: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]  # an IPv6 scope (fe80::1%eth0) is not part of the address
        if address not in found:
            found.append(address)
    if not found:
        raise Unresolvable(NOT_PUBLIC.format(host=host))
    return found


def is_address_literal(host: str) -> bool:
    """True for an IP address in any form the resolver reads without DNS (2130706433, ::ffff:7f00:1)."""
    try:
        socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, OSError):
        return False
    return True


def check_url(url: str, *, allow_private: bool = False) -> CheckedUrl:
    """Parse, resolve and check `url`; UnsafeUrl says why it may not be called. With
    `allow_private` (NST_WEBHOOK_ALLOW_PRIVATE=1: tests, a trusted network) any address is fine."""
    parts = parse_url(url)
    scheme = parts.scheme.lower()
    try:
        # An internationalised name in its ASCII form: what DNS, the Host header and TLS use.
        host = (parts.hostname or "").lower().encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise UnsafeUrl("the host name is not valid") from exc
    port = parts.port or (443 if scheme == "https" else 80)
    addresses = resolve(host, port)
    if not allow_private:
        for address in addresses:
            reason = forbidden_reason(ipaddress.ip_address(address))
            if reason is None:
                continue
            if is_address_literal(host):  # the client wrote the address: naming its kind tells nothing new
                article = "an" if reason[0] in "aeiou" else "a"
                raise UnsafeUrl(f"it is {article} {reason} address; webhooks go to public addresses only")
            # A name: the same words whether it does not resolve or resolves somewhere private,
            # so the answer cannot be used to map the service's internal names.
            raise UnsafeUrl(NOT_PUBLIC.format(host=host))
    return CheckedUrl(url, scheme, host, port, tuple(addresses), parts)
