"""Test helper: hostile values for every kind of wire field, and the check each fuzzed call passes.

The strategies give well-typed values a caller can put on the wire that no honest caller sends:
empty and huge strings (up to a few MB), text with control characters and every plane of
Unicode, NaN, infinities and extreme floats, unknown enum numbers, random bytes of every length
near the ones expected.

`Tally.check` makes one call and asserts what the issue asks of every answer: an expected
status (never INTERNAL or UNKNOWN, which a crash turns into, nor a call that hangs to its
deadline; RESOURCE_EXHAUSTED also when gRPC refuses a message over the server's size limit),
details naming the field where the status is INVALID_ARGUMENT, and no stack trace.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from google.protobuf.message import Message
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from cobrand.rpc import TlsFiles, create_channel

__all__ = [
    "CALL_TIMEOUT_S",
    "VERSION_LIKE",
    "Tally",
    "binary",
    "enum_numbers",
    "floats",
    "fuzz",
    "hostile_channel",
    "mutated",
    "raw_bytes",
    "send_raw",
    "texts",
    "uint32s",
    "uint64s",
    "unknown_field",
]

CALL_TIMEOUT_S: Final = 20.0
"""Every fuzzed call's deadline; a call still running then has hung."""


def fuzz(max_examples: int) -> settings:
    """Hypothesis settings of a fuzzed RPC: `max_examples` calls, no per-example deadline (a
    real server on a shared machine), and no complaint about slow generation of huge values."""
    return settings(
        max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


# Sizes past every length limit, and past the gateway's 256 KiB message limit.
_HUGE: Final = (129, 1_025, 70_000, 300_000, 1_000_000)
_TRACE: Final = re.compile(r"Traceback \(most recent call last\)|File \"/[^\"]+\", line \d+")

OK: Final = grpc.StatusCode.OK
# How a gRPC server refuses a message over its limit.
_OVER_LIMIT: Final = "Received message larger than max"
# Above every server's limit (16 MiB at most), so the server's limit is what refuses.
_CLIENT_MAX_BYTES: Final = 64 * 1024 * 1024

VERSION_LIKE: Final = st.text("0123456789abcdef", min_size=16, max_size=16)
"""Well-formed model version ids (16 lower-case hex digits), almost all unknown."""


def hostile_channel(port: int, tls: TlsFiles) -> grpc.Channel:
    """A mutual-TLS channel to a loopback server that sends messages of any size."""
    return create_channel(f"127.0.0.1:{port}", tls, max_message_bytes=_CLIENT_MAX_BYTES)


def texts() -> st.SearchStrategy[str]:
    """Empty, short random, control characters and any Unicode, long and huge strings."""
    return st.one_of(
        st.just(""),
        st.text(max_size=24),
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=200),
        st.builds(
            lambda unit, size: (unit * size)[:size],
            st.sampled_from(["a", "\u00e9", "\x00", "\U0001f600", "../", "%s%n", "\n"]),
            st.sampled_from(_HUGE),
        ),
    )


def binary(*lengths: int) -> st.SearchStrategy[bytes]:
    """Random bytes: empty, any short length, each of `lengths` and either side of it, huge."""
    near = sorted({n + d for n in lengths for d in (-1, 0, 1) if n + d >= 0})
    return st.one_of(
        st.just(b""),
        st.binary(max_size=80),
        st.sampled_from(near or [0]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
        st.builds(
            lambda byte, size: bytes([byte]) * size, st.integers(0, 255), st.sampled_from(_HUGE)
        ),
    )


def floats() -> st.SearchStrategy[float]:
    """Any double, NaN and the infinities among them, and the extremes named."""
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([math.nan, math.inf, -math.inf, -0.0, -1.0, 1e308, -1e308, 5e-324]),
    )


def uint32s() -> st.SearchStrategy[int]:
    """uint32 values, the edges often."""
    return st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2, 2**31, 2**32 - 1]))


def uint64s() -> st.SearchStrategy[int]:
    """uint64 values, the edges often."""
    return st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, 2**64 - 1]))


def enum_numbers(known: Iterable[int]) -> st.SearchStrategy[int]:
    """An enum field's numbers: the known ones and unknown ones (proto3 enums are open)."""
    return st.one_of(
        st.sampled_from(sorted(known)), st.integers(-(2**31), 2**31 - 1), st.integers(-3, 9)
    )


def mutated(
    valid: Mapping[str, st.SearchStrategy[Any]], hostile: Mapping[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[tuple[frozenset[str], dict[str, Any]]]:
    """A request's field values: valid ones with a random subset replaced by hostile ones.

    Returns the names replaced with the values, so a refusal can be checked to name one of
    them; a single hostile field beside valid ones is the common case, which is what proves
    each field's own check.
    """
    return st.frozensets(st.sampled_from(sorted(hostile)), max_size=len(hostile)).flatmap(
        lambda chosen: st.tuples(
            st.just(chosen),
            st.fixed_dictionaries(
                {name: hostile[name] if name in chosen else valid[name] for name in valid}
            ),
        )
    )


def raw_bytes() -> st.SearchStrategy[bytes]:
    """A request body of random bytes (most are not a message of any type)."""
    return st.one_of(st.binary(min_size=1, max_size=300), binary())


def unknown_field(message: Message, number: int, payload: bytes) -> bytes:
    """`message` serialized with a length-delimited field `number` its contract does not have."""
    body = bytes(message.SerializeToString())
    return body + _varint(number << 3 | 2) + _varint(len(payload)) + payload


def send_raw(
    channel: grpc.Channel, method: str, body: bytes, *, streamed_in: bool, streamed_out: bool
) -> Any:
    """Call `method` with `body` as the request's bytes (one message of a request stream), as
    is, and read the whole answer."""
    if streamed_in and streamed_out:
        bidi = channel.stream_stream(method, _same, _same)
        return list(bidi(iter([body]), timeout=CALL_TIMEOUT_S))
    if streamed_in:
        upload = channel.stream_unary(method, _same, _same)
        return upload(iter([body]), timeout=CALL_TIMEOUT_S)
    if streamed_out:
        download = channel.unary_stream(method, _same, _same)
        return list(download(body, timeout=CALL_TIMEOUT_S))
    return channel.unary_unary(method, _same, _same)(body, timeout=CALL_TIMEOUT_S)


def _same(data: bytes) -> bytes:
    return data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


@dataclass
class Tally:
    """One RPC's fuzzed calls: how many, and how each ended.

    Parameters
    ----------
    rpc : str
        ``Service.Method``, for the figures and the assertion messages.
    fields : iterable of str
        The request's field names; an INVALID_ARGUMENT must name one of them (or one of the
        names a call adds to `check`).
    """

    rpc: str
    fields: Iterable[str]
    outcomes: Counter[str] = field(default_factory=Counter)

    def check(
        self,
        call: Callable[[], Any],
        allowed: Iterable[grpc.StatusCode],
        named: Iterable[str] = (),
    ) -> grpc.StatusCode:
        """Make `call` (which passes ``CALL_TIMEOUT_S`` as its deadline) and check its end.

        Parameters
        ----------
        call : callable
        allowed : iterable of grpc.StatusCode
            The statuses the call may end with (``OK`` for an answer).
        named : iterable of str
            The fields made hostile: an INVALID_ARGUMENT must name one of them. Empty: any
            field of the request.

        Returns
        -------
        grpc.StatusCode
        """
        started = time.monotonic()
        try:
            call()
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
        else:
            code, details = OK, ""
        elapsed = time.monotonic() - started
        self.outcomes[code.name] += 1
        allowed = frozenset(allowed)
        # Several huge fields together may pass the server's message limit: refused unread.
        oversized = code is grpc.StatusCode.RESOURCE_EXHAUSTED and _OVER_LIMIT in details
        assert code in allowed or oversized, (
            f"{self.rpc} ended {code.name} ({details[:300]!r}); expected one of "
            f"{sorted(c.name for c in allowed)}"
        )
        assert elapsed < CALL_TIMEOUT_S / 2, f"{self.rpc} took {elapsed:.1f} s"
        assert not _TRACE.search(details), f"{self.rpc}: a stack trace in {details[:300]!r}"
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            names = sorted(set(named)) or list(self.fields)
            # "run id" names run_id as well as "run_id" does.
            spelled = {form for name in names for form in (name, name.replace("_", " "))}
            assert any(form in details for form in spelled), (
                f"{self.rpc}: INVALID_ARGUMENT names none of {names}: {details[:300]!r}"
            )
        return code

    @property
    def tried(self) -> int:
        """Calls made."""
        return sum(self.outcomes.values())

    def figure(self) -> str:
        """``<rpc>: N inputs tried (by status), failures 0`` (failures fail the test first)."""
        by_status = ", ".join(f"{name} {count}" for name, count in sorted(self.outcomes.items()))
        return f"{self.rpc}: {self.tried} hostile inputs tried ({by_status}), failures 0"
