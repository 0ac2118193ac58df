"""Wire capture for a privacy review: every message a process's servers and Flower apps exchange.

When ``COBRAND_WIRE_CAPTURE_DIR`` names a directory, each process appends the messages it sees
to ``<directory>/<process>-<pid>.jsonl`` (created ``0600``: the file holds message contents):

- its gRPC servers (the interceptor in ``cobrand.rpc``): every request received and response
  sent, as the bytes that crossed the wire, before decoding and after encoding;
- the bank's ServerApp and the partner's ClientApp: every Flower message sent and received,
  serialized as Flower serializes it (``flwr.proto.Message``: metadata, records, error).

A party that sets the variable on its own processes therefore holds everything that crossed its
boundary: the other party's calls arrive at its servers, and its own calls are the other party's
server's traffic. One JSON object per line, readable with ``jq`` or `read_capture`::

    {"time": 1732380000.12, "process": "partner_node", "pid": 4242, "point": "grpc-server",
     "call": "/cobrand.v1.AlignmentService/ReblindBankPoints", "direction": "received",
     "type": "cobrand.v1.PointChunk", "size": 8230, "data": "<base64 of the bytes>"}

With the variable unset nothing is recorded and the only cost is one environment lookup per
call. Capture is for reviews and tests, not for production traffic: it keeps every byte.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from flwr.app import Context, Message

__all__ = [
    "CAPTURE_DIR_ENV",
    "FLOWER_CLIENT_APP",
    "FLOWER_SERVER_APP",
    "GRPC_SERVER",
    "RECEIVED",
    "SENT",
    "UNDECODABLE",
    "CapturedMessage",
    "capture_flower_message",
    "captured_flower_handler",
    "read_capture",
    "recording_codec",
]

CAPTURE_DIR_ENV: Final = "COBRAND_WIRE_CAPTURE_DIR"

GRPC_SERVER: Final = "grpc-server"
FLOWER_SERVER_APP: Final = "flower-serverapp"
FLOWER_CLIENT_APP: Final = "flower-clientapp"
"""Capture points: where in the process a message was seen."""

RECEIVED: Final = "received"
SENT: Final = "sent"

UNDECODABLE: Final = "(undecodable)"
"""The type recorded for request bytes the method's deserializer refused."""
_RAW_BYTES: Final = "(raw bytes)"
_FLOWER_MESSAGE: Final = "flwr.proto.Message"

_Codec = Callable[[Any], Any] | None


@dataclass(frozen=True)
class CapturedMessage:
    """One captured message.

    Attributes
    ----------
    process, pid : str, int
        The process that saw it (its main module or program name) and its id.
    point : str
        `GRPC_SERVER`, `FLOWER_SERVER_APP` or `FLOWER_CLIENT_APP`.
    call : str
        The gRPC method (``/cobrand.v1.Service/Method``) or the Flower message type
        (``train.round``).
    direction : str
        `RECEIVED` or `SENT`, from the capturing process's side.
    type : str
        Full name of the message type (``cobrand.v1.PointChunk``, ``flwr.proto.Message``).
    data : bytes
        The serialized message.
    """

    process: str
    pid: int
    point: str
    call: str
    direction: str
    type: str
    data: bytes


def recording_codec(method: str, codec: dict[str, Any]) -> dict[str, Any]:
    """A server handler's ``request_deserializer`` and ``response_serializer`` that also record
    the bytes they decode and encode for `method`; `codec` itself when capture is off."""
    directory = _capture_dir()
    if directory is None:
        return codec
    record = functools.partial(_append, directory, GRPC_SERVER, method)
    return codec | {
        "request_deserializer": _recording_deserializer(codec["request_deserializer"], record),
        "response_serializer": _recording_serializer(codec["response_serializer"], record),
    }


def capture_flower_message(point: str, direction: str, message: Message) -> None:
    """Record a Flower message `point` sends or receives (nothing when capture is off)."""
    directory = _capture_dir()
    if directory is None:
        return
    # Imported here: cobrand.rpc imports this module, and processes without Flower must not
    # import flwr; only Flower's own processes call this function.
    from flwr.common.serde import message_to_proto

    data = message_to_proto(message).SerializeToString()
    _append(directory, point, message.metadata.message_type, direction, _FLOWER_MESSAGE, data)


def captured_flower_handler(
    point: str,
) -> Callable[[Callable[[Message, Context], Message]], Callable[[Message, Context], Message]]:
    """Decorate a Flower message handler so the message it gets and the reply it returns are
    recorded at `point` (`capture_flower_message`)."""

    def decorate(
        handle: Callable[[Message, Context], Message],
    ) -> Callable[[Message, Context], Message]:
        @functools.wraps(handle)
        def handled(message: Message, context: Context) -> Message:
            capture_flower_message(point, RECEIVED, message)
            reply = handle(message, context)
            capture_flower_message(point, SENT, reply)
            return reply

        return handled

    return decorate


def read_capture(directory: Path) -> Iterator[CapturedMessage]:
    """Every message captured in `directory`, file by file, each file in the order written."""
    for path in sorted(directory.glob("*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                entry = json.loads(line)
                yield CapturedMessage(
                    process=entry["process"],
                    pid=entry["pid"],
                    point=entry["point"],
                    call=entry["call"],
                    direction=entry["direction"],
                    type=entry["type"],
                    data=base64.b64decode(entry["data"]),
                )


def _capture_dir() -> Path | None:
    value = os.environ.get(CAPTURE_DIR_ENV)
    return Path(value) if value else None


_Record = Callable[[str, str, bytes], None]


def _recording_deserializer(deserialize: _Codec, record: _Record) -> Callable[[bytes], Any]:
    def deserialized(data: bytes) -> Any:
        try:
            message = data if deserialize is None else deserialize(data)
        except Exception:
            record(RECEIVED, UNDECODABLE, data)
            raise
        record(RECEIVED, _type_name(message), data)
        return message

    return deserialized


def _recording_serializer(serialize: _Codec, record: _Record) -> Callable[[Any], bytes]:
    def serialized(message: Any) -> bytes:
        data: bytes = message if serialize is None else serialize(message)
        record(SENT, _type_name(message), data)
        return data

    return serialized


def _type_name(message: Any) -> str:
    descriptor = getattr(message, "DESCRIPTOR", None)
    return _RAW_BYTES if descriptor is None else str(descriptor.full_name)


def _append(
    directory: Path, point: str, call: str, direction: str, type_name: str, data: bytes
) -> None:
    line = json.dumps(
        {
            "time": time.time(),
            "process": _process_name(),
            "pid": os.getpid(),
            "point": point,
            "call": call,
            "direction": direction,
            "type": type_name,
            "size": len(data),
            "data": base64.b64encode(data).decode("ascii"),
        }
    )
    with _LOCK:
        sink = _sink(directory)
        sink.write(line + "\n")
        # Flushed per message: a process killed mid-run keeps what it captured.
        sink.flush()


_LOCK = threading.Lock()
_SINKS: dict[tuple[Path, int], IO[str]] = {}


def _sink(directory: Path) -> IO[str]:
    """This process's capture file in `directory` (reopened under a new pid after a fork)."""
    key = (directory, os.getpid())
    if key not in _SINKS:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{_process_name()}-{os.getpid()}.jsonl"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        _SINKS[key] = os.fdopen(descriptor, "a", encoding="utf-8")
    return _SINKS[key]


@functools.cache
def _process_name() -> str:
    """``partner_node`` for ``python -m partner_node``, ``flwr-clientapp`` for a script."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = spec.name.removesuffix(".__main__") if spec is not None else Path(sys.argv[0]).name
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "python"
