"""The gateway's JSON log lines: one object per line, with the request id of the call served."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable

from gateway.request_log import JsonLines, serving_request


def _logged(emit: Callable[[logging.Logger], None]) -> list[dict[str, object]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines())
    logger = logging.getLogger("gateway.test_request_log")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_logged_while_serving_a_request_carries_its_id_and_no_other_does() -> None:
    def emit(logger: logging.Logger) -> None:
        logger.info("before %s", "the call")
        with serving_request("req-1"):
            logger.warning("[Gateway] request %s: partner %s", "req-1", "timeout")
        logger.info("after")

    before, during, after = _logged(emit)

    assert "request_id" not in before
    assert during["request_id"] == "req-1"
    assert during["message"] == "[Gateway] request req-1: partner timeout"
    assert (during["level"], during["logger"]) == ("WARNING", "gateway.test_request_log")
    assert str(during["time"]).endswith("+00:00")
    assert "request_id" not in after


def test_concurrent_calls_each_log_their_own_request_id() -> None:
    barrier = threading.Barrier(8)

    def emit(logger: logging.Logger) -> None:
        def call(number: int) -> None:
            with serving_request(f"req-{number}"):
                barrier.wait()
                logger.info("call %d", number)

        threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    lines = _logged(emit)

    assert sorted(str(line["message"]) for line in lines) == sorted(f"call {n}" for n in range(8))
    assert all(line["request_id"] == f"req-{str(line['message']).split()[1]}" for line in lines)


def test_an_exception_is_kept_in_the_same_line() -> None:
    def emit(logger: logging.Logger) -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")

    (line,) = _logged(emit)

    assert "ValueError: boom" in str(line["exception"])
