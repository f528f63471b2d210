"""SSO-F2: the SSRF-safe metadata fetch and the daily metadata refresh.

A local HTTPS server (self-signed certificate for a made-up public name)
plays the IdP's metadata host. `sso.services.fetch` sees a fake `socket`
module: names resolve from a fixed table, and a connection may only go to
the one public address standing for the local server, which it is rewired
to. Any other connection attempt is recorded and fails, so nothing leaves
the machine and a refusal cannot pass because a connection failed.
"""

from __future__ import annotations

import ast
import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from django.contrib.messages import get_messages
from django.test import Client
from django_tenants.utils import tenant_context

from portal.models import AuditEvent, Member
from sso.models import CertificateSource, IdentityProvider, IdpCertificate
from sso.services import fetch, maintenance
from sso.services.config import idp_configure_from_metadata
from sso.services.fetch import FetchRefused, address_is_public, metadata_fetch
from tests.sso.conftest import CORP, SamlHarness, default_attrs
from tests.sso.fixtures.support import (
    FIXTURES,
    hostile_metadata_variants,
    loopback_listener,
    render_metadata,
    sibling_idp,
)
from tests.sso.idp import IDP_ID, TestIdP, cert_fingerprint

PUBLIC_NAME = "metadata.idp-public.test"
# A global unicast address standing for the local server; never contacted.
PUBLIC_ADDRESS = "93.184.215.14"
MIB = 1024 * 1024
REFRESH_URL = "https://idp.example.com/federationmetadata.xml"

DNS: dict[str, list[str]] = {
    PUBLIC_NAME: [PUBLIC_ADDRESS],
    "private.idp-public.test": ["10.0.0.1"],
    "cgnat.idp-public.test": ["100.100.1.1"],
    "mapped.idp-public.test": ["::ffff:93.184.215.14"],
    "mixed.idp-public.test": [PUBLIC_ADDRESS, "192.168.1.5"],
    "linklocal.idp-public.test": ["fe80::1"],
    "metadata-host.idp-public.test": ["169.254.169.254"],
    "2130706433": ["127.0.0.1"],  # glibc reads a decimal integer as IPv4
}

ClientMaker = Callable[..., Client]


# --------------------------------------------------------------------------
# The local metadata host


@dataclass
class MetadataHost:
    port: int
    context: ssl.SSLContext  # trusts the host's self-signed certificate
    body: bytes = b""
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Host)

    def url(self, path: str, name: str = PUBLIC_NAME) -> str:
        return f"https://{name}:{self.port}{path}"


def _self_signed(name: str) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    return (
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert.public_bytes(serialization.Encoding.PEM),
    )


def _handler(host: MetadataHost) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _send(self, body: bytes, *, length: bool = True) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/samlmetadata+xml")
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _flood(self, total: int, *, length: bool) -> None:
            self.send_response(200)
            if length:
                self.send_header("Content-Length", str(total))
            self.end_headers()
            chunk = b"<!-- " + b"x" * (64 * 1024 - 9) + b" -->"
            sent = 0
            try:
                while sent < total:
                    self.wfile.write(chunk)
                    sent += len(chunk)
            except OSError:
                pass  # the client stopped reading at 1 MiB

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path
            host.requests.append((path, self.headers.get("Host", "")))
            if path == "/metadata":
                self._send(host.body)
            elif path == "/metadata-unsized":
                self._send(host.body, length=False)
            elif path == "/to-loopback":
                self._redirect(f"https://127.0.0.1:{host.port}/metadata")
            elif path == "/to-loopback-v6":
                self._redirect(f"https://[::ffff:127.0.0.1]:{host.port}/metadata")
            elif path == "/to-private-name":
                self._redirect(f"https://private.idp-public.test:{host.port}/metadata")
            elif path == "/to-instance-metadata":
                self._redirect("https://169.254.169.254/latest/meta-data/")
            elif path == "/to-http":
                self._redirect(f"http://{PUBLIC_NAME}:{host.port}/metadata")
            elif path == "/to-file":
                self._redirect("file:///etc/passwd")
            elif path.startswith("/chain/"):
                left = int(path.rsplit("/", 1)[1])
                if left:
                    self._redirect(f"/chain/{left - 1}")
                else:
                    self._send(host.body)
            elif path == "/exactly-1mib":
                self._send(host.body.ljust(MIB, b" "))
            elif path == "/50mb":
                self._flood(50 * MIB, length=True)
            elif path == "/50mb-unsized":
                self._flood(50 * MIB, length=False)
            elif path == "/slow":
                time.sleep(1.0)
                self._send(host.body)
            else:
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # aborted TLS connections are expected here


@pytest.fixture(scope="module")
def metadata_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetadataHost]:
    key_pem, cert_pem = _self_signed(PUBLIC_NAME)
    directory = tmp_path_factory.mktemp("metadata-host")
    (directory / "key.pem").write_bytes(key_pem)
    (directory / "cert.pem").write_bytes(cert_pem)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    client_context = ssl.create_default_context(cadata=cert_pem.decode())
    server = _Server(("127.0.0.1", 0), BaseHTTPRequestHandler)
    host = MetadataHost(port=server.server_address[1], context=client_context)
    server.RequestHandlerClass = _handler(host)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield host
    server.shutdown()
    server.server_close()


@dataclass
class Network:
    """What the fetch tried: name lookups and connection targets."""

    lookups: list[str] = field(default_factory=list)
    connects: list[tuple[str, int]] = field(default_factory=list)


@pytest.fixture
def network(metadata_host: MetadataHost, monkeypatch: pytest.MonkeyPatch) -> Network:
    seen = Network()
    metadata_host.requests.clear()

    def getaddrinfo(host: str, port: int, *args: Any, **kw: Any) -> list[Any]:
        seen.lookups.append(host)
        if host not in DNS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in address else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (address, port),
            )
            for address in DNS[host]
        ]

    def create_connection(address: tuple[str, int], *args: Any, **kw: Any) -> Any:
        seen.connects.append(address)
        if address == (PUBLIC_ADDRESS, metadata_host.port):
            return socket.create_connection(("127.0.0.1", address[1]), *args, **kw)
        raise OSError(f"test network: no route to {address}")

    fake = types.SimpleNamespace(
        getaddrinfo=getaddrinfo,
        create_connection=create_connection,
        gaierror=socket.gaierror,
        SOCK_STREAM=socket.SOCK_STREAM,
    )
    monkeypatch.setattr(fetch, "socket", fake)
    return seen


@pytest.fixture(scope="module")
def idp_metadata(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return render_metadata("okta", tmp_path_factory.mktemp("okta"))[0]


# --------------------------------------------------------------------------
# The fetch


def test_fetch_connects_to_the_checked_address(
    metadata_host: MetadataHost, network: Network, idp_metadata: bytes
) -> None:
    metadata_host.body = idp_metadata

    body = metadata_fetch(metadata_host.url("/metadata"), context=metadata_host.context)

    assert body == idp_metadata
    assert network.lookups == [PUBLIC_NAME]
    assert network.connects == [(PUBLIC_ADDRESS, metadata_host.port)]
    # Certificate checked for the name, Host header for the name.
    assert metadata_host.requests == [
        ("/metadata", f"{PUBLIC_NAME}:{metadata_host.port}")
    ]


def test_fetch_verifies_the_server_certificate(
    metadata_host: MetadataHost, network: Network, idp_metadata: bytes
) -> None:
    metadata_host.body = idp_metadata

    with pytest.raises(FetchRefused, match="could not be fetched"):
        metadata_fetch(metadata_host.url("/metadata"))  # system CAs only


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "ftp://metadata.idp-public.test/metadata",
        "gopher://127.0.0.1:25/",
        "https://127.0.0.1/metadata",
        "https://localhost/metadata",
        "https://[::1]/metadata",
        "https://[::ffff:127.0.0.1]/metadata",
        "https://[::ffff:93.184.215.14]/metadata",  # mapped, even if public
        "https://[::ffff:7f00:1]/metadata",
        "https://[2002:7f00:1::1]/metadata",  # 6to4 of 127.0.0.1
        "https://100.64.0.1/metadata",
        "https://100.127.255.254/metadata",
        "https://10.0.0.1/metadata",
        "https://172.16.5.4/metadata",
        "https://192.168.1.1/metadata",
        "https://0.0.0.0/metadata",
        "https://224.0.0.251/metadata",
        "https://240.0.0.1/metadata",
        "https://[fe80::1]/metadata",
        "https://[fc00::1]/metadata",
        "https://[ff02::1]/metadata",
        "https://private.idp-public.test/metadata",  # resolves to 10.0.0.1
        "https://cgnat.idp-public.test/metadata",
        "https://mapped.idp-public.test/metadata",
        "https://mixed.idp-public.test/metadata",  # one private answer suffices
        "https://linklocal.idp-public.test/metadata",
        "https://metadata-host.idp-public.test/metadata",
        "https://2130706433/metadata",
        "https://unknown.idp-public.test/metadata",
        "https://user:secret@metadata.idp-public.test/metadata",
        "",
    ],
)
def test_refused_before_any_connection(url: str, network: Network) -> None:
    with pytest.raises(FetchRefused):
        metadata_fetch(url)

    assert network.connects == []


def test_name_resolving_to_private_address_is_named_in_the_message(
    network: Network,
) -> None:
    with pytest.raises(FetchRefused) as refused:
        metadata_fetch("https://private.idp-public.test/metadata")

    assert "10.0.0.1" in refused.value.message
    assert "not a public internet address" in refused.value.message


@pytest.mark.parametrize(
    "path",
    [
        "/to-loopback",
        "/to-loopback-v6",
        "/to-private-name",
        "/to-instance-metadata",
        "/to-http",
        "/to-file",
    ],
)
def test_each_redirect_is_checked_again(
    path: str, metadata_host: MetadataHost, network: Network, idp_metadata: bytes
) -> None:
    metadata_host.body = idp_metadata

    with pytest.raises(FetchRefused):
        metadata_fetch(metadata_host.url(path), context=metadata_host.context)

    # The first hop was served; the redirect target was never contacted.
    assert [p for p, _ in metadata_host.requests] == [path]
    assert network.connects == [(PUBLIC_ADDRESS, metadata_host.port)]


def test_three_redirects_pass_four_are_refused(
    metadata_host: MetadataHost, network: Network, idp_metadata: bytes
) -> None:
    metadata_host.body = idp_metadata

    assert (
        metadata_fetch(metadata_host.url("/chain/3"), context=metadata_host.context)
        == idp_metadata
    )
    metadata_host.requests.clear()
    with pytest.raises(FetchRefused, match="More than 3 redirects"):
        metadata_fetch(metadata_host.url("/chain/4"), context=metadata_host.context)
    assert [p for p, _ in metadata_host.requests] == [
        "/chain/4",
        "/chain/3",
        "/chain/2",
        "/chain/1",
    ]


@pytest.mark.parametrize("path", ["/50mb", "/50mb-unsized"])
def test_body_over_one_mib_is_refused(
    path: str, metadata_host: MetadataHost, network: Network, idp_metadata: bytes
) -> None:
    metadata_host.body = idp_metadata
    started = time.monotonic()

    with pytest.raises(FetchRefused, match="larger than 1 MiB"):
        metadata_fetch(metadata_host.url(path), context=metadata_host.context)

    assert time.monotonic() - started < 3


def test_body_of_exactly_one_mib_passes(
    metadata_host: MetadataHost, network: Network, idp_metadata: bytes
) -> None:
    metadata_host.body = idp_metadata

    body = metadata_fetch(
        metadata_host.url("/exactly-1mib"), context=metadata_host.context
    )

    assert len(body) == MIB
    assert (
        metadata_fetch(
            metadata_host.url("/metadata-unsized"), context=metadata_host.context
        )
        == idp_metadata
    )


def test_slow_server_times_out(
    metadata_host: MetadataHost,
    network: Network,
    idp_metadata: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert fetch.TIMEOUT == 5.0
    monkeypatch.setattr(fetch, "TIMEOUT", 0.2)
    metadata_host.body = idp_metadata

    with pytest.raises(FetchRefused, match="could not be fetched"):
        metadata_fetch(metadata_host.url("/slow"), context=metadata_host.context)


def test_error_status_is_refused(metadata_host: MetadataHost, network: Network) -> None:
    with pytest.raises(FetchRefused, match="HTTP 500"):
        metadata_fetch(metadata_host.url("/missing"), context=metadata_host.context)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("100.64.0.1", False),
        ("100.127.255.255", False),
        ("169.254.169.254", False),
        ("192.0.0.8", False),
        ("198.18.0.1", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("::", False),
        ("::1", False),
        ("::ffff:93.184.215.14", False),
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b::5db8:d70e", True),  # NAT64 of 93.184.215.14
        ("64:ff9b:1::5db8:d70e", False),  # local-use NAT64
        ("::7f00:1", False),  # IPv4-compatible (deprecated)
        ("2002:5db8:d70e::1", False),  # 6to4
        ("192.0.0.9", False),
        ("192.0.2.10", False),
        ("203.0.113.7", False),
        ("fe80::1%eth0", False),
        ("not an address", False),
        ("2001::1", False),  # Teredo
        ("fd00::1", False),
    ],
)
def test_address_is_public(address: str, public: bool) -> None:
    assert address_is_public(address) is public


def test_no_sso_code_calls_parse_remote_or_urlopen() -> None:
    """Never python3-saml's `parse_remote` (plain urllib, follows file://)."""
    root = Path(__file__).resolve().parents[2] / "sso"
    offenders = []
    for source in root.rglob("*.py"):
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            name = (
                node.attr
                if isinstance(node, ast.Attribute)
                else node.id
                if isinstance(node, ast.Name)
                else None
            )
            if name in {"parse_remote", "urlopen", "get_metadata"}:
                offenders.append(f"{source.name}:{getattr(node, 'lineno', 0)}")
    assert offenders == []


# --------------------------------------------------------------------------
# The page's metadata-URL action


def _flash(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_page_fetches_metadata_url_under_the_same_rules(
    tenant: Any,
    tenant_owner: Member,
    client_for: ClientMaker,
    metadata_host: MetadataHost,
    network: Network,
    idp_metadata: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metadata_host.body = idp_metadata
    monkeypatch.setattr(
        fetch.ssl, "create_default_context", lambda: metadata_host.context
    )
    owner = client_for(tenant_owner)

    refused = owner.post(
        "/sso/metadata-url/", {"url": metadata_host.url("/to-loopback")}
    )
    with tenant_context(tenant):
        assert not IdentityProvider.objects.exists()
    accepted = owner.post("/sso/metadata-url/", {"url": metadata_host.url("/metadata")})

    assert any("not a public internet address" in m for m in _flash(refused))
    assert _flash(accepted)[-1] == "Saved."
    with tenant_context(tenant):
        idp = IdentityProvider.objects.get()
        assert idp.entity_id == FIXTURES["okta"].entity_id
        assert idp.metadata_url == metadata_host.url("/metadata")
        assert idp.metadata_fetched_at is not None


@pytest.mark.parametrize(
    "variant",
    ["file_entity", "billion_laughs", "external_dtd", "external_parameter_entity"],
)
def test_fetched_metadata_with_a_dtd_is_refused(
    variant: str,
    tenant: Any,
    tenant_owner: Member,
    client_for: ClientMaker,
    metadata_host: MetadataHost,
    network: Network,
    idp_metadata: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        fetch.ssl, "create_default_context", lambda: metadata_host.context
    )
    with loopback_listener() as listener:
        variants = hostile_metadata_variants(idp_metadata.decode(), listener.url)
        metadata_host.body = variants[variant]
        response = client_for(tenant_owner).post(
            "/sso/metadata-url/", {"url": metadata_host.url("/metadata")}
        )

    assert [p for p, _ in metadata_host.requests] == ["/metadata"]  # fetched
    assert any("DOCTYPE" in m for m in _flash(response)), _flash(response)
    assert listener.connections == 0
    assert network.connects == [(PUBLIC_ADDRESS, metadata_host.port)]
    with tenant_context(tenant):
        assert not IdentityProvider.objects.exists()
        assert not IdpCertificate.objects.exists()


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data/", "file:///etc/passwd"]
)
def test_page_refuses_non_https_urls(
    url: str,
    tenant: Any,
    tenant_owner: Member,
    client_for: ClientMaker,
    network: Network,
) -> None:
    response = client_for(tenant_owner).post("/sso/metadata-url/", {"url": url})

    assert response.status_code == 302
    assert _flash(response)
    assert _flash(response)[-1] != "Saved."
    assert network.connects == []
    with tenant_context(tenant):
        assert not IdentityProvider.objects.exists()


# --------------------------------------------------------------------------
# The daily refresh: certificates are added, never removed


def fp(pem: str) -> str:
    return cert_fingerprint(pem).replace(":", "").lower()


def _serve(monkeypatch: pytest.MonkeyPatch, body: bytes | Exception) -> list[str]:
    fetched: list[str] = []

    def fake(url: str) -> bytes:
        fetched.append(url)
        if isinstance(body, Exception):
            raise body
        return body

    monkeypatch.setattr(maintenance, "metadata_fetch", fake)
    return fetched


def _sign_in(saml: SamlHarness, idp: TestIdP, email: str) -> int:
    client = saml.client()
    saml_response, relay = idp.answer(
        saml.start(client), email=email, attrs=default_attrs(email)
    )
    posted = saml.post(saml_response, relay or "")
    if posted.status_code != 303:
        return int(posted.status_code)
    return int(saml.finish(client, posted).status_code)


def _with_url(saml: SamlHarness, metadata: str) -> None:
    with tenant_context(saml.tenant):
        idp_configure_from_metadata(
            data=metadata.encode(), actor=None, metadata_url=REFRESH_URL
        )


def _fingerprints() -> dict[str, str]:
    return dict(IdpCertificate.objects.values_list("fingerprint", "source"))


def test_refresh_gaining_a_certificate_trusts_both(
    saml: SamlHarness,
    other_idp_keypair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _with_url(saml, saml.idp.metadata())
    second = sibling_idp(saml, other_idp_keypair)
    first_fp, second_fp = fp(saml.idp.cert_pem), fp(second.cert_pem)
    fetched = _serve(
        monkeypatch, saml.idp.metadata(extra_certs_pem=[second.cert_pem]).encode()
    )
    assert _sign_in(saml, second, f"bob@{CORP}") == 403  # not trusted yet

    with tenant_context(saml.tenant):
        diff = maintenance.idp_metadata_refresh()
        stored = IdentityProvider.objects.get()
        certs = _fingerprints()
        event = AuditEvent.objects.get(action="sso.metadata.refreshed")

    assert fetched == [REFRESH_URL]
    assert diff["added"] == [second_fp]
    assert diff["missing_from_metadata"] == []
    assert certs == {
        first_fp: CertificateSource.METADATA,
        second_fp: CertificateSource.REFRESH,
    }
    assert stored.metadata_refresh_diff == diff
    assert stored.metadata_refresh_error == ""
    assert event.changes["added"] == [second_fp]
    assert _sign_in(saml, saml.idp, f"alice@{CORP}") == 302
    assert _sign_in(saml, second, f"bob@{CORP}") == 302


def test_refresh_losing_a_certificate_keeps_it(
    saml: SamlHarness,
    other_idp_keypair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    second = sibling_idp(saml, other_idp_keypair)
    _with_url(saml, saml.idp.metadata(extra_certs_pem=[second.cert_pem]))
    first_fp, second_fp = fp(saml.idp.cert_pem), fp(second.cert_pem)
    _serve(monkeypatch, second.metadata().encode())  # cert 1 is gone

    with tenant_context(saml.tenant):
        version = IdentityProvider.objects.get().version
        last_event = AuditEvent.objects.order_by("-pk").first()
        diff = maintenance.idp_metadata_refresh()
        stored = IdentityProvider.objects.get()
        certs = _fingerprints()
        new_events = AuditEvent.objects.filter(
            pk__gt=last_event.pk if last_event else 0
        )
        assert [e.action for e in new_events] == ["sso.metadata.refreshed"]

    assert diff["added"] == []
    assert diff["missing_from_metadata"] == [first_fp]
    assert set(certs) == {first_fp, second_fp}
    assert stored.metadata_refresh_diff["missing_from_metadata"] == [first_fp]
    assert stored.version == version  # nothing changed that matters
    assert _sign_in(saml, saml.idp, f"alice@{CORP}") == 302
    assert _sign_in(saml, second, f"bob@{CORP}") == 302


def test_refresh_keeps_the_entity_id_and_reports_a_change(
    saml: SamlHarness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _with_url(saml, saml.idp.metadata())
    renamed = TestIdP(
        list(saml.idp._sp_metadata),  # noqa: SLF001
        saml.idp.key_file,
        saml.idp.cert_file,
        entity_id="https://impostor.test/metadata",
    )
    _serve(monkeypatch, renamed.metadata().encode())

    with tenant_context(saml.tenant):
        diff = maintenance.idp_metadata_refresh()
        assert IdentityProvider.objects.get().entity_id == IDP_ID

    assert diff["entity_id_changed"] == "https://impostor.test/metadata"
    assert _sign_in(saml, saml.idp, f"alice@{CORP}") == 302


def test_refresh_failure_is_recorded_and_changes_nothing(
    saml: SamlHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_url(saml, saml.idp.metadata())
    _serve(monkeypatch, FetchRefused("The metadata URL answered HTTP 503."))

    with tenant_context(saml.tenant):
        before = _fingerprints()
        result = maintenance.idp_metadata_refresh()
        stored = IdentityProvider.objects.get()
        failed = AuditEvent.objects.get(action="sso.metadata.refresh_failed")
        assert _fingerprints() == before

    assert "HTTP 503" in result["error"]
    assert "HTTP 503" in stored.metadata_refresh_error
    assert failed.changes["url"] == REFRESH_URL


def test_refresh_without_a_url_does_nothing(
    saml: SamlHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched = _serve(monkeypatch, b"")

    with tenant_context(saml.tenant):
        assert maintenance.idp_metadata_refresh() == {"skipped": True}

    assert fetched == []


def test_public_address_constant_is_global() -> None:
    assert ipaddress.ip_address(PUBLIC_ADDRESS).is_global
