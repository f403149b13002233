"""The serve security policy (anger_stream/serve/security.py): tokens, Twilio signatures, allow-lists, TLS
contexts and the exposure warning, without sockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
import subprocess
from pathlib import Path

import pytest
from serve_support import self_signed_certificate
from websockets.datastructures import Headers

from anger_stream.serve.security import (
    Policy,
    exposure_warning,
    in_networks,
    parse_network,
    presented_token,
    signed_urls,
    tls_context,
    twilio_signature,
)

TOKEN = "s3cret-token-0123456789abcdef"
AUTH_TOKEN = "0123456789abcdef0123456789abcdef"


def twilio_sign(auth_token: str, url: str) -> str:
    """What Twilio sends for a WebSocket upgrade of `url`, computed here from Twilio's description
    (base64 of HMAC-SHA1 over the URL, keyed with the account's auth token; no parameters)."""
    return base64.b64encode(hmac.new(auth_token.encode(), url.encode(), hashlib.sha1).digest()).decode()


def test_twilio_signature_matches_twilios_documented_examples() -> None:
    # Twilio's example request: auth token 12345, this URL and these POST parameters. The two published
    # signatures (Twilio's security docs and the twilio-samples api-snippets) differ in the Caller/From numbers.
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Digits": "1234", "To": "+18005551212"}
    docs = {**params, "Caller": "+12349013030", "From": "+12349013030"}
    snippets = {**params, "Caller": "+14158675310", "From": "+14158675310"}
    assert twilio_signature("12345", url, docs) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert twilio_signature("12345", url, snippets) == "GvWf1cFY/Q7PnoempGyD5oXAezc="
    assert twilio_signature("12345", url) == twilio_sign("12345", url)


def upgrade(policy: Policy, path: str = "/media", **headers: str) -> tuple[int, str] | None:
    refusal = policy.refuse_upgrade(path, Headers({k.replace("_", "-"): v for k, v in headers.items()}))
    return None if refusal is None else (refusal.status, refusal.reason)


def test_twilio_signature_of_the_websocket_url_admits_the_upgrade() -> None:
    policy = Policy(twilio_auth_token=AUTH_TOKEN)
    host = "anger.example.com"
    assert upgrade(policy, Host=host, X_Twilio_Signature=twilio_sign(AUTH_TOKEN, f"wss://{host}/media")) is None
    # with and without the default port, as Twilio's own validators accept
    assert (
        upgrade(policy, Host=f"{host}:443", X_Twilio_Signature=twilio_sign(AUTH_TOKEN, f"wss://{host}/media")) is None
    )
    assert upgrade(policy, Host=host, X_Twilio_Signature=twilio_sign(AUTH_TOKEN, f"wss://{host}:443/media")) is None
    ported = f"{host}:8765"
    assert upgrade(policy, Host=ported, X_Twilio_Signature=twilio_sign(AUTH_TOKEN, f"wss://{ported}/media")) is None
    bad = {
        "another path": twilio_sign(AUTH_TOKEN, f"wss://{host}/other"),
        "another host": twilio_sign(AUTH_TOKEN, "wss://evil.example.com/media"),
        "another auth token": twilio_sign("f" * 32, f"wss://{host}/media"),
        "ws instead of wss": twilio_sign(AUTH_TOKEN, f"ws://{host}/media"),
        "garbage": "not base64 at all",
    }
    for what, signature in bad.items():
        assert upgrade(policy, Host=host, X_Twilio_Signature=signature) == (
            403,
            f"X-Twilio-Signature does not match wss://{host}/media",
        ), what
    assert upgrade(policy, Host=host) == (401, "no X-Twilio-Signature")
    assert signed_urls("[::1]", "/m") == ("wss://[::1]/m", "wss://[::1]:443/m")
    assert signed_urls("[::1]:8765", "/m") == ("wss://[::1]:8765/m", "wss://[::1]/m")


def test_shared_token_in_header_or_query() -> None:
    policy = Policy(token=TOKEN)
    assert upgrade(policy, Authorization=f"Bearer {TOKEN}") is None
    assert upgrade(policy, Authorization=f"bearer  {TOKEN} ") is None
    assert upgrade(policy, f"/media?call=7&token={TOKEN}") is None
    assert upgrade(policy, f"/media?token={TOKEN[:-1]}") == (403, "wrong token")
    assert upgrade(policy, Authorization=f"Bearer {TOKEN}x") == (403, "wrong token")
    assert upgrade(policy, Authorization=f"Basic {TOKEN}") == (401, "no token")
    assert upgrade(policy, "/media") == (401, "no token")
    assert presented_token("/m?token=a&token=b", Headers()) == "a"
    assert presented_token("/m?token=q", Headers({"Authorization": "Bearer h"})) == "h"


def test_either_credential_admits_when_both_are_configured() -> None:
    policy = Policy(token=TOKEN, twilio_auth_token=AUTH_TOKEN)
    signature = twilio_sign(AUTH_TOKEN, "wss://h/media")
    assert upgrade(policy, Host="h", X_Twilio_Signature=signature) is None
    assert upgrade(policy, Host="h", Authorization=f"Bearer {TOKEN}") is None
    assert upgrade(policy, Host="h") == (401, "no token or X-Twilio-Signature")
    assert upgrade(policy, f"/media?token={TOKEN}", Host="h", X_Twilio_Signature="x") is None
    assert upgrade(policy, "/media?token=nope", Host="h", X_Twilio_Signature="x") == (
        403,
        "wrong token; X-Twilio-Signature does not match wss://h/media",  # the query (a token) is not logged
    )


def test_credentials_that_serve_does_not_check() -> None:
    assert upgrade(Policy(), Authorization="Bearer whatever") is None  # no authentication configured
    signature_only = Policy(twilio_auth_token=AUTH_TOKEN)
    assert upgrade(signature_only, Host="h", Authorization=f"Bearer {TOKEN}") == (
        403,
        "a token, but serve has none (--token)",
    )


def test_secrets_stay_out_of_reprs_and_reasons() -> None:
    policy = Policy(token=TOKEN, twilio_auth_token=AUTH_TOKEN, allow=(parse_network("10.0.0.0/8"),))
    assert TOKEN not in repr(policy) and AUTH_TOKEN not in repr(policy)
    for path in ("/media", f"/media?token={TOKEN}x", f"/media?token={AUTH_TOKEN}"):
        for headers in ({}, {"X_Twilio_Signature": twilio_sign(AUTH_TOKEN, "wss://elsewhere/media")}):
            refusal = upgrade(policy, path, Host="h", **headers)
            assert refusal is not None and TOKEN not in refusal[1] and AUTH_TOKEN not in refusal[1]


def test_weak_or_empty_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        Policy(token="short")
    with pytest.raises(ValueError, match="empty"):
        Policy(twilio_auth_token=" ")


def test_allow_list() -> None:
    nets = (parse_network("10.0.0.0/8"), parse_network("192.0.2.7"), parse_network("2001:db8::/32"))
    assert [in_networks(h, nets) for h in ("10.1.2.3", "192.0.2.7", "192.0.2.8", "2001:db8::1", "::1")] == [
        True,
        True,
        False,
        True,
        False,
    ]
    assert in_networks("::ffff:10.9.9.9", nets)  # an IPv4 client of a dual-stack socket
    assert in_networks("fe80::1%eth0", (parse_network("fe80::/10"),))
    assert not in_networks("not-an-ip", nets) and not in_networks("", nets)
    assert Policy().admits("203.0.113.9") and not Policy(allow=nets).admits("203.0.113.9")
    for bad in ("10.0.0.0/33", "10.1.2.3/8", "example.com", ""):
        with pytest.raises(ValueError, match="expected a network such as"):
            parse_network(bad)


def test_exposure_warning() -> None:
    token, nets = Policy(token=TOKEN), Policy(allow=(parse_network("10.0.0.0/8"),))
    for protocol in ("audiosocket", "mediastream"):
        assert exposure_warning(protocol, "127.0.0.1", 1, Policy(), tls=False) is None
        assert exposure_warning(protocol, "localhost", 1, Policy(), tls=False) is None
        assert exposure_warning(protocol, "::1", 1, Policy(), tls=False) is None
    audio = exposure_warning("audiosocket", "0.0.0.0", 9092, token, tls=True)
    assert audio.startswith("WARNING: audiosocket on 0.0.0.0:9092 is reachable beyond this host without an allow-list")
    assert exposure_warning("audiosocket", "0.0.0.0", 9092, nets, tls=False) is None
    media = {
        (policy_name, tls): exposure_warning("mediastream", "0.0.0.0", 8765, policy, tls)
        for policy_name, policy in (("none", Policy()), ("token", token), ("allow", nets))
        for tls in (False, True)
    }
    assert "without authentication or TLS:" in media["none", False]
    assert "without authentication:" in media["none", True]
    assert "without TLS:" in media["token", False]
    assert media["token", True] is None
    assert "without authentication:" in media["allow", False]  # the allow-list keeps clear text to known networks


def test_tls_context(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    assert isinstance(tls_context(cert, key), ssl.SSLContext)
    both = tmp_path / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    assert isinstance(tls_context(both), ssl.SSLContext)  # the key in the certificate file
    encrypted = tmp_path / "encrypted.pem"
    subprocess.run(["openssl", "pkey", "-in", key, "-aes256", "-passout", "pass:x", "-out", encrypted], check=True)
    with pytest.raises(ValueError, match="the key is encrypted"):
        tls_context(cert, encrypted)  # refused, never prompted for
    with pytest.raises(ValueError, match="TLS certificate file not found"):
        tls_context(tmp_path / "missing.pem", key)
    with pytest.raises(ValueError, match="TLS key file not found"):
        tls_context(cert, tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="cannot load the TLS certificate"):
        tls_context(key, cert)
    with pytest.raises(ValueError, match="cannot load the TLS certificate"):
        tls_context(cert)  # no key in the certificate file
