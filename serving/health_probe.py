"""Exit 0 when a gRPC server reports SERVING on grpc.health.v1 (Docker HEALTHCHECK, scripts).

`python -m serving.health_probe [--address 127.0.0.1:50051] [--tls | --tls-ca CA.pem] [--timeout 3]`
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, tls: bool = False, timeout: float = 3.0, service: str = "", tls_ca: str | None = None) -> bool:
    """True when `address` answers SERVING for `service` ("" = the whole server).

    `tls` trusts the system roots; `tls_ca` (implies TLS) trusts that PEM CA, e.g. a self-signed cert.
    """
    if tls or tls_ca:
        creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes() if tls_ca else None)
        channel = grpc.secure_channel(address, creds)
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
    parser.add_argument("--tls-ca", help="PEM CA certificate to trust (implies --tls), e.g. the server's self-signed cert")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    ok = check(args.address, args.tls, args.timeout, tls_ca=args.tls_ca)
    print("SERVING" if ok else "NOT SERVING")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
