"""Two beats on one store start exactly one run per fire time, on every driver.

On Redis the two beats use separate apps and connections, as two processes
would. On memory:// they share the app's store, the only way to share it.
Both beats tick at the same fake time in two threads, so their claims race.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from stem import App
from stem.canvas.primitives import Signature
from stem.engine.beat import Beat, fire_run_id
from stem.engine.errors import RunNotFound


class SharedClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def apps(driver_name: str, request: pytest.FixtureRequest) -> Iterator[list[App]]:
    """Yield two apps on one store, each declaring the same entry."""
    if driver_name == "memory":
        shared = App("memory://")
        pair = [shared, shared]
    else:
        url: str = request.getfixturevalue("redis_url")
        prefix = f"test-{uuid.uuid4().hex[:12]}:"
        pair = [App(url, prefix=prefix), App(url, prefix=prefix)]
    for app in {id(app): app for app in pair}.values():
        app.periodic(2, Signature("reports.ping"), name="ping")
    yield pair
    for app in pair:
        app.close()


def test_two_beats_fire_each_time_once(apps: list[App]) -> None:
    clock = SharedClock()
    clock.now_s = 1_000_000.5
    beats = [Beat(app, clock=clock) for app in apps]
    for beat in beats:
        beat.tick()  # no recorded fire: both wait for the next fire time

    for second in range(1, 21):
        clock.now_s = 1_000_000.0 + second
        start = threading.Barrier(len(beats))

        def tick(beat: Beat, start: threading.Barrier = start) -> None:
            start.wait()
            beat.tick()

        threads = [threading.Thread(target=tick, args=(beat,)) for beat in beats]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    fire_times = [1_000_000.0 + second for second in range(2, 21, 2)]
    assert sum(beat.fired for beat in beats) == len(fire_times)
    assert sum(beat.claimed_elsewhere for beat in beats) == len(fire_times)
    for fire_time in fire_times:
        snapshot = apps[0].AsyncResult(fire_run_id("ping", fire_time)).snapshot()
        assert snapshot.status == "running"
    with pytest.raises(RunNotFound):
        apps[0].AsyncResult(fire_run_id("ping", 1_000_001.0)).snapshot()
