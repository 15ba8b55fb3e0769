"""`captcha serve` and `captcha client`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys


def _cmd_serve(args: argparse.Namespace) -> int:
    from serving.server import CaptchaServer, ServeConfig

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    config = ServeConfig(
        models=args.models, host=args.host, port=args.port, device=args.device, max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms, max_queue=args.max_queue, workers=args.workers, preprocess_processes=args.preprocess_processes,
        ort_threads=args.ort_threads, token=args.token or os.environ.get("CAPTCHA_TOKEN") or None,
        tls_cert=args.tls_cert, tls_key=args.tls_key, metrics_port=args.metrics_port,
        max_message_mb=args.max_message_mb, grace_s=args.grace,
    )
    server = CaptchaServer(config)
    try:
        server.start()
    except BaseException:
        server.stop(0).wait(5)
        raise

    def on_signal(signum, frame) -> None:
        print(f"received {signal.Signals(signum).name}; draining for up to {config.grace_s:g} s", file=sys.stderr, flush=True)
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    scheme = "TLS" if config.tls_cert else "plaintext"
    extra = f", metrics on http://{config.host}:{server.metrics_port}/metrics" if server.metrics_port else ""
    print(f"captcha serve: {', '.join(n for n, _ in server.specs)} on {config.host}:{server.port} ({scheme}{', token auth' if config.token else ''}{extra})", flush=True)
    server.wait()
    return 0


def _cmd_client(args: argparse.Namespace) -> int:
    import grpc

    from captcha.imageio import ImageDecodeError, expand_image_paths, read_image_file
    from serving.client import RecognizerClient, open_channel, response_dict

    status = 0
    token = args.token or os.environ.get("CAPTCHA_TOKEN") or None
    paths, payloads = [], []
    limit = int(args.max_message_mb * 1024 * 1024) - 1024  # room for the message's other fields
    for path in expand_image_paths(args.images):
        try:  # a file over the limit, sent, would end the whole stream with RESOURCE_EXHAUSTED
            data = read_image_file(path, limit, "--max-message-mb, here and on the server")
        except ImageDecodeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        payloads.append(data)
        paths.append(path)
    with open_channel(args.address, args.tls_ca, args.tls, args.tls_name) as channel:
        client = RecognizerClient(channel, token, timeout=args.timeout)
        try:
            responses = client.recognize_stream(iter(payloads), args.model, timeout=args.timeout)
            for path, response in zip(paths, responses):
                if response.HasField("error"):
                    print(f"error: {path}: {response.error.message}", file=sys.stderr)
                    status = 1
                elif args.json:
                    print(json.dumps(response_dict(str(path), response)))
                else:
                    chars = " ".join(f"{c:.2f}" for c in response.char_confidences)
                    print(f"{path}\t{response.text}\t{response.confidence:.4f}\t[{chars}]")
        except grpc.RpcError as exc:
            raise RuntimeError(f"{args.address}: {exc.code().name}: {exc.details()}") from None
    return status


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `captcha serve` and `captcha client`."""
    p = subparsers.add_parser("serve", help="serve exported ONNX models over gRPC (captcha.v1 + KServe v2)")
    p.add_argument("models", nargs="+", metavar="MODEL.onnx", help="models to serve, as PATH or NAME=PATH; the first is the default")
    p.add_argument("--host", default="0.0.0.0", help="listen address for gRPC and metrics (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch one ONNX Runtime run takes")
    p.add_argument("--max-delay-ms", type=float, default=2.0, help="how long the batcher waits to fill a batch")
    p.add_argument("--max-queue", type=int, default=1024, help="queued images per model before RESOURCE_EXHAUSTED")
    p.add_argument("--workers", type=int, default=0, help="decode/preprocess threads for multi-image calls (default: CPU count)")
    p.add_argument("--preprocess-processes", type=int, default=0,
                   help="decode/preprocess RecognizeBatch and ModelInfer calls in this many processes (default 0: threads only)")
    p.add_argument("--ort-threads", type=int, default=0, help="ONNX Runtime intra-op threads (default: CPU count - 1, leaving a core to the event loop)")
    p.add_argument("--token", help="require `authorization: Bearer TOKEN` (default: $CAPTCHA_TOKEN)")
    p.add_argument("--tls-cert", help="PEM certificate chain (enables TLS)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this HTTP port")
    p.add_argument("--max-message-mb", type=float, default=4.0, help="largest request accepted")
    p.add_argument("--grace", type=float, default=10.0, help="seconds in-flight calls get on SIGTERM")
    p.set_defaults(func=_cmd_serve)

    p = subparsers.add_parser("client", help="recognize images through a running `captcha serve`")
    p.add_argument("images", nargs="+", help="image files or folders (the images directly in them)")
    p.add_argument("--address", default="127.0.0.1:50051")
    p.add_argument("--model", default="", help="served model name (default: the server's default)")
    p.add_argument("--token", help="bearer token (default: $CAPTCHA_TOKEN)")
    p.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    p.add_argument("--tls-ca", help="PEM CA certificate to trust (implies --tls)")
    p.add_argument("--tls-name", help="host name the server's certificate carries, when --address names it otherwise (implies --tls)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--json", action="store_true", help="one JSON object per line, as `captcha predict --json`")
    p.add_argument("--max-message-mb", type=float, default=4.0, help="skip (and name) larger files: the server's --max-message-mb (default 4)")
    p.set_defaults(func=_cmd_client)
