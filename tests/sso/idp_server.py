"""`TestIdP` served over HTTP on loopback, for real-browser tests (§4).

`start_idp_server(idp, attrs_for_email)` binds 127.0.0.1 on a free port,
moves the IdP's endpoints there (`idp.rebase`; the entityID stays) and
serves, from a daemon thread:

* `GET /metadata`: the IdP metadata (`idp.metadata()`).
* `GET /favicon.ico`: 204 (keeps browser consoles quiet).
* `GET /sso?SAMLRequest&RelayState&SigAlg&Signature`: verifies the signed
  AuthnRequest (400 if that fails), then a login page: a form with an
  `email` field (`#email`) and the page's only "Sign in" text, its submit
  button.
* `POST /sso` (`SAMLRequest`, `RelayState`): the HTTP-POST binding; the
  AuthnRequest must carry a valid enveloped signature and Destination
  `<base_url>/sso` (400 otherwise); then the same login page. Serve
  metadata with `sso_bindings=(BINDING_HTTP_POST,)` to make an SP use it.
* `POST /sso/login` (`t`, `email`): an auto-submitting POST form
  (`SAMLResponse`, `RelayState`) to the ACS that the AuthnRequest named,
  InResponseTo set; a used or unknown `t` gets 400.
* `GET /idp-initiated?acs&sp&email[&relay]`: the same form for an
  unsolicited Response (no InResponseTo).
* `GET /slo?SAMLRequest...`: verifies the SP's LogoutRequest (400 if that
  fails), then 303 to the SP's SLS with a signed LogoutResponse.
* `GET /slo?SAMLResponse...`: the SP's answer to an IdP-initiated logout,
  checked and recorded, then a "Signed out" page.
* `GET /idp-logout?sls&name_id[&session_index][&relay]`: 303 to the SP's
  SLS with a signed IdP-initiated LogoutRequest.

Every handled message is appended to `idp.events` as a dict with a `kind`
(`authn_request`, `authn_request_rejected`, `response`,
`logout_request`, `logout_request_rejected`, `logout_response`,
`idp_logout`) plus IDs and outcome, so tests can assert what the IdP saw;
a `response` event carries the AuthnStatement's `session_index` (random
unless `response_kwargs` fixes one), for IdP-initiated logout.
The pages are the IdP's own, so the auto-submit uses an inline script (and
a button inside `<noscript>`); they send no CSP.
"""

from __future__ import annotations

import html
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from saml2 import BINDING_HTTP_POST

from tests.sso.idp import AuthnRequestInfo, TestIdP, post_form

Attrs = Mapping[str, Sequence[str]] | Sequence[tuple[str, Sequence[str]]]
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # Chromium opens speculative connections; one thread per connection
    # keeps an idle one from blocking the rest.
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def _page(title: str, body: str) -> bytes:
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>\n<body>\n{body}\n</body></html>"
    ).encode()


def _auto_post(action: str, fields: Mapping[str, str | None]) -> bytes:
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
        for name, value in fields.items()
        if value is not None
    )
    body = (
        f'<form method="post" action="{html.escape(action)}">{inputs}'
        '<noscript><button type="submit">Continue</button></noscript></form>\n'
        "<script>document.forms[0].submit();</script>"
    )
    return _page("Continue to the service", body)


class IdPApp:
    """The WSGI application; one lock serialises every use of the IdP."""

    def __init__(
        self,
        idp: TestIdP,
        attrs_for_email: Callable[[str], Attrs],
        response_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.idp = idp
        self.attrs_for_email = attrs_for_email
        self.response_kwargs = dict(response_kwargs or {})
        self.pending: dict[str, AuthnRequestInfo] = {}
        self.lock = threading.Lock()

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        query_string = environ.get("QUERY_STRING", "")
        url = f"{self.idp.base_url}{path}?{query_string}"
        query = {k: v[0] for k, v in parse_qs(query_string).items()}
        with self.lock:
            if method == "GET" and path == "/favicon.ico":
                # Browsers ask for it on every new origin; a 404 here would
                # only add noise to the console of the page under test.
                return self._send(start_response, "204 No Content", b"", "image/x-icon")
            if method == "GET" and path == "/metadata":
                return self._send(
                    start_response,
                    "200 OK",
                    self.idp.metadata().encode(),
                    "application/samlmetadata+xml",
                )
            if method == "GET" and path == "/sso":
                return self._sso(start_response, url)
            if method == "POST" and path == "/sso":
                return self._sso_post(start_response, self._form(environ))
            if method == "POST" and path == "/sso/login":
                return self._login(start_response, self._form(environ))
            if method == "GET" and path == "/idp-initiated":
                return self._idp_initiated(start_response, query)
            if method == "GET" and path == "/slo":
                return self._slo(start_response, url, query)
            if method == "GET" and path == "/idp-logout":
                return self._idp_logout(start_response, query)
        return self._send(start_response, "404 Not Found", b"not found", "text/plain")

    @staticmethod
    def _form(environ: dict[str, Any]) -> dict[str, str]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length).decode()
        return {k: v[0] for k, v in parse_qs(body).items()}

    @staticmethod
    def _send(
        start_response: StartResponse,
        status: str,
        body: bytes,
        content_type: str = "text/html; charset=utf-8",
        headers: Sequence[tuple[str, str]] = (),
    ) -> list[bytes]:
        start_response(
            status,
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                *headers,
            ],
        )
        return [body]

    def _redirect(self, start_response: StartResponse, location: str) -> list[bytes]:
        return self._send(
            start_response, "303 See Other", b"", "text/plain", [("Location", location)]
        )

    def _sso(self, start_response: StartResponse, url: str) -> list[bytes]:
        try:
            info = self.idp.parse_authn_request_url(url)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            return self._reject_authn_request(start_response, exc)
        return self._login_page(start_response, info)

    def _sso_post(
        self, start_response: StartResponse, form: Mapping[str, str]
    ) -> list[bytes]:
        """HTTP-POST binding: the signature is enveloped in the XML."""
        try:
            info = self._parse_posted_authn_request(form)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            return self._reject_authn_request(start_response, exc)
        return self._login_page(start_response, info, binding="post")

    def _parse_posted_authn_request(self, form: Mapping[str, str]) -> AuthnRequestInfo:
        if "SAMLRequest" not in form:
            raise ValueError("no SAMLRequest in the form")
        request = self.idp.server.parse_authn_request(
            form["SAMLRequest"], BINDING_HTTP_POST
        )
        if request is None:
            raise ValueError("pysaml2 rejected the AuthnRequest")
        message = request.message
        if message.signature is None:
            raise ValueError("the posted AuthnRequest is not signed")
        # The IdP's config lists only the Redirect endpoint, so pysaml2
        # checks no Destination for POST: do it here.
        if message.destination != self.idp.sso_url:
            raise ValueError(f"Destination {message.destination!r} is not this IdP")
        args = self.idp.server.response_args(message, [BINDING_HTTP_POST])
        policy = message.name_id_policy
        return AuthnRequestInfo(
            id=message.id,
            sp_id=args["sp_entity_id"],
            acs=args["destination"],
            binding=args["binding"],
            relay_state=form.get("RelayState"),
            name_id_format=None if policy is None else policy.format,
            force_authn=str(message.force_authn).lower() == "true",
            xml=str(request.xmlstr),
        )

    def _reject_authn_request(
        self, start_response: StartResponse, exc: Exception
    ) -> list[bytes]:
        self.idp.events.append({"kind": "authn_request_rejected", "error": repr(exc)})
        return self._send(
            start_response,
            "400 Bad Request",
            _page("Rejected", "<p>AuthnRequest rejected.</p>"),
        )

    def _login_page(
        self,
        start_response: StartResponse,
        info: AuthnRequestInfo,
        binding: str = "redirect",
    ) -> list[bytes]:
        token = secrets.token_urlsafe(16)
        self.pending[token] = info
        self.idp.events.append(
            {
                "kind": "authn_request",
                "binding": binding,
                "id": info.id,
                "sp_id": info.sp_id,
                "acs": info.acs,
                "relay_state": info.relay_state,
            }
        )
        body = (
            "<h1>Test IdP</h1>\n"
            f"<p>Service provider: {html.escape(info.sp_id)}</p>\n"
            '<form method="post" action="/sso/login">'
            f'<input type="hidden" name="t" value="{token}">'
            '<label for="email">Email</label> '
            '<input type="email" name="email" id="email" required autofocus> '
            '<button type="submit">Sign in</button></form>'
        )
        return self._send(start_response, "200 OK", _page("Test IdP login", body))

    def _respond(
        self,
        start_response: StartResponse,
        *,
        sp_id: str,
        acs: str,
        email: str,
        in_response_to: str | None,
        relay_state: str | None,
    ) -> list[bytes]:
        kwargs = dict(self.response_kwargs)
        session_index = kwargs.pop("session_index", None) or (
            f"_session-{secrets.token_hex(8)}"
        )
        xml = self.idp.response(
            sp_id=sp_id,
            acs=acs,
            email=email,
            attrs=self.attrs_for_email(email),
            in_response_to=in_response_to,
            session_index=session_index,
            **kwargs,
        )
        self.idp.events.append(
            {
                "kind": "response",
                "sp_id": sp_id,
                "acs": acs,
                "email": email,
                "in_response_to": in_response_to,
                "session_index": session_index,
                "relay_state": relay_state,
            }
        )
        fields = {"SAMLResponse": post_form(xml), "RelayState": relay_state}
        return self._send(start_response, "200 OK", _auto_post(acs, fields))

    def _login(
        self, start_response: StartResponse, form: Mapping[str, str]
    ) -> list[bytes]:
        info = self.pending.pop(form.get("t", ""), None)
        email = form.get("email", "")
        if info is None or not email:
            return self._send(
                start_response,
                "400 Bad Request",
                _page("Rejected", "<p>Unknown or used login.</p>"),
            )
        return self._respond(
            start_response,
            sp_id=info.sp_id,
            acs=info.acs,
            email=email,
            in_response_to=info.id,
            relay_state=info.relay_state,
        )

    def _idp_initiated(
        self, start_response: StartResponse, query: Mapping[str, str]
    ) -> list[bytes]:
        if not all(query.get(k) for k in ("acs", "sp", "email")):
            return self._send(
                start_response, "400 Bad Request", b"acs, sp, email", "text/plain"
            )
        return self._respond(
            start_response,
            sp_id=query["sp"],
            acs=query["acs"],
            email=query["email"],
            in_response_to=None,
            relay_state=query.get("relay"),
        )

    def _slo(
        self, start_response: StartResponse, url: str, query: Mapping[str, str]
    ) -> list[bytes]:
        if "SAMLResponse" in query:
            info = self.idp.parse_logout_response(url, require_signature=False)
            self.idp.events.append(
                {
                    "kind": "logout_response",
                    "id": info.id,
                    "in_response_to": info.in_response_to,
                    "expected_in_response_to": self.idp.last_logout_request_id,
                    "status": info.status,
                    "signed": info.signed,
                }
            )
            body = f"<h1>Signed out</h1><p>{html.escape(info.status or '')}</p>"
            return self._send(start_response, "200 OK", _page("Signed out", body))
        try:
            request = self.idp.parse_logout_request(url)
            location = self.idp.logout_response(url)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            self.idp.events.append(
                {"kind": "logout_request_rejected", "error": repr(exc)}
            )
            return self._send(
                start_response,
                "400 Bad Request",
                _page("Rejected", "<p>LogoutRequest rejected.</p>"),
            )
        self.idp.events.append(
            {
                "kind": "logout_request",
                "id": request.id,
                "issuer": request.issuer,
                "name_id": request.name_id,
                "session_indexes": request.session_indexes,
            }
        )
        return self._redirect(start_response, location)

    def _idp_logout(
        self, start_response: StartResponse, query: Mapping[str, str]
    ) -> list[bytes]:
        if not query.get("sls") or not query.get("name_id"):
            return self._send(
                start_response, "400 Bad Request", b"sls, name_id", "text/plain"
            )
        location = self.idp.logout_request(
            sp_sls_url=query["sls"],
            name_id=query["name_id"],
            session_index=query.get("session_index"),
            relay_state=query.get("relay"),
        )
        self.idp.events.append(
            {"kind": "idp_logout", "id": self.idp.last_logout_request_id}
        )
        return self._redirect(start_response, location)


def start_idp_server(
    idp: TestIdP,
    attrs_for_email: Callable[[str], Attrs],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    response_kwargs: Mapping[str, Any] | None = None,
) -> tuple[str, Callable[[], None]]:
    """Serve `idp` on `http://<host>:<port>`; return (base_url, stop).

    `port=0` picks a free port. The IdP is rebased onto the served URL
    before the first request, so take `idp.metadata()` (or its sso_url and
    slo_url) after this call. `attrs_for_email(email)` supplies the
    attributes of each Response; `response_kwargs` are passed to every
    `idp.response()` (e.g. `{"encrypt": "gcm"}`). `stop()` shuts the server
    down and closes its socket; call it in a `finally` or fixture teardown.
    """
    app = IdPApp(idp, attrs_for_email, response_kwargs)
    server = make_server(
        host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    base_url = f"http://{host}:{server.server_port}"
    idp.rebase(base_url)
    thread = threading.Thread(target=server.serve_forever, name="test-idp", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return base_url, stop
