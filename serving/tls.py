"""Read and check the server's TLS certificate and key before gRPC sees them.

gRPC reports any problem with them as "Failed to bind to address", which points at a busy port.
`load_key_pair` reads both files with Python's `ssl` module first and names the file that is
wrong: missing, not PEM, an encrypted key, or a key that does not belong to the certificate.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def _read(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot read the file ({exc.strerror or exc})") from None


def _encrypted_key() -> bytes:
    raise ValueError("encrypted")


def load_key_pair(cert_path: str, key_path: str) -> tuple[bytes, bytes]:
    """(private key PEM, certificate chain PEM) for `grpc.ssl_server_credentials`; raises
    ValueError naming the flag and the file that is unusable."""
    cert, key = _read("--tls-cert", cert_path), _read("--tls-key", key_path)
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        raise ValueError(f"--tls-cert {cert_path}: no PEM certificate in it (expected a '-----BEGIN CERTIFICATE-----' block)")
    if b"PRIVATE KEY-----" not in key:
        raise ValueError(f"--tls-key {key_path}: no PEM private key in it (expected a '-----BEGIN ... PRIVATE KEY-----' block)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cadata=cert.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(f"--tls-cert {cert_path}: not a readable PEM certificate ({getattr(exc, 'reason', None) or exc})") from None
    try:
        context.load_cert_chain(cert_path, key_path, password=_encrypted_key)
    except ValueError:
        raise ValueError(f"--tls-key {key_path}: the key is encrypted; gRPC needs an unencrypted PEM key") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"--tls-key {key_path} does not belong to the certificate in --tls-cert {cert_path}") from None
        raise ValueError(f"--tls-key {key_path}: not a readable PEM private key ({exc.reason or exc})") from None
    return key, cert
