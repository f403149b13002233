"""Who may use `anger-stream serve`: a shared token or Twilio's signature for a Media Streams upgrade, the client
networks allowed on either protocol, TLS for the WebSocket listener, and the warning for an exposed listener.

Pure functions and one `Policy`. The connections ask `Policy.admits(peer host)` as a connection arrives and
`Policy.refuse_upgrade(path, headers)` for a WebSocket upgrade. No secret appears in a message or a repr.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

TOKEN_ENV = "ANGER_STREAM_TOKEN"
TWILIO_ENV = "ANGER_STREAM_TWILIO_AUTH_TOKEN"
WEBHOOK_SECRET_ENV = "ANGER_STREAM_WEBHOOK_SECRET"
"""The shared secret that signs `serve --webhook` POSTs (webhook.py), unless --webhook-secret-file gives it."""
MIN_TOKEN = 16
"""Shortest shared token accepted (characters); `openssl rand -hex 32` makes a good one."""
SIGNATURE_HEADER = "X-Twilio-Signature"
MAX_URL = 200
"""Characters of the URL a refusal names (the path comes from the peer)."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(value: str) -> Network:
    """'10.0.0.0/8', '192.0.2.7' or '2001:db8::/32' -> the network; ValueError with a clear message otherwise."""
    try:
        return ipaddress.ip_network(value.strip())
    except ValueError as exc:
        raise ValueError(f"expected a network such as 10.0.0.0/8 or 192.0.2.7, got {value!r} ({exc})") from None


def peer_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address as an IP (an IPv4-mapped IPv6 address as IPv4, a scope dropped); None if not an IP."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def in_networks(host: str, networks: Iterable[Network]) -> bool:
    """Whether the peer address `host` lies in one of `networks`."""
    ip = peer_ip(host)
    return ip is not None and any(ip in net for net in networks)


def is_loopback(host: str) -> bool:
    """Whether every address `host` resolves to (for listening) is a loopback address."""
    try:
        infos = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    return all((ip := peer_ip(str(info[4][0]))) is not None and ip.is_loopback for info in infos)


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of a presented secret with the expected one."""
    return hmac.compare_digest(given.encode(), expected.encode())


def presented_token(path: str, headers: Mapping[str, str]) -> str | None:
    """The token of an upgrade request: `Authorization: Bearer <token>`, else the query parameter `token`."""
    scheme, _, credentials = (headers.get("Authorization") or "").strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    tokens = parse_qs(urlsplit(path).query).get("token")
    return tokens[0] if tokens else None


SESSION_COOKIE = "anger_stream_session"
"""The supervisor's page's cookie, set by its sign-in form (`session_cookie`)."""


def session_value(token: str) -> str:
    """What the page's cookie holds: derived from the token (HMAC-SHA256), so the cookie never carries the token
    itself and stops working when the token changes."""
    return hmac.new(token.encode(), b"anger-stream dashboard session", hashlib.sha256).hexdigest()


def session_cookie(token: str, secure: bool) -> str:
    """The Set-Cookie value that signs a browser in to the page: out of reach of scripts (HttpOnly), never
    sent with a request from another site (SameSite=Strict), over TLS only if `secure` (behind a TLS proxy)."""
    return f"{SESSION_COOKIE}={session_value(token)}; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")


def signed_in(path: str, headers: Mapping[str, str], token: str) -> bool:
    """Whether a request to the page presents the token (`presented_token`) or the page's cookie."""
    if (given := presented_token(path, headers)) is not None:
        return same_secret(given, token)
    cookies = SimpleCookie()
    try:
        cookies.load(headers.get("Cookie") or "")
    except CookieError:
        return False
    morsel = cookies.get(SESSION_COOKIE)
    return morsel is not None and same_secret(morsel.value, session_value(token))


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """Twilio's request signature: base64 HMAC-SHA1, keyed with the auth token, of the URL followed by each
    parameter's name and value in name order (a WebSocket upgrade has no parameters)."""
    data = url + "".join(name + value for name, value in sorted((params or {}).items()))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def signed_urls(host: str, path: str) -> tuple[str, str]:
    """The URLs Twilio may have signed for an upgrade of `path` with the `Host` header `host`: Twilio connects
    streams over wss only, and like its own validators we accept the URL with and without the port."""
    name, sep, port = host.rpartition(":")
    if not sep or "]" in port or not port.isdigit():  # no port (a bare IPv6 address has colons too)
        return f"wss://{host}{path}", f"wss://{host}:443{path}"
    return f"wss://{host}{path}", f"wss://{name}{path}"


def valid_twilio_signature(auth_token: str, host: str, path: str, signature: str) -> bool:
    return any(same_secret(twilio_signature(auth_token, url), signature) for url in signed_urls(host, path))


@dataclass(frozen=True)
class Refusal:
    """Why an upgrade is refused: the HTTP status (401 nothing presented, 403 wrong) and a reason for the log."""

    status: int
    reason: str


@dataclass(frozen=True)
class Policy:
    """What `serve` requires of clients. With a token and a Twilio auth token, either one admits an upgrade
    (Twilio cannot send a token: its stream URLs take no query string and it sends no custom header)."""

    token: str | None = field(default=None, repr=False)
    twilio_auth_token: str | None = field(default=None, repr=False)
    allow: tuple[Network, ...] = ()

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token) < MIN_TOKEN:
            raise ValueError(f"the token must have at least {MIN_TOKEN} characters (e.g. `openssl rand -hex 32`)")
        if self.twilio_auth_token is not None and not self.twilio_auth_token.strip():
            raise ValueError("the Twilio auth token is empty")

    @property
    def authenticates(self) -> bool:
        """Whether a WebSocket upgrade must present a credential."""
        return self.token is not None or self.twilio_auth_token is not None

    def admits(self, peer_host: str) -> bool:
        """Whether a connection from `peer_host` may proceed (the allow-list, when there is one)."""
        return not self.allow or in_networks(peer_host, self.allow)

    def refuse_upgrade(self, path: str, headers: Mapping[str, str]) -> Refusal | None:
        """None if the upgrade request may proceed, else why not. `headers` must look names up
        case-insensitively (as websockets' `Headers` does)."""
        if not self.authenticates:
            return None
        token, signature = presented_token(path, headers), headers.get(SIGNATURE_HEADER)
        if self.token is not None and token is not None and same_secret(token, self.token):
            return None
        host = headers.get("Host") or ""
        if (
            self.twilio_auth_token is not None
            and signature is not None
            and valid_twilio_signature(self.twilio_auth_token, host, path, signature)
        ):
            return None
        if token is None and signature is None:
            wanted = [what for what, secret in (("token", self.token), (SIGNATURE_HEADER, self.twilio_auth_token))
                      if secret is not None]  # fmt: skip
            return Refusal(401, f"no {' or '.join(wanted)}")
        reasons = []
        if token is not None:
            reasons.append("wrong token" if self.token is not None else "a token, but serve has none (--token)")
        if signature is not None:
            url = signed_urls(host, urlsplit(path)._replace(query="").geturl())[0]
            reasons.append(
                f"{SIGNATURE_HEADER} does not match {url if len(url) <= MAX_URL else url[:MAX_URL] + '...'}"
                if self.twilio_auth_token is not None
                else f"{SIGNATURE_HEADER}, but serve has no Twilio auth token (--twilio-auth-token)"
            )
        return Refusal(403, "; ".join(reasons))


def tls_context(cert: Path, key: Path | None = None) -> ssl.SSLContext:
    """A server TLS context from a PEM certificate (chain) and key (default: the key in the certificate file);
    ValueError with a clear message if they cannot be loaded. An encrypted key is refused, not prompted for."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2

    def no_passphrase() -> bytes:
        raise ValueError("the key is encrypted: give a key without a passphrase")

    for what, path in (("certificate", cert), ("key", key or cert)):
        if not path.is_file():
            raise ValueError(f"TLS {what} file not found: {path}")
    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except (ssl.SSLError, OSError) as exc:  # SSLError first: it is an OSError too
        reason = getattr(exc, "reason", None) or "not a PEM certificate and its private key"
        raise ValueError(f"cannot load the TLS certificate {cert} with the key {key or cert}: {reason}") from None
    return context


def exposure_warning(protocol: str, host: str, port: int, policy: Policy, tls: bool) -> str | None:
    """The warning for a listener reachable beyond this host without protection, or None.

    AudioSocket has no authentication of its own: it needs an allow-list. Media Streams needs a token or the
    Twilio signature, and TLS unless an allow-list keeps its clear text to known networks (a TLS proxy's)."""
    if is_loopback(host):
        return None
    if protocol == "audiosocket":
        if policy.allow:
            return None
        missing, see = "an allow-list (AudioSocket has no authentication)", "--allow"
    else:
        lacks = [
            *(["authentication"] if not policy.authenticates else []),
            *(["TLS"] if not tls and not policy.allow else []),
        ]
        if not lacks:
            return None
        missing, see = " or ".join(lacks), "--token, --twilio-auth-token, --tls-cert, --allow"
    return (
        f"WARNING: {protocol} on {host}:{port} is reachable beyond this host without {missing}: "
        f"anyone who reaches the port can send calls (see {see})"
    )
