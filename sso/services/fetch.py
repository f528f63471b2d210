"""SSRF-safe fetch of an IdP's metadata URL (SSO-F2).

https only; every address the name resolves to must be public (no loopback,
private, link-local, CGNAT, multicast, reserved or IPv4-mapped address), and
the connection goes to the address that was checked, so a DNS answer cannot
change between the check and the connect. At most 3 redirects, each checked
the same way; 5 s; 1 MiB. Never python3-saml's `parse_remote` (plain
urllib: follows redirects and `file://`).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from urllib.parse import urljoin, urlsplit

from portal.errors import ApplicationError
from portal.services.registry import audit_exempt
from sso.services.xmlcheck import MAX_METADATA_BYTES

TIMEOUT = 5.0
MAX_REDIRECTS = 3
CGNAT = ipaddress.ip_network("100.64.0.0/10")
# IANA's special-purpose ranges that are not globally reachable, listed here
# because `ipaddress` in Python < 3.11.10 gets some wrong (CVE-2024-4032:
# 192.0.0.0/24 counts as global in 3.11.7).
BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/96",
        "::ffff:0:0/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "2002::/16",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchRefused(ApplicationError):
    code = "metadata_fetch_refused"
    status = 400


@audit_exempt("pure: classifies an address")
def address_is_public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if any(ip in network for network in BLOCKED_NETWORKS):
        return False
    if ip in NAT64:
        # DNS64 maps IPv4-only hosts here: judge the embedded IPv4 address.
        return address_is_public(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    if isinstance(ip, ipaddress.IPv6Address):
        if (
            ip.ipv4_mapped is not None
            or ip.sixtofour is not None
            or ip.teredo is not None
        ):
            return False
    if ip.version == 4 and ip in CGNAT:
        return False
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def _resolve(host: str, port: int) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise FetchRefused(f"The name {host} does not resolve.") from None
    addresses = sorted({info[4][0] for info in infos})
    if not addresses:
        raise FetchRefused(f"The name {host} does not resolve.")
    for address in addresses:
        if not address_is_public(str(address)):
            raise FetchRefused(
                f"{host} resolves to {address}, which is not a public internet "
                "address. Metadata URLs must be reachable on the internet."
            )
    return str(addresses[0])


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connects to a checked IP while verifying the certificate for the name."""

    def __init__(
        self, host: str, address: str, port: int, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=TIMEOUT, context=context)
        self._address = address
        self._context = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


@audit_exempt("network read")
def metadata_fetch(url: str, *, context: ssl.SSLContext | None = None) -> bytes:
    """GET `url` under the SSRF rules; returns at most 1 MiB of body."""
    context = context or ssl.create_default_context()
    current = (url or "").strip()
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urlsplit(current)
        if parts.scheme != "https" or not parts.hostname:
            raise FetchRefused("Only https:// metadata URLs are fetched.")
        if parts.username or parts.password:
            raise FetchRefused("Metadata URLs may not carry credentials.")
        port = parts.port or 443
        host = parts.hostname
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        address = str(literal) if literal else _resolve(host, port)
        if literal and not address_is_public(address):
            raise FetchRefused(f"{host} is not a public internet address.")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        connection = _PinnedHTTPSConnection(host, address, port, context)
        try:
            connection.request(
                "GET",
                path,
                headers={
                    "User-Agent": "portal-saml-metadata/1",
                    "Accept": "application/xml",
                },
            )
            response = connection.getresponse()
            if response.status in {301, 302, 303, 307, 308}:
                location = response.getheader("Location") or ""
                current = urljoin(current, location)
                continue
            if response.status != 200:
                raise FetchRefused(f"The metadata URL answered HTTP {response.status}.")
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > MAX_METADATA_BYTES:
                raise FetchRefused("The metadata is larger than 1 MiB.")
            body = response.read(MAX_METADATA_BYTES + 1)
            if len(body) > MAX_METADATA_BYTES:
                raise FetchRefused("The metadata is larger than 1 MiB.")
            return body
        except (OSError, http.client.HTTPException) as exc:
            raise FetchRefused(
                f"The metadata URL could not be fetched: {exc}."
            ) from None
        finally:
            connection.close()
    raise FetchRefused(f"More than {MAX_REDIRECTS} redirects.")
