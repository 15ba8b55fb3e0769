"""A gRPC load generator in several processes, cheap per call so that the server is what is measured.

`LoadGenerator(clients, payloads)` keeps `clients` spawned processes; `measure(...)` splits the
calls in flight ("lanes") over them and returns images/s, latency percentiles, errors and the
client's own CPU time per image. Each lane has a connection of its own: a multi-process server
shares its port by connection (SO_REUSEPORT), so one connection would reach one process only.
Requests are serialised once, before the clock starts, and sent and received as raw bytes (no
protobuf work per call); every process starts at the same moment and stops at the same deadline,
and only calls answered before that deadline count.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

METHODS = {
    "unary": "/captcha.v1.Recognizer/Recognize",
    "batch": "/captcha.v1.Recognizer/RecognizeBatch",
    "stream": "/captcha.v1.Recognizer/RecognizeStream",
}
START_DELAY_S = 2.0  # time the client processes get to connect and warm up before the clock starts

_payloads: list[bytes] = []


@dataclass
class Load:
    address: str
    mode: str  # unary | batch | stream
    lanes: int  # calls (streams) this process keeps in flight
    batch: int  # images per RecognizeBatch call / per stream
    start_at: float  # time.time() when every process starts
    seconds: float
    first: int = 0  # where this process starts in the payloads
    token: str | None = None


def _set_payloads(payloads: list[bytes]) -> None:
    global _payloads
    _payloads = payloads


def run_client(load: Load) -> dict:
    """One client process's share of a measurement (a pool task)."""
    return asyncio.run(_client(load))


def _requests(load: Load) -> list[bytes]:
    from serving._proto.captcha.v1 import recognizer_pb2 as pb

    n = len(_payloads)
    if load.mode == "batch":
        return [pb.RecognizeBatchRequest(images=[_payloads[(i + j) % n] for j in range(load.batch)]).SerializeToString() for i in range(0, n, load.batch)]
    return [pb.RecognizeRequest(image=p, id=str(i)).SerializeToString() for i, p in enumerate(_payloads)]


async def _client(load: Load) -> dict:
    import grpc

    requests = _requests(load)
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    metadata = (("authorization", f"Bearer {load.token}"),) if load.token else None
    channels = [grpc.aio.insecure_channel(load.address, options=options) for _ in range(load.lanes)]
    unary = [ch.unary_unary(METHODS["unary"] if load.mode != "batch" else METHODS["batch"]) for ch in channels]
    stream = [ch.stream_stream(METHODS["stream"]) for ch in channels]
    await asyncio.gather(*(call(requests[0], timeout=60, metadata=metadata, wait_for_ready=True) for call in unary))  # connect + warm up
    latencies: list[float] = []
    images = errors = 0
    await asyncio.sleep(max(0.0, load.start_at - time.time()))
    deadline = time.perf_counter() + load.seconds
    cpu = time.process_time()

    async def lane(k: int) -> None:
        nonlocal images, errors
        i = load.first + k
        per_call = load.batch if load.mode != "unary" else 1
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                if load.mode == "stream":
                    call = stream[k](timeout=60, metadata=metadata)
                    sent = []
                    for j in range(load.batch):
                        sent.append(time.perf_counter())
                        await call.write(requests[(i + j) % len(requests)])
                    await call.done_writing()
                    j = 0
                    async for _reply in call:  # each reply counts on its own: a stream may outlast the deadline
                        answered = time.perf_counter()
                        latencies.append(answered - sent[j])
                        images += answered <= deadline
                        j += 1
                else:
                    await unary[k](requests[i % len(requests)], timeout=60, metadata=metadata)
                    answered = time.perf_counter()
                    latencies.append(answered - started)
                    images += per_call if answered <= deadline else 0
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            i += load.lanes * (per_call if load.mode == "stream" else 1)

    await asyncio.gather(*(lane(k) for k in range(load.lanes)))
    cpu = time.process_time() - cpu
    for ch in channels:
        await ch.close()
    return {"images": images, "errors": errors, "latencies": latencies, "cpu_s": cpu}


class LoadGenerator:
    """`clients` load-generating processes that keep `payloads` (encoded images)."""

    def __init__(self, clients: int, payloads: list[bytes]):
        self.clients = max(1, clients)
        self.pool = ProcessPoolExecutor(self.clients, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_set_payloads, initargs=(payloads,))
        self.payloads = len(payloads)

    def measure(self, address: str, mode: str, concurrency: int, seconds: float, batch: int = 16, token: str | None = None) -> dict:
        """Keep `concurrency` calls (streams) in flight for `seconds`; images/s, p50/p99 ms, errors."""
        if mode not in METHODS:
            raise ValueError(f"mode must be one of {', '.join(METHODS)}, not {mode!r}")
        start_at = time.time() + START_DELAY_S
        shares = [concurrency // self.clients + (c < concurrency % self.clients) for c in range(self.clients)]
        loads = [Load(address, mode, lanes, max(1, batch), start_at, seconds, first=c * self.payloads // self.clients, token=token)
                 for c, lanes in enumerate(shares) if lanes]
        parts = list(self.pool.map(run_client, loads))
        latencies = np.asarray([x for p in parts for x in p["latencies"]]) * 1000
        images = sum(p["images"] for p in parts)
        return {
            "images_per_s": images / seconds,
            "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else float("nan"),
            "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else float("nan"),
            "errors": sum(p["errors"] for p in parts),
            "client_cpu_ms_per_image": 1000 * sum(p["cpu_s"] for p in parts) / max(1, images),
        }

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "LoadGenerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
