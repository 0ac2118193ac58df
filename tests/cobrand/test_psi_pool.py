"""BlindingPool: same bytes as the PSI primitives, in order, bounded, and no process left behind."""

import itertools
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from cobrand import psi
from cobrand.errors import ConfigError, FailedPrecondition, InvalidPoint
from cobrand.psi_pool import BlindingPool

DOMAIN = b"cobrand-psi-v1:test:00"
SECRET = psi.new_secret()
LOW_ORDER = (1).to_bytes(32, "little")


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda n: f"workers={n}")
def pool(request: pytest.FixtureRequest) -> Iterator[BlindingPool]:
    with BlindingPool(SECRET, DOMAIN, workers=request.param, max_in_flight=3) as made:
        yield made


def _random_identifier_chunks(seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    alphabet = "0123456789+-abcXYZ éü中文"
    return [
        ["".join(rng.choices(alphabet, k=rng.randint(0, 20))) for _ in range(size)]
        for size in (rng.choice([0, 1, 7, 150, 400]) for _ in range(12))
    ]


def _live_workers(parent: int | None = None) -> set[int]:
    """Pids of running blinding workers started by `parent` (default: this process)."""
    parent = os.getpid() if parent is None else parent
    workers = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _running(int(entry.name)):
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    ppid = int(stat.read().rpartition(")")[2].split()[1])
                with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                    command = cmdline.read()
            except OSError:
                continue  # exited while we looked
            if ppid == parent and b"cobrand.psi_worker" in command:
                workers.add(int(entry.name))
    return workers


def test_results_equal_the_primitives_for_random_inputs(pool: BlindingPool) -> None:
    chunks = _random_identifier_chunks(seed=7)
    points = [psi.hash_to_points(chunk, DOMAIN) for chunk in chunks]

    hashed_and_blinded = list(pool.hash_and_blind(chunks))
    blinded = list(pool.blind(points))

    expected = [psi.blind(chunk, SECRET) for chunk in points]
    assert hashed_and_blinded == expected
    assert blinded == expected


def test_order_is_kept_when_later_chunks_finish_first(pool: BlindingPool) -> None:
    sizes = [1500, 1, 1, 1, 300, 1, 1]
    chunks = [[f"id-{size}-{i}" for i in range(size)] for size in sizes]

    results = list(pool.hash_and_blind(chunks))

    assert [len(result) // psi.POINT_BYTES for result in results] == sizes
    assert results == [psi.blind(psi.hash_to_points(c, DOMAIN), SECRET) for c in chunks]


def test_invalid_point_names_its_chunk_and_point_after_earlier_results(pool: BlindingPool) -> None:
    good = psi.hash_to_points(["a", "b", "c", "d"], DOMAIN)
    bad = good[:96] + LOW_ORDER
    stream = pool.blind([good, good, bad, good])

    assert next(stream) == psi.blind(good, SECRET)
    assert next(stream) == psi.blind(good, SECRET)
    with pytest.raises(InvalidPoint, match="chunk 2: point 3 has low order"):
        next(stream)


def test_truncated_chunk_is_named(pool: BlindingPool) -> None:
    good = psi.hash_to_points(["a"], DOMAIN)

    with pytest.raises(InvalidPoint, match="chunk 1: points are 33 bytes"):
        list(pool.blind([good, good + b"\x00"]))


def test_input_error_reaches_the_consumer_after_earlier_results(pool: BlindingPool) -> None:
    def failing_input() -> Iterator[list[str]]:
        yield ["a"]
        raise ConnectionResetError("peer went away")

    stream = pool.hash_and_blind(failing_input())

    assert next(stream) == psi.blind(psi.hash_to_points(["a"], DOMAIN), SECRET)
    with pytest.raises(ConnectionResetError, match="peer went away"):
        next(stream)


def test_results_flow_while_the_input_waits_for_them(pool: BlindingPool) -> None:
    # A peer that sends chunk k+1 only once it has the answer to chunk k, as a lockstep client
    # of a bidirectional stream does: the pool must answer without waiting for more input.
    consumed = threading.Semaphore(0)

    def lockstep_input() -> Iterator[list[str]]:
        for k in range(5):
            if k and not consumed.acquire(timeout=10):
                raise AssertionError(f"pool withheld the answer to chunk {k - 1}")
            yield [f"id-{k}"]

    for k, _ in enumerate(pool.hash_and_blind(lockstep_input())):
        consumed.release()
        assert k < 5


@pytest.mark.parametrize("workers", [0, 2])
def test_input_is_read_lazily_with_bounded_chunks_in_flight(workers: int) -> None:
    read = itertools.count()

    def endless_input() -> Iterator[list[str]]:
        while True:
            next(read)
            yield ["x"]

    with BlindingPool(SECRET, DOMAIN, workers=workers, max_in_flight=3) as pool:
        stream = pool.hash_and_blind(endless_input())
        next(stream)
        time.sleep(0.5)  # ample time for a pool that over-reads to do so
        chunks_read = next(read)
        stream.close()

    # one consumed + at most 3 in flight + the one the feeder holds while it waits for a slot
    assert chunks_read <= 1 + 3 + 1


def test_closing_a_stream_midway_stops_its_work_and_the_pool_serves_on() -> None:
    before = _live_workers()
    with BlindingPool(SECRET, DOMAIN, workers=2, max_in_flight=4) as pool:
        busy = _live_workers() - before
        stream = pool.blind(itertools.repeat(psi.hash_to_points(["a"] * 200, DOMAIN)))
        next(stream)
        stream.close()  # a client that disconnects mid-stream
        deadline = time.monotonic() + 5
        while _feeders_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

        assert not _feeders_alive()
        assert not busy & _live_workers()
        points = psi.hash_to_points(["b", "c"], DOMAIN)
        assert list(pool.blind([points])) == [psi.blind(points, SECRET)]


def _feeders_alive() -> bool:
    return any(thread.name == "psi-pool-feeder" for thread in threading.enumerate())


def test_no_worker_outlives_the_pool_after_success_or_error() -> None:
    before = _live_workers()
    with BlindingPool(SECRET, DOMAIN, workers=2) as pool:
        list(pool.hash_and_blind([["a"]] * 8))
        workers = _live_workers() - before
    assert len(workers) == 2
    assert not workers & _live_workers()

    with (
        pytest.raises(InvalidPoint, match="chunk 0"),
        BlindingPool(SECRET, DOMAIN, workers=2) as pool,
    ):
        list(pool.blind([LOW_ORDER] * 8))
    assert not (_live_workers() - before)


def test_a_second_stream_waits_for_the_first_to_end() -> None:
    with BlindingPool(SECRET, DOMAIN, workers=1) as pool:
        first = pool.hash_and_blind([["a"], ["b"]])
        next(first)

        with pytest.raises(FailedPrecondition, match="one stream at a time"):
            next(pool.hash_and_blind([["c"]]))
        assert list(first) == [psi.blind(psi.hash_to_point("b", DOMAIN), SECRET)]
        assert list(pool.hash_and_blind([["c"]])) == [
            psi.blind(psi.hash_to_point("c", DOMAIN), SECRET)
        ]


def test_a_worker_that_dies_is_reported_not_waited_for() -> None:
    with BlindingPool(SECRET, DOMAIN, workers=2) as pool:
        for pid in _live_workers():
            os.kill(pid, signal.SIGKILL)

        with pytest.raises(ChildProcessError, match="stopped answering"):
            list(pool.hash_and_blind([["a"]] * 4))


def test_workers_exit_when_their_owner_is_killed() -> None:
    owner_script = textwrap.dedent(
        """
        import time
        from cobrand.psi_pool import BlindingPool
        pool = BlindingPool(bytes(32), b"d", workers=2)
        # Busy when the owner dies: a worker must not finish its queue for nobody.
        stream = pool.hash_and_blind([["a"] * 4000] * 16)
        next(stream)
        print("blinding", flush=True)
        time.sleep(60)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", owner_script], stdout=subprocess.PIPE)
    assert owner.stdout is not None
    assert owner.stdout.readline() == b"blinding\n"
    worker_pids = _live_workers(owner.pid)
    assert len(worker_pids) == 2

    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in worker_pids) and time.monotonic() < deadline:
        time.sleep(0.05)

    assert not any(_running(pid) for pid in worker_pids)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("workers", [0, 1])
def test_a_closed_pool_refuses_new_streams(workers: int) -> None:
    pool = BlindingPool(SECRET, DOMAIN, workers=workers)
    pool.close()

    with pytest.raises(FailedPrecondition, match="pool is closed"):
        pool.blind([b""])


@pytest.mark.parametrize(
    ("workers", "max_in_flight", "setting"), [(-1, None, "workers"), (1, 0, "max_in_flight")]
)
def test_bad_pool_sizes_are_refused(workers: int, max_in_flight: int | None, setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        BlindingPool(SECRET, DOMAIN, workers=workers, max_in_flight=max_in_flight)


def test_default_pool_uses_every_core() -> None:
    before = _live_workers()
    with BlindingPool(SECRET, DOMAIN):
        assert len(_live_workers() - before) == os.cpu_count()
