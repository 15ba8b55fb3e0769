"""One process of a multi-process server (`captcha serve --processes N`), run by `serving.supervisor`.

Started with "spawn", so it imports everything afresh and inherits no gRPC threads. It points
prometheus-client at the supervisor's metrics directory before anything imports it, loads and
warms its models, and only then binds the shared port (SO_REUSEPORT), so that a replacement for a
dead worker takes no call before it is ready. It then tells the supervisor "ready" through its
pipe and turns health SERVING when the supervisor answers "serve", which it does once every
worker is ready. The supervisor stops it with ("stop", grace) on the same pipe; SIGTERM or SIGINT
sent to the worker itself drain it with `--grace`; and when the pipe closes (the supervisor is
gone) it drains and exits too. However the stop comes, the process is gone within the grace and
`EXIT_MARGIN_S`, whatever is still decoding.
"""

from __future__ import annotations

import logging
import signal
import threading
from multiprocessing.connection import Connection

from serving.config import ServeConfig


def run(config: ServeConfig, slot: int, conn: Connection, metrics_dir: str) -> None:
    """The worker process's main function (the supervisor's `multiprocessing.Process` target)."""
    from serving.metrics import use_directory

    use_directory(metrics_dir)  # before prometheus_client is imported by the server's modules
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s %(name)s[worker {slot}]: %(message)s")
    from serving.config import EXIT_MARGIN_S
    from serving.server import CaptchaServer, exit_now

    holder: dict = {}

    def stop(grace: float) -> None:
        server = holder.get("server")
        if server is None:  # not listening yet: nothing to drain
            exit_now(0)
        server.stop(grace)
        timer = threading.Timer(grace + EXIT_MARGIN_S, exit_now, args=(0,))
        timer.daemon = True
        timer.start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop(config.grace_s))
    try:
        server = CaptchaServer(config, reuse_port=True, bind=False)
        lines = server.load_models()
        server.bind()
        server.listen()
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the supervisor as one line
        known = isinstance(exc, (ValueError, RuntimeError, OSError))
        try:
            conn.send(("error", str(exc) if known else f"{type(exc).__name__}: {exc}"))
        finally:
            exit_now(2)
    holder["server"] = server
    try:
        conn.send(("ready", lines))
    except OSError:  # the supervisor is gone already
        exit_now(0)
    threading.Thread(target=_follow_supervisor, args=(conn, server, stop), name="supervisor-pipe", daemon=True).start()
    server.wait()
    exit_now(0)


def _follow_supervisor(conn: Connection, server, stop) -> None:
    """Obey the supervisor's messages; its pipe closing means it is gone: stop."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            stop(server.config.grace_s)
            return
        if message == "serve":
            server.set_serving()
        elif isinstance(message, tuple) and message[0] == "stop":
            stop(message[1])
