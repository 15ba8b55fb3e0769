"""`captcha serve` and `captcha client`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading


def _cmd_serve(args: argparse.Namespace) -> int:
    from captcha.options import config_from_args
    from serving.config import EXIT_AFTER_GRACE_S, ServeConfig

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    config = config_from_args(args, ServeConfig)
    config.check()  # before the heavy imports: an empty token, a bad limit
    from serving.server import exit_now
    from serving.supervisor import create_server

    server = create_server(config)
    try:
        server.start()
    except BaseException:
        server.stop(0).wait(5)
        raise

    def on_signal(signum, frame) -> None:
        print(f"received {signal.Signals(signum).name}; draining for up to {config.grace_s:g} s", file=sys.stderr, flush=True)
        server.stop()
        watchdog = threading.Timer(config.grace_s + EXIT_AFTER_GRACE_S, exit_now, args=(0,))  # whatever is still running
        watchdog.daemon = True
        watchdog.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    scheme = "TLS" if config.tls_cert else "plaintext"
    extra = f", metrics on http://{config.host}:{server.metrics_port}/metrics" if server.metrics_port else ""
    processes = server.config.processes
    print(f"captcha serve: {', '.join(n for n, _ in server.specs)} on {config.host}:{server.port} "
          f"({processes} process{'es' if processes > 1 else ''}, {scheme}{', token auth' if config.token else ''}{extra})", flush=True)
    server.wait()
    exit_now(0)  # threads still decoding past the grace are not waited for


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
    from captcha.options import add_options
    from serving.config import ServeConfig

    p = subparsers.add_parser("serve", help="serve exported ONNX models over gRPC (captcha.v1 + KServe v2)")
    add_options(p, ServeConfig)
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
