"""A blinding worker process of `cobrand.psi_pool`, and the frames it speaks with its pool.

The pool starts each worker as ``python -m cobrand.psi_worker`` and talks to it over its
standard input and output in frames (a 4-byte big-endian length, then the body):

- the first request holds the run's secret (32 bytes) followed by the domain separation tag;
- each later request is a kind byte and a payload: ``H`` and identifiers (`encode_identifiers`)
  to hash and blind, or ``B`` and packed points to blind;
- each reply, in request order, is ``0`` and the packed blinded points, or ``1`` and the
  message of the `InvalidPoint` the chunk raised.

A worker reads requests in a thread of their own, so the pool's writes never wait for a chunk
being blinded. It exits when its input ends: when the pool closes it, or when the pool's process
dies, whatever the way, so no worker outlives its pool holding a secret.
"""

from __future__ import annotations

import os
import queue
import signal
import struct
import sys
import threading
from array import array
from collections.abc import Sequence
from typing import IO

from cobrand import psi
from cobrand.errors import InvalidPoint

__all__ = [
    "BLIND",
    "HASH_AND_BLIND",
    "INVALID_POINT",
    "OK",
    "decode_identifiers",
    "encode_identifiers",
    "read_frame",
    "write_frame",
]

HASH_AND_BLIND = b"H"
BLIND = b"B"
OK = b"\x00"
INVALID_POINT = b"\x01"

_LENGTH = struct.Struct(">I")


def write_frame(stream: IO[bytes], *parts: bytes) -> None:
    """Write one frame made of `parts` and flush it."""
    stream.write(_LENGTH.pack(sum(len(part) for part in parts)))
    for part in parts:
        stream.write(part)
    stream.flush()


def read_frame(stream: IO[bytes]) -> bytes | None:
    """The next frame's body; None at the end of the stream (between frames only)."""
    header = stream.read(_LENGTH.size)
    if not header:
        return None
    if len(header) < _LENGTH.size:
        raise EOFError("the stream ended inside a frame header")
    (length,) = _LENGTH.unpack(header)
    body = stream.read(length)
    if len(body) < length:
        raise EOFError(f"the stream ended after {len(body)} of a frame's {length} bytes")
    return body


def encode_identifiers(identifiers: Sequence[str]) -> bytes:
    """Identifiers as one payload: their count, their UTF-8 lengths, then their UTF-8 bytes."""
    encoded = [identifier.encode() for identifier in identifiers]
    lengths = array("I", (len(item) for item in encoded))
    return _LENGTH.pack(len(encoded)) + lengths.tobytes() + b"".join(encoded)


def decode_identifiers(payload: bytes) -> list[str]:
    """The identifiers `encode_identifiers` put in `payload`."""
    (count,) = _LENGTH.unpack_from(payload)
    lengths = array("I")
    start = _LENGTH.size + count * lengths.itemsize
    lengths.frombytes(payload[_LENGTH.size : start])
    identifiers = []
    for length in lengths:
        identifiers.append(payload[start : start + length].decode())
        start += length
    return identifiers


def _read_requests(requests: IO[bytes], into: queue.SimpleQueue[bytes | None]) -> None:
    while (request := read_frame(requests)) is not None:
        into.put(request)
    into.put(None)


def _serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    setup = read_frame(requests)
    if setup is None:
        return
    secret, domain = setup[: psi.SECRET_BYTES], setup[psi.SECRET_BYTES :]
    pending: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    threading.Thread(target=_read_requests, args=(requests, pending), daemon=True).start()
    while (request := pending.get()) is not None:
        kind, payload = request[:1], request[1:]
        try:
            if kind == HASH_AND_BLIND:
                payload = psi.hash_to_points(decode_identifiers(payload), domain)
            blinded = psi.blind(payload, secret)
        except InvalidPoint as error:
            write_frame(replies, INVALID_POINT, str(error).encode())
        else:
            write_frame(replies, OK, blinded)


def main() -> None:
    """Serve one pool until its requests end."""
    # The pool handles Ctrl-C and stops its workers; a worker must not die mid-chunk on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # nothing but replies may reach the pool's pipe
    try:
        _serve(sys.stdin.buffer, replies)
    except BrokenPipeError:
        os._exit(0)  # the pool is gone: nobody is left to tell


if __name__ == "__main__":
    main()
