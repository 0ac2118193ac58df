"""The multi-core blinding engine of PSI runs: hash and blind, or re-blind, chunks of points.

A `BlindingPool` holds one side's secret for one run and maps streams of chunks to streams of
blinded chunks, in order, on worker processes::

    with BlindingPool(secret, domain) as pool:
        for blinded in pool.hash_and_blind(chunks_of_identifiers):
            send(blinded)

Why processes, not threads: X25519 from ``cryptography`` holds the GIL during ``exchange``.
Measured on the 2-core development machine, blinding 20,000 points took 33 us/point on one
thread and 35 us/point on two, so threads do not scale and each worker is a process.

Why plain subprocesses (``python -m cobrand.psi_worker``, see there), not ``multiprocessing``:
the pools run inside gRPC servers, whose threads make a plain fork unsafe, and the safe start
methods ("spawn", "forkserver") import the parent's main module again in every worker. Under
the ``cobrand`` command that is the whole command line with all it imports, torch included:
measured, a forkserver worker then costs 1.6 s of CPU and 280 MiB resident, against 0.09 s and
41 MiB for a subprocess that imports only the PSI primitives. A subprocess is started by fork
and exec (safe beside gRPC's threads), receives the secret once, down its own pipe, and exits
when that pipe closes, so it cannot outlive its pool, whatever ends the pool's process. Per
chunk, only packed point bytes (or length-prefixed identifiers) cross the pipes.

Memory stays bounded whatever the stream's length: at most ``max_in_flight`` chunks are
submitted and not yet consumed. The input is read by a feeder thread, so a finished chunk is
yielded even while the input waits (a peer that sends its next chunk only after receiving the
previous answer does not deadlock the stream). A pool serves one stream at a time. A stream
closed early (a client that disconnects) or failed stops the workers at once, so no CPU goes on
answers nobody reads; the pool starts fresh workers for its next stream.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from types import TracebackType
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cobrand import psi
from cobrand.errors import ConfigError, FailedPrecondition, InvalidPoint
from cobrand.psi_worker import (
    BLIND,
    HASH_AND_BLIND,
    INVALID_POINT,
    encode_identifiers,
    read_frame,
    write_frame,
)

__all__ = ["BlindingPool"]

Chunk = TypeVar("Chunk")


class _Worker:
    """One worker process: requests down its standard input, replies up its output, in order."""

    def __init__(self, secret: bytes, domain: bytes) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "cobrand.psi_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.pid = self._process.pid
        # Read by a thread as they come, so a worker never waits for the consumer to take an
        # earlier chunk's answer from another worker.
        self._replies: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        threading.Thread(target=self._read_replies, name="psi-pool-reader", daemon=True).start()
        self.send(secret + domain)

    def send(self, *parts: bytes) -> None:
        """Queue one request (from one thread at a time)."""
        assert self._process.stdin is not None
        try:
            write_frame(self._process.stdin, *parts)
        except (BrokenPipeError, ValueError):  # ValueError: the pipe was closed by `stop`
            raise self._died() from None

    def reply(self) -> bytes:
        """The next reply, in request order.

        Raises
        ------
        InvalidPoint
            If the chunk held a malformed or low-order point.
        ChildProcessError
            If the worker died.
        """
        reply = self._replies.get()
        if reply is None:
            raise self._died()
        if reply[:1] == INVALID_POINT:
            raise InvalidPoint(reply[1:].decode())
        return reply[1:]

    def stop(self) -> None:
        """End the process now (an idle one has nothing to lose, a busy one works for nobody)."""
        self._process.terminate()
        self._process.wait()
        assert self._process.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # a request the worker never read
            self._process.stdin.close()

    def _read_replies(self) -> None:
        assert self._process.stdout is not None
        with self._process.stdout as replies:
            try:
                while (reply := read_frame(replies)) is not None:
                    self._replies.put(reply)
            except EOFError:
                pass  # died mid-reply; `reply` tells the consumer
        self._replies.put(None)

    def _died(self) -> ChildProcessError:
        code = self._process.poll()
        status = "still running" if code is None else f"exit code {code}"
        return ChildProcessError(f"PSI blinding worker {self.pid} stopped answering ({status})")


class _EndOfInput:
    """Queued by the feeder after the last chunk, carrying the input's error if it failed."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class BlindingPool:
    """Hash-and-blind or re-blind streams of chunks with one run secret on all cores.

    Parameters
    ----------
    secret : bytes, 32 bytes
        This side's secret for the run (`cobrand.psi.new_secret`).
    domain : bytes
        The run's domain separation tag (`cobrand.psi.domain_tag`).
    workers : int, optional
        Worker processes; default ``os.cpu_count()``. ``0`` blinds in the calling process,
        for tests and tiny sets.
    max_in_flight : int, optional
        Most chunks submitted and not yet consumed; default four per worker.

    Use it as a context manager, or call `close`; both stop the workers.
    """

    def __init__(
        self,
        secret: bytes,
        domain: bytes,
        workers: int | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        workers = (os.cpu_count() or 1) if workers is None else workers
        if workers < 0:
            raise ConfigError(f"PSI workers must be 0 (in-process) or more, not {workers}")
        max_in_flight = 4 * max(workers, 1) if max_in_flight is None else max_in_flight
        if max_in_flight < 1:
            raise ConfigError(f"PSI max_in_flight must be 1 or more, not {max_in_flight}")
        X25519PrivateKey.from_private_bytes(secret)  # refuse a malformed secret here, not later
        self._secret = secret
        self._domain = domain
        self._worker_count = workers
        self._max_in_flight = max_in_flight
        self._workers: list[_Worker] = []
        self._streaming = threading.Lock()
        self._closed = False
        self._start_workers()

    def __enter__(self) -> BlindingPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers; the pool refuses new streams."""
        self._closed = True
        self._stop_workers()

    def hash_and_blind(self, chunks: Iterable[Sequence[str]]) -> Generator[bytes, None, None]:
        """Hash each chunk's canonical identifiers to points and blind them.

        Yields, in input order, one bytes per chunk: its points, 32 bytes each, in the order
        of its identifiers (``psi.blind(psi.hash_to_points(chunk, domain), secret)``).
        """
        return self._stream(
            chunks,
            lambda chunk: psi.blind(psi.hash_to_points(chunk, self._domain), self._secret),
            lambda worker, chunk: worker.send(HASH_AND_BLIND, encode_identifiers(chunk)),
        )

    def blind(self, chunks: Iterable[bytes]) -> Generator[bytes, None, None]:
        """Blind each chunk of packed points (``psi.blind(chunk, secret)``), in input order.

        Raises
        ------
        InvalidPoint
            When a chunk is truncated or holds a non-canonical or low-order point; the message
            names the chunk (from 0) and the point within it.
        """
        return self._stream(
            chunks,
            lambda chunk: psi.blind(chunk, self._secret),
            lambda worker, chunk: worker.send(BLIND, chunk),
        )

    def _stream(
        self,
        chunks: Iterable[Chunk],
        in_process: Callable[[Chunk], bytes],
        send: Callable[[_Worker, Chunk], None],
    ) -> Generator[bytes, None, None]:
        if self._closed:
            raise FailedPrecondition("the PSI blinding pool is closed; start a new one")
        if not self._worker_count:
            return _blind_in_process(chunks, in_process)
        return self._blind_in_workers(chunks, send)

    def _start_workers(self) -> None:
        self._workers = [_Worker(self._secret, self._domain) for _ in range(self._worker_count)]

    def _stop_workers(self) -> None:
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop()

    def _blind_in_workers(
        self, chunks: Iterable[Chunk], send: Callable[[_Worker, Chunk], None]
    ) -> Generator[bytes, None, None]:
        # Taken when the stream starts: two streams would take each other's replies.
        if not self._streaming.acquire(blocking=False):
            raise FailedPrecondition("the PSI blinding pool serves one stream at a time")
        try:
            if not self._workers:
                self._start_workers()
            yield from self._ordered_replies(chunks, send)
        finally:
            self._streaming.release()

    def _ordered_replies(
        self, chunks: Iterable[Chunk], send: Callable[[_Worker, Chunk], None]
    ) -> Generator[bytes, None, None]:
        workers = self._workers
        sent: queue.SimpleQueue[_Worker | _EndOfInput] = queue.SimpleQueue()
        slots = threading.Semaphore(self._max_in_flight)
        stopped = threading.Event()

        def feed() -> None:
            try:
                for index, chunk in enumerate(chunks):
                    slots.acquire()
                    if stopped.is_set():
                        return
                    worker = workers[index % len(workers)]
                    send(worker, chunk)
                    sent.put(worker)
            except BaseException as error:  # noqa: BLE001 -- handed to the consumer, raised there
                sent.put(_EndOfInput(error))
            else:
                sent.put(_EndOfInput())

        threading.Thread(target=feed, name="psi-pool-feeder", daemon=True).start()
        index = 0
        finished = False
        try:
            while not isinstance(item := sent.get(), _EndOfInput):
                try:
                    blinded = item.reply()
                except InvalidPoint as error:
                    raise _in_chunk(index, error) from None
                slots.release()
                index += 1
                yield blinded
            if item.error is not None:
                raise item.error
            finished = True
        finally:
            stopped.set()
            slots.release()  # wakes a feeder waiting for a slot, which then sees `stopped`
            if not finished:
                # Chunks still in the workers would answer the next stream: end them here.
                self._stop_workers()


def _blind_in_process(
    chunks: Iterable[Chunk], apply: Callable[[Chunk], bytes]
) -> Generator[bytes, None, None]:
    for index, chunk in enumerate(chunks):
        try:
            yield apply(chunk)
        except InvalidPoint as error:
            raise _in_chunk(index, error) from None


def _in_chunk(index: int, error: InvalidPoint) -> InvalidPoint:
    return InvalidPoint(f"chunk {index}: {error}")
