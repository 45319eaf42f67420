"""Which side of a failed TLS handshake refused (docker_engine._tls_refusal): pure text logic on
OpenSSL's reasons as the SDK reports them; the handshakes themselves are made against a real TLS front
in tests/integration/test_swarm_tls.py."""

from __future__ import annotations

from pathlib import Path

from orchestrator.docker_engine import _tls_refusal

FILES = (Path("/etc/orch/ca.pem"), Path("/etc/orch/cert.pem"), Path("/etc/orch/key.pem"))
POOL = "HTTPSConnectionPool(host='127.0.0.1', port=2376): Max retries exceeded with url: /version "


def test_an_engine_certificate_tls_ca_did_not_sign_names_tls_ca_and_openssls_reason() -> None:
    exc = OSError(
        POOL
        + "(Caused by SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
        "verify failed: unable to get local issuer certificate (_ssl.c:1006)')))"
    )
    assert _tls_refusal(exc, FILES) == (
        "the engine's certificate did not verify against tls_ca /etc/orch/ca.pem: "
        "unable to get local issuer certificate"
    )


def test_a_client_certificate_the_engine_refused_names_tls_cert_never_the_key() -> None:
    exc = OSError(
        POOL + "(Caused by SSLError(SSLError(1, '[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca')))"
    )
    said = _tls_refusal(exc, FILES)
    assert said is not None and "refused the client certificate tls_cert /etc/orch/cert.pem" in said
    assert "TLS alert: unknown ca" in said and "key.pem" not in said


def test_anything_else_or_no_tls_is_left_to_the_caller() -> None:
    assert _tls_refusal(ConnectionRefusedError(111, "Connection refused"), FILES) is None
    assert _tls_refusal(OSError("[SSL: TLSV1_ALERT_UNKNOWN_CA]"), None) is None
