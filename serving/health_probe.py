"""Exit 0 when a gRPC server reports SERVING on grpc.health.v1 (Docker HEALTHCHECK, scripts).

It prints SERVING, the status the server gave instead (NOT_SERVING, ...), or what failed before
an answer: "cannot connect to ADDRESS: ...", "TLS handshake with ADDRESS failed: ...", "no answer
from ADDRESS within N s"; every outcome but SERVING exits 1.

`python -m serving.health_probe [--address 127.0.0.1:50051] [--tls | --tls-ca CA.pem] [--tls-name NAME] [--timeout 3]`

In a container the TLS settings can come from the environment, so the image's one HEALTHCHECK
serves a TLS server too: `CAPTCHA_HEALTH_TLS_CA` (the CA to trust, e.g. the server's own
self-signed certificate) and `CAPTCHA_HEALTH_TLS_NAME` (the name the certificate carries, when it
does not name 127.0.0.1).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


# Words in gRPC's reason for a failed TLS connection (handshake, certificate or host name check).
_TLS_WORDS = ("ssl", "tls", "handshake", "certificate", "verification")


def _failure(address: str, error: grpc.RpcError, timeout: float, service: str, tls: bool) -> str:
    """What went wrong, in words, when the health call got no answer."""
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {address} within {timeout:g} s"
    if code == grpc.StatusCode.UNAVAILABLE:
        if any(word in details.lower() for word in _TLS_WORDS):
            return f"TLS handshake with {address} failed: {details}"
        hint = " (a TLS server closes plaintext connections: add --tls or --tls-ca)" if not tls and "socket closed" in details.lower() else ""
        return f"cannot connect to {address}: {details}{hint}"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"{address} has no grpc.health.v1 service"
    if code == grpc.StatusCode.NOT_FOUND:
        return f"{address} reports no health for service {service!r}"
    return f"health check of {address} failed: {code.name}: {details}"


def probe(address: str, tls: bool = False, timeout: float = 3.0, service: str = "", tls_ca: str | None = None,
          tls_name: str | None = None) -> tuple[bool, str]:
    """(True, "SERVING") when `address` answers SERVING for `service` ("" = the whole server);
    else False and the status it answered, or what failed before an answer.

    `tls` trusts the system roots; `tls_ca` (implies TLS) trusts that PEM CA, e.g. a self-signed cert;
    `tls_name` (implies TLS) is the host name to check the certificate against instead of `address`'s.
    """
    tls = bool(tls or tls_ca or tls_name)
    if tls:
        creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes() if tls_ca else None)
        options = [("grpc.ssl_target_name_override", tls_name)] if tls_name else []
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return False, _failure(address, exc, timeout, service, tls)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def check(address: str, tls: bool = False, timeout: float = 3.0, service: str = "", tls_ca: str | None = None,
          tls_name: str | None = None) -> bool:
    """True when `address` answers SERVING for `service` (see `probe`)."""
    return probe(address, tls, timeout, service, tls_ca, tls_name)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gRPC health probe")
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--tls", action="store_true", help="TLS, trusting the system's root certificates")
    parser.add_argument("--tls-ca", default=os.environ.get("CAPTCHA_HEALTH_TLS_CA") or None,
                        help="PEM CA certificate to trust (implies --tls), e.g. the server's self-signed cert (default: $CAPTCHA_HEALTH_TLS_CA)")
    parser.add_argument("--tls-name", default=os.environ.get("CAPTCHA_HEALTH_TLS_NAME") or None,
                        help="host name the server's certificate carries, when it does not name --address's host (implies --tls; default: $CAPTCHA_HEALTH_TLS_NAME)")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.tls_ca and not Path(args.tls_ca).is_file():
        parser.error(f"--tls-ca {args.tls_ca}: no such file")
    ok, outcome = probe(args.address, args.tls, args.timeout, tls_ca=args.tls_ca, tls_name=args.tls_name)
    print(outcome)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
