"""Exit 0 when a gRPC server reports SERVING on grpc.health.v1 (Docker HEALTHCHECK, scripts).

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


def check(address: str, tls: bool = False, timeout: float = 3.0, service: str = "", tls_ca: str | None = None,
          tls_name: str | None = None) -> bool:
    """True when `address` answers SERVING for `service` ("" = the whole server).

    `tls` trusts the system roots; `tls_ca` (implies TLS) trusts that PEM CA, e.g. a self-signed cert;
    `tls_name` (implies TLS) is the host name to check the certificate against instead of `address`'s.
    """
    if tls or tls_ca or tls_name:
        creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes() if tls_ca else None)
        options = [("grpc.ssl_target_name_override", tls_name)] if tls_name else []
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


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
    ok = check(args.address, args.tls, args.timeout, tls_ca=args.tls_ca, tls_name=args.tls_name)
    print("SERVING" if ok else "NOT SERVING")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
