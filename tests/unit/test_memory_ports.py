"""The in-process driver's schedule store and lock ports."""

from __future__ import annotations

from stem.drivers.memory import MemoryDriver


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fire_time_claimed_once() -> None:
    driver = MemoryDriver()

    assert driver.claim_fire("nightly", 1700000000.0) is True
    assert driver.claim_fire("nightly", 1700000000.0) is False
    assert driver.claim_fire("nightly", 1700000060.0) is True
    assert driver.claim_fire("hourly", 1700000000.0) is True


def test_last_fire_keeps_latest_claim() -> None:
    driver = MemoryDriver()

    assert driver.last_fire("nightly") is None
    driver.claim_fire("nightly", 1700000060.0)
    driver.claim_fire("nightly", 1700000000.0)

    assert driver.last_fire("nightly") == 1700000060.0
    assert driver.last_fire("hourly") is None


def test_lock_excludes_second_holder() -> None:
    driver = MemoryDriver()

    token = driver.acquire("reconcile", lease_s=30)

    assert token is not None
    assert driver.acquire("reconcile", lease_s=30) is None


def test_lock_release_needs_token() -> None:
    driver = MemoryDriver()
    token = driver.acquire("reconcile", lease_s=30)
    assert token is not None

    assert driver.release("reconcile", "not-the-token") is False
    assert driver.release("reconcile", token) is True
    assert driver.acquire("reconcile", lease_s=30) is not None


def test_lock_lease_expires() -> None:
    clock = FakeClock()
    driver = MemoryDriver(clock=clock)
    first = driver.acquire("reconcile", lease_s=5)

    clock.now += 6
    second = driver.acquire("reconcile", lease_s=5)

    assert first is not None
    assert second is not None
    assert second != first
    assert driver.release("reconcile", first) is False
