"""Beat: submit each schedule entry's canvas as a new run at its fire times.

Several beats may serve one store. Each fire time goes through
`ScheduleStore.claim_fire`, and only the beat that wins the claim submits,
so a fire time starts one run however many beats compute it. The run id is
derived from the entry name and the fire time (``beat:<entry>:<UTC time>``),
so submitting the same fire again, after a failed submit, is idempotent.

Missed fire times: at start the beat reads the entry's latest claimed fire
time from the store. If one or more fire times passed since then (the beat
was down, or the process was paused), it fires only the latest of them and
logs how many it skipped, then carries on from the schedule. An entry with no
recorded fire waits for its next fire time after the start. Celery's beat
does the same from the last run times in its local schedule file: a late
entry is sent once, not once per missed time.

NOTE: a beat that dies after winning a claim and before its submit reaches
the store loses that fire: the claim stops other beats from firing it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stem.engine.errors import DriverError
from stem.engine.schedules import Entry, utc_stamp

if TYPE_CHECKING:
    from stem.engine.app import App

log = logging.getLogger(__name__)

#: Seconds between two checks of the clock at most, so a stop request, a
#: failed claim or a jump of the wall clock is noticed within this time.
DEFAULT_MAX_SLEEP_S = 1.0

#: Consecutive store failures between two warnings about them.
FAILURE_LOG_EVERY = 60


def fire_run_id(entry: str, fire_time_s: float) -> str:
    """Return the run id of one fire of an entry: the same in every beat."""
    return f"beat:{entry}:{utc_stamp(fire_time_s)}"


@dataclass
class _EntryState:
    # Invariant: next_s is the first fire time after last_s.
    last_s: float
    next_s: float


class Beat:
    """Fires schedule entries as runs of an app.

    Args:
        app: the app whose driver stores the claims and runs.
        entries: the entries to fire; by default the app's ``beat_entries``.
        clock: returns the current POSIX time in seconds.
        sleep: waits a number of seconds; tests pass one that moves a fake
            clock forward.
        max_sleep_s: seconds between two checks of the clock at most.
        starting_deadline_s: skip a fire time, rather than fire it late, when
            it is found more than this many seconds after it passed, as
            Celery's ``beat_cron_starting_deadline`` does for cron entries.
            None (the default) fires the latest missed time however late.
    """

    def __init__(
        self,
        app: App,
        entries: Iterable[Entry] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_sleep_s: float = DEFAULT_MAX_SLEEP_S,
        starting_deadline_s: float | None = None,
    ) -> None:
        self.app = app
        chosen = app.beat_entries.values() if entries is None else entries
        self.entries = {entry.name: entry for entry in chosen}
        self.clock = clock
        self.sleep = sleep
        self.max_sleep_s = max_sleep_s
        self.starting_deadline_s = starting_deadline_s
        #: Runs this beat submitted.
        self.fired = 0
        #: Fire times that another beat claimed first.
        self.claimed_elsewhere = 0
        #: Fire times skipped because they were past the starting deadline.
        self.too_late = 0
        self._states: dict[str, _EntryState] = {}
        self._unsubmitted: dict[str, tuple[Entry, float]] = {}
        self._failures = 0
        # A plain flag, so a signal handler may set it (see `stop`).
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- running --------------------------------------------------------------

    def tick(self) -> float:
        """Fire every entry that is due now; return seconds until the next fire."""
        self._resubmit()
        now = self.clock()
        for entry in self.entries.values():
            state = self._states.get(entry.name)
            if state is None:
                state = self._load(entry, now)
                if state is None:
                    continue
            if now >= state.next_s:
                self._fire_due(entry, state, now)
        if not self._states:
            return self.max_sleep_s
        return max(0.0, min(state.next_s for state in self._states.values()) - now)

    def run(self) -> None:
        """Fire entries until `stop` is called; a KeyboardInterrupt also stops."""
        self._stopping = False
        names = ", ".join(sorted(self.entries)) or "none"
        log.info("Beat started on %s with entries: %s.", self.app, names)
        try:
            while not self._stop_requested():
                delay_s = self.tick()
                if self._stop_requested():
                    break
                self.sleep(min(delay_s, self.max_sleep_s))
        except KeyboardInterrupt:
            log.info("Beat interrupted.")
        finally:
            log.info(
                "Beat stopped: %d runs submitted, %d fire times claimed by "
                "other beats, %d skipped past the starting deadline.",
                self.fired,
                self.claimed_elsewhere,
                self.too_late,
            )

    def _stop_requested(self) -> bool:
        # A method, not the attribute, so that mypy does not narrow the flag
        # inside the loop and call the loop's exit unreachable.
        return self._stopping

    def stop(self) -> None:
        """Ask `run` to return after its current tick.

        Only sets a flag, so it is safe in a signal handler. `run` notices
        within ``max_sleep_s`` seconds. If `start` made a thread, wait for it.
        """
        self._stopping = True
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
            self._thread = None

    def start(self) -> Beat:
        """Run in a background thread; `stop` ends it."""
        if self._thread is not None:
            raise RuntimeError("This beat is already running; call stop() first.")
        self._stopping = False
        self._thread = threading.Thread(target=self.run, name="stem-beat", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> Beat:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- steps ----------------------------------------------------------------

    def _load(self, entry: Entry, now: float) -> _EntryState | None:
        """Start an entry's state from the store's latest fire, or from now."""
        try:
            last = self.app.driver.last_fire(entry.name)
        except DriverError as err:
            self._store_failed("read the latest fire time of", entry.name, err)
            return None
        if last is None:
            last = now
            log.debug(
                "Entry %s has no recorded fire; waiting for the next.", entry.name
            )
        state = _EntryState(last, entry.schedule.next_after(last))
        self._states[entry.name] = state
        return state

    def _fire_due(self, entry: Entry, state: _EntryState, now: float) -> None:
        """Claim and submit the latest due fire time of an entry."""
        due = entry.schedule.latest_at_or_before(now)
        if self._past_deadline(entry, due, now):
            state.last_s = due
            state.next_s = entry.schedule.next_after(due)
            return
        if due > state.next_s:
            log.warning(
                "Entry %s missed its fire times from %s on; firing only the "
                "latest, %s, and skipping the others.",
                entry.name,
                utc_stamp(state.next_s),
                utc_stamp(due),
                extra={"entry": entry.name},
            )
        try:
            claimed = self.app.driver.claim_fire(entry.name, due)
        except DriverError as err:
            # The state stays put, so the next tick claims again.
            self._store_failed("claim a fire time of", entry.name, err)
            return
        self._failures = 0
        state.last_s = due
        state.next_s = entry.schedule.next_after(due)
        if not claimed:
            self.claimed_elsewhere += 1
            log.debug(
                "Entry %s at %s was claimed by another beat.",
                entry.name,
                utc_stamp(due),
            )
            return
        self._submit(entry, due, now)

    def _past_deadline(self, entry: Entry, due: float, now: float) -> bool:
        late_s = now - due
        if self.starting_deadline_s is None or late_s <= self.starting_deadline_s:
            return False
        self.too_late += 1
        log.warning(
            "Entry %s skipped its fire time %s: found %.1f s late, past the "
            "starting deadline of %.1f s.",
            entry.name,
            utc_stamp(due),
            late_s,
            self.starting_deadline_s,
            extra={"entry": entry.name},
        )
        return True

    def _submit(self, entry: Entry, fire_time_s: float, now: float) -> None:
        run_id = fire_run_id(entry.name, fire_time_s)
        options = {**entry.options, "run_id": run_id}
        try:
            self.app.submit(entry.canvas, (), None, options)
        except DriverError as err:
            self._unsubmitted[run_id] = (entry, fire_time_s)
            self._store_failed(f"submit run {run_id} of", entry.name, err)
            return
        except Exception:
            # Declaration checks catch bad canvases, and drivers wrap their
            # errors in DriverError, so this is a bug. Other entries go on.
            log.exception(
                "Entry %s failed to submit run %s, a bug in Stem; this fire is "
                "dropped.",
                entry.name,
                run_id,
                extra={"entry": entry.name, "run_id": run_id},
            )
            return
        self._unsubmitted.pop(run_id, None)
        self._failures = 0
        self.fired += 1
        log.info(
            "Fired %s for %s (%.3f s after its time): run %s.",
            entry.name,
            utc_stamp(fire_time_s),
            max(0.0, now - fire_time_s),
            run_id,
            extra={"entry": entry.name, "run_id": run_id},
        )

    def _resubmit(self) -> None:
        """Submit again each claimed fire whose submit failed.

        The run id is the same, so if an earlier attempt reached the store,
        the store keeps that run and creates no second one.
        """
        for entry, fire_time_s in list(self._unsubmitted.values()):
            self._submit(entry, fire_time_s, self.clock())

    def _store_failed(self, action: str, name: str, err: DriverError) -> None:
        self._failures += 1
        if self._failures % FAILURE_LOG_EVERY == 1:
            log.warning(
                "Beat failed to %s entry %s (%s); trying again within %.1f s. "
                "%d failures in a row so far.",
                action,
                name,
                err,
                self.max_sleep_s,
                self._failures,
                extra={"entry": name},
            )
