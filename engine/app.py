"""The app, its task registry and tasks: the API Celery users already know."""

from __future__ import annotations

import base64
import functools
import logging
import os
import secrets
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from stem.canvas.compiler import (
    check_nesting,
    compile_canvas,
    encode_args,
    encode_kwargs,
)
from stem.canvas.errors import (
    CanvasError,
    InvalidCanvas,
    InvalidOption,
    NotSerializable,
)
from stem.canvas.gcpause import paused_gc
from stem.canvas.options import check_options
from stem.canvas.primitives import Canvas, Group, Signature, chunks, starmap, xmap
from stem.canvas.spec import GraphSpec, NodeOptions
from stem.engine.drivers import load_driver, redact
from stem.engine.errors import (
    InvalidSchedule,
    PartialSubmitError,
    Replace,
    Retry,
    TaskNotRegistered,
)
from stem.engine.execution import Request, current_request
from stem.engine.ports import Driver
from stem.engine.result import AsyncResult, ResultSet
from stem.engine.schedules import Entry, entry_from_mapping, make_entry

if TYPE_CHECKING:
    from stem.engine.beat import Beat
    from stem.engine.worker import Worker

log = logging.getLogger(__name__)

#: The environment variable with the broker URL of an `App` made without one.
URL_VARIABLE = "STEM_URL"

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Entries of an app's filled-options cache; it is emptied when full.
_FILLED_DEFAULTS_MAX = 1024


#: Maps base32 (RFC 4648) digits to the Crockford digits of the same value.
_BASE32_TO_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode()
)


def new_run_id() -> str:
    """Return a new ULID: 26 characters that sort by creation time."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return ulid_text(value)


def ulid_text(value: int) -> str:
    """Return a 128-bit value as a ULID's 26 Crockford base32 digits.

    160 bits are 32 base32 digits, so the last 26 digits of the 20-byte
    value are its low 130 bits, which base64.b32encode computes in C.
    """
    digits = base64.b32encode(value.to_bytes(20, "big"))[6:]
    return digits.translate(_BASE32_TO_CROCKFORD).decode()


class Task:
    """A registered task: call it inline, or build signatures and submit them.

    Made by ``@app.task``; see `App.task` for the options.
    """

    def __init__(
        self,
        app: App,
        fn: Callable[..., Any],
        name: str,
        *,
        bind: bool,
        autoretry_for: tuple[type[BaseException], ...],
        options: Mapping[str, Any],
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.bind = bind
        self.autoretry_for = autoretry_for
        self.options = dict(options)
        functools.update_wrapper(self, fn)

    # -- running --------------------------------------------------------------

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task body, passing the task itself first when bound."""
        if self.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.run(*args, **kwargs)

    @property
    def request(self) -> Request:
        """The request of the attempt running in this thread."""
        request = current_request()
        if request is None:
            return Request(id="", run_id="", node_id="", task=self.name, attempt=1)
        return request

    def retry(
        self,
        countdown: float | None = None,
        exc: BaseException | None = None,
        max_retries: int | None = None,
    ) -> NoReturn:
        """Stop this attempt and run the task again later.

        Args:
            countdown: seconds to wait; by default the task's backoff policy.
            exc: the error to record, and to raise if no retries are left.
            max_retries: overrides the task's limit for this decision.

        Raises:
            InvalidOption: if ``countdown`` or ``max_retries`` is invalid; the
                attempt then fails with that error instead of retrying.
        """
        given = {"countdown": countdown, "max_retries": max_retries}
        checked = check_options(
            {key: value for key, value in given.items() if value is not None},
            "retry()",
        )
        raise Retry(checked.get("countdown"), exc, checked.get("max_retries"))

    def replace(self, canvas: Canvas) -> NoReturn:
        """End this task and put ``canvas`` in its place in the running graph.

        The canvas's value feeds whatever this task's value would have fed,
        and this task's links and errbacks follow the canvas instead.
        """
        raise Replace(canvas)

    # -- signatures -----------------------------------------------------------

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """Build a signature of this task with partial arguments."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """Build an immutable signature: it ignores upstream values."""
        return self.signature(args, kwargs, immutable=True)

    def signature(
        self,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """Build a signature with arguments and options."""
        immutable = bool(options.pop("immutable", False))
        sig = Signature(self.name, args, kwargs, options, immutable=immutable)
        return sig.bind(self.app)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Submit one call of this task as a run of one node."""
        return self.app._submit_call(self, args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Submit one call with options (queue, countdown, eta, run_id, link...)."""
        return self.app.submit(self.signature(args, kwargs), (), {}, options)

    def apply_many(
        self,
        args_list: Iterable[Sequence[Any]],
        *,
        run_ids: Sequence[str] | None = None,
        **options: Any,
    ) -> ResultSet:
        """Submit one run per item of ``args_list``, in few round trips.

        Each item is a tuple or list of positional arguments, as for
        `starmap`, and every run gets ``options``. ``run_ids``, one per
        item, makes the call idempotent. See `App.submit_many`. Items take
        no keyword arguments. To pass those, submit signatures with
        ``app.submit_many([task.s(**kwargs) for kwargs in args_list])``.
        Unlike `map`, `starmap` and `chunks`, which run all calls in one
        run, each call here is its own run with its own result.
        """
        call = "apply_many()"
        items = _bulk_items(args_list, call, "args_list")
        for index, args in enumerate(items):
            _check_args_item(args, index)
        if "run_id" in options:
            raise InvalidOption(
                "apply_many(): run_id is not an option here; pass run_ids=[...] "
                f"with one id per item of args_list.{_nothing_submitted(call)}"
            )
        ids = self.app._bulk_run_ids(run_ids, len(items), call, "args_list")
        _check_shared_options(options, call)
        if not items:
            return ResultSet([], self.app)
        # Every run is the same canvas with other arguments, so it is
        # compiled once, and each run's spec is a copy with its own
        # arguments in the task's node, which compiles first ("0").
        try:
            _, template = self.app._compile_run(self.signature(()), (), None, options)
        except CanvasError as err:
            raise _at_index(err, "args_list[0]", call) from err
        runs: list[tuple[str, GraphSpec]] = []
        with paused_gc():
            for index, (args, run_id) in enumerate(zip(items, ids, strict=True)):
                try:
                    checked_id = _check_run_id(run_id)
                    encoded = encode_args(args)
                except CanvasError as err:
                    raise _at_index(err, f"args_list[{index}]", call) from err
                runs.append((checked_id, template.with_root_args(encoded)))
        return self.app._store_runs(runs, call)

    def map(self, items: Iterable[Any]) -> Signature:
        """Call the task on each item in one worker: Celery's ``task.map``."""
        return xmap(self.s(), items).bind(self.app)

    def starmap(self, items: Iterable[Iterable[Any]]) -> Signature:
        """Call the task with each item unpacked, in one worker."""
        return starmap(self.s(), items).bind(self.app)

    def chunks(self, items: Iterable[Iterable[Any]], n: int) -> Group:
        """Split the calls into a group of ``n``-sized chunks."""
        return chunks(self.s(), items, n).bind(self.app)

    def __repr__(self) -> str:
        return f"<task {self.name}>"


class App:
    """A Stem application: a task registry bound to a broker URL.

    Args:
        url: the driver URL; ``memory://`` runs everything in this process,
            ``redis://host:port/db`` uses Redis. Without it, the app takes
            the ``STEM_URL`` environment variable, and ``memory://`` when
            that is unset or empty.
        name: a label for logs.
        default_queue: the queue of tasks and nodes that name none.
        beat_schedule: schedule entries for beat, as in Celery: each name
            maps to ``task``, ``schedule`` and optional ``args``, ``kwargs``,
            ``options`` and ``timezone``. See also `periodic`.
        settings: passed to the driver.

    Raises:
        InvalidSchedule: if a ``beat_schedule`` entry is invalid.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        name: str = "stem",
        default_queue: str = "default",
        beat_schedule: Mapping[str, Mapping[str, Any]] | None = None,
        **settings: Any,
    ) -> None:
        self.url = url or os.environ.get(URL_VARIABLE) or "memory://"
        self.name = name
        self.default_queue = default_queue
        self.settings = settings
        self.tasks: dict[str, Task] = {}
        #: Schedule entries that `beat` fires, by name.
        self.beat_entries: dict[str, Entry] = {}
        self._driver: Driver | None = None
        self._driver_lock = threading.Lock()
        #: Filled options of calls that set no option, by task and defaults.
        self._filled_defaults: dict[tuple[str, Hashable], NodeOptions] = {}
        #: Compiled runs of calls with no arguments or options, by task and defaults.
        self._call_templates: dict[tuple[str, Hashable], GraphSpec] = {}
        self._register_builtins()
        for entry_name, fields in (beat_schedule or {}).items():
            self._add_entry(entry_from_mapping(entry_name, fields))

    def __repr__(self) -> str:
        return f"<App {self.name} {redact(self.url)}>"

    # -- tasks ----------------------------------------------------------------

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        bind: bool = False,
        autoretry_for: Iterable[type[BaseException]] = (),
        **options: Any,
    ) -> Any:
        """Register a function as a task; use as ``@app.task`` or ``@app.task(...)``.

        Args:
            name: the registered name; defaults to ``module.qualname``, with a
                script's file name in place of ``__main__``.
            bind: pass the task itself as the first argument (``self``).
            autoretry_for: exception classes that trigger a retry by policy.
            options: default signature options: ``queue``, ``max_retries``,
                ``retry_backoff``, ``retry_backoff_max``, ``retry_jitter``,
                ``default_retry_delay``, ``priority``, ``time_limit``...
        """

        def register(function: Callable[..., Any]) -> Task:
            task_name = name or task_name_of(function)
            Signature(task_name, options=options)  # checks the options now
            made = Task(
                self,
                function,
                task_name,
                bind=bind,
                autoretry_for=tuple(autoretry_for),
                options=options,
            )
            self.tasks[task_name] = made
            return made

        if fn is not None:
            return register(fn)
        return register

    def get_task(self, name: str) -> Task:
        """Return a registered task by name; raises `TaskNotRegistered`."""
        task = self.tasks.get(name)
        if task is None:
            raise TaskNotRegistered(
                f"Task {name!r} is not registered with {self!r}; import the module "
                "that defines it before starting the worker."
            )
        return task

    # -- driver and submission -------------------------------------------------

    @property
    def driver(self) -> Driver:
        """The driver for this app's URL, made on first use."""
        with self._driver_lock:
            if self._driver is None:
                self._driver = load_driver(self.url, **self.settings)
            return self._driver

    def submit(
        self,
        canvas: Canvas,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> AsyncResult:
        """Compile a canvas and submit it as one run.

        ``run_id`` among the options makes submission idempotent: a second
        submit with the same id returns the existing run. ``link`` and
        ``link_error`` attach to the canvas as a whole.
        """
        run_id, spec = self._compile_run(canvas, args, kwargs, options)
        created = self.driver.submit(run_id, spec)
        if created:
            log.debug("Submitted run %s with %d nodes.", run_id, len(spec.nodes))
        return AsyncResult(run_id, self)

    def submit_many(
        self,
        canvases: Iterable[Canvas],
        *,
        run_ids: Sequence[str] | None = None,
        **options: Any,
    ) -> ResultSet:
        """Submit each canvas as its own run, in few round trips to the store.

        The bulk form of `submit`, like BullMQ's ``Queue.addBulk``: every
        canvas is compiled and every value serialised before anything is
        written, so one invalid canvas rejects the whole call. Each run is
        still stored in its own atomic step; on Redis the steps go in one
        pipeline per batch of runs.

        Args:
            canvases: the signatures, chains, groups or chords to submit.
            run_ids: one id per canvas, to make the submit idempotent as
                ``run_id`` does for `submit`; new ids by default.
            options: submit options for every run (``queue``, ``countdown``,
                ``link``...), as `submit` takes them; ``run_id`` is not one.

        Returns:
            A `ResultSet` of the runs, in the order of ``canvases``.

        Raises:
            NotSerializable, InvalidOption, InvalidCanvas: for ``canvases``
                or ``run_ids`` that are not lists, an invalid shared option,
                or the first invalid canvas, naming its index; nothing was
                written.
            PartialSubmitError: if the store failed for some runs; the
                others were stored. Its ``submitted`` and ``failed`` list
                them. Its ``run_ids`` has every run's id, generated ones
                included, for the same call again with ``run_ids=``.
        """
        if "run_id" in options:
            raise InvalidOption(
                "submit_many(): run_id is not an option here; pass run_ids=[...] "
                f"with one id per canvas.{_nothing_submitted('submit_many()')}"
            )
        return self._submit_many(
            canvases, run_ids, options, call="submit_many()", items_name="canvases"
        )

    def _submit_many(
        self,
        canvases: Iterable[Canvas],
        run_ids: Sequence[str] | None,
        options: dict[str, Any],
        *,
        call: str,
        items_name: str,
    ) -> ResultSet:
        """Submit the runs of `submit_many`; errors name ``call`` and ``items_name``."""
        items = _bulk_items(canvases, call, items_name)
        ids = self._bulk_run_ids(run_ids, len(items), call, items_name)
        _check_shared_options(options, call)
        runs: list[tuple[str, GraphSpec]] = []
        with paused_gc():
            for index, (canvas, run_id) in enumerate(zip(items, ids, strict=True)):
                try:
                    runs.append(
                        self._compile_run(
                            canvas, (), None, {**options, "run_id": run_id}
                        )
                    )
                except CanvasError as err:
                    raise _at_index(err, f"{items_name}[{index}]", call) from err
        return self._store_runs(runs, call)

    def _bulk_run_ids(
        self, run_ids: Sequence[str] | None, count: int, call: str, items_name: str
    ) -> list[Any]:
        """Return the run id of each item of a bulk call, None where none was given.

        Raises:
            InvalidOption: if the number of ids is not ``count``, or an id
                repeats. Other invalid ids are rejected per item.
        """
        if run_ids is None:
            return [None] * count
        suffix = _nothing_submitted(call)
        # A string is iterable, so "ab" would pass as the ids "a" and "b".
        if isinstance(run_ids, (str, bytes)) or not isinstance(run_ids, Iterable):
            raise InvalidOption(
                f"{call}: run_ids is {run_ids!r}, not a list of run ids. Pass "
                f"a list with one run id per item of {items_name}.{suffix}"
            )
        ids: list[Any] = list(run_ids)
        if len(ids) != count:
            raise InvalidOption(
                f"{call}: {len(ids)} run_ids for {count} {items_name}; "
                f"pass one run id per item of {items_name}.{suffix}"
            )
        first_index: dict[str, int] = {}
        for index, run_id in enumerate(ids):
            if not isinstance(run_id, str):
                continue  # _check_run_id rejects it, naming its index
            if run_id in first_index:
                raise InvalidOption(
                    f"{call}: run_ids[{index}] {run_id!r} repeats "
                    f"run_ids[{first_index[run_id]}]; each canvas needs a run "
                    "id of its own, or the later one is taken as submitted."
                    f"{suffix}"
                )
            first_index.setdefault(run_id, index)
        return ids

    def _store_runs(self, runs: list[tuple[str, GraphSpec]], call: str) -> ResultSet:
        """Store compiled runs with one `submit_many` of the driver.

        Raises:
            PartialSubmitError: if the store failed for some runs.
        """
        outcomes = self.driver.submit_many(runs) if runs else []
        failed = {
            run_id: outcome
            for (run_id, _), outcome in zip(runs, outcomes, strict=True)
            if isinstance(outcome, Exception)
        }
        if failed:
            submitted = [run_id for run_id, _ in runs if run_id not in failed]
            first_id, first_error = next(iter(failed.items()))
            raise PartialSubmitError(
                f"{call}: {len(failed)} of {len(runs)} runs failed to "
                f"submit; the first, run {first_id}, with: {first_error}. The "
                f"other {len(submitted)} runs were submitted. Make the same "
                "call again with run_ids set to this error's .run_ids, and the "
                "runs already stored are not stored twice.",
                submitted,
                failed,
                [run_id for run_id, _ in runs],
            )
        log.debug("Submitted %d runs.", len(runs))
        return ResultSet([AsyncResult(run_id, self) for run_id, _ in runs], self)

    def _submit_call(
        self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncResult:
        """Submit one call of a task with no options, as `Task.delay` does.

        The task's run is compiled once while its defaults stay the same,
        and each call's spec is a copy with the call's arguments.
        """
        template = self._call_template(task)
        if template is None:
            return self.submit(task.signature(args, kwargs))
        with paused_gc():
            spec = template.with_root_args(encode_args(args), encode_kwargs(kwargs))
        run_id = new_run_id()
        if self.driver.submit(run_id, spec):
            log.debug("Submitted run %s with %d nodes.", run_id, len(spec.nodes))
        return AsyncResult(run_id, self)

    def _call_template(self, task: Task) -> GraphSpec | None:
        """Return the compiled run of a task called with no arguments or options.

        It is computed again when the task's options or the app's default
        queue change. None when an option value cannot be hashed.
        """
        defaults_key = _options_key({"queue": self.default_queue, **task.options})
        if defaults_key is None:
            return None
        key = (task.name, defaults_key)
        template = self._call_templates.get(key)
        if template is None:
            template = self._compile_run(task.signature(()), (), None, None)[1]
            if len(self._call_templates) >= _FILLED_DEFAULTS_MAX:
                self._call_templates.clear()
            self._call_templates[key] = template
        return template

    def _compile_run(
        self,
        canvas: Canvas,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any] | None,
    ) -> tuple[str, GraphSpec]:
        """Return the run id and the compiled spec of one run to submit."""
        extra = dict(options or {})
        run_id = _check_run_id(extra.pop("run_id", None))
        links = extra.pop("link", None)
        errbacks = extra.pop("link_error", None)
        if links is not None or errbacks is not None:
            check_nesting(canvas)
            canvas = canvas.clone().set(link=links, link_error=errbacks)
        spec = compile_canvas(
            canvas, args, kwargs, extra, fill_options=self._options_filler()
        )
        return run_id, spec

    def apply_task_defaults(self, spec: GraphSpec) -> GraphSpec:
        """Fill node options that the canvas left unset from the task's defaults."""
        # The compiler gives nodes with equal options one shared NodeOptions,
        # so a large group computes its defaults once. The key is the object's
        # id, not its value, because NodeOptions(retry_backoff=True) equals
        # NodeOptions(retry_backoff=1.0); the spec keeps every key's object alive.
        filled: dict[tuple[str, int], NodeOptions] = {}
        nodes = []
        with paused_gc():
            for node in spec.nodes:
                key = (node.task, id(node.options))
                options = filled.get(key)
                if options is None:
                    options = filled[key] = self._filled_options(
                        node.task, node.options
                    )
                if options is not node.options:
                    node = node.model_copy(update={"options": options})
                nodes.append(node)
            return spec.model_copy(update={"nodes": nodes})

    def _options_filler(self) -> Callable[[str, NodeOptions], NodeOptions]:
        """Return a function that fills a node's unset options from its task.

        It does what `apply_task_defaults` does, for `compile_canvas` to call
        per node, and computes each task and options object's result once.
        The compiler keeps every options object alive while it runs, so an
        object's id is a stable key there.
        """
        filled: dict[tuple[str, int], NodeOptions] = {}

        def fill(task: str, options: NodeOptions) -> NodeOptions:
            key = (task, id(options))
            found = filled.get(key)
            if found is None:
                found = filled[key] = self._filled_options(task, options)
            return found

        return fill

    def _filled_options(self, task_name: str, options: NodeOptions) -> NodeOptions:
        task = self.tasks.get(task_name)
        defaults = {"queue": self.default_queue}
        if task is not None:
            defaults.update(task.options)
        defaults_key = _options_key(defaults)
        if not options.model_fields_set and defaults_key is not None:
            # Most calls set no option of their own, so the filled options
            # of a task are computed once while its defaults stay the same.
            key = (task_name, defaults_key)
            filled = self._filled_defaults.get(key)
            if filled is None:
                filled = self._fill_unset(task_name, options, defaults)
                if len(self._filled_defaults) >= _FILLED_DEFAULTS_MAX:
                    self._filled_defaults.clear()
                self._filled_defaults[key] = filled
            return filled
        return self._fill_unset(task_name, options, defaults)

    def _fill_unset(
        self, task_name: str, options: NodeOptions, defaults: Mapping[str, Any]
    ) -> NodeOptions:
        unset = {
            key: value
            for key, value in defaults.items()
            if key in NodeOptions.model_fields and getattr(options, key) is None
        }
        if not unset:
            return options
        checked = Signature(task_name, options=unset).options
        return options.model_copy(update=checked)

    def call(
        self, signature: Signature, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> Any:
        """Run a signature's task inline, with no store and no worker."""
        return self.get_task(signature.task).run(*args, **kwargs)

    def AsyncResult(self, run_id: str) -> AsyncResult:  # noqa: N802 - Celery's name
        """Re-attach to a run by its id."""
        return AsyncResult(run_id, self)

    def worker(
        self,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        pool: str = "threads",
        name: str | None = None,
        unknown_task_grace_s: float | None = None,
    ) -> Worker:
        """Make a worker; ``with app.worker():`` runs it in the background.

        ``unknown_task_grace_s`` defaults to `DEFAULT_UNKNOWN_TASK_GRACE_S`
        (see `Worker`).
        """
        from stem.engine.worker import DEFAULT_UNKNOWN_TASK_GRACE_S, Worker

        if unknown_task_grace_s is None:
            unknown_task_grace_s = DEFAULT_UNKNOWN_TASK_GRACE_S
        return Worker(
            self,
            concurrency=concurrency,
            queues=queues,
            pool=pool,
            name=name,
            unknown_task_grace_s=unknown_task_grace_s,
        )

    # -- beat -----------------------------------------------------------------

    def periodic(
        self,
        schedule: Any,
        canvas: Canvas | None = None,
        *,
        name: str | None = None,
        timezone: Any = None,
        **options: Any,
    ) -> Any:
        """Declare a schedule entry that beat fires; also a decorator for tasks.

        ``app.periodic("*/15 * * * *", report.s("daily"))`` schedules a
        signature or any canvas. Above ``@app.task``, ``@app.periodic(60.0)``
        schedules the task called with no arguments.

        Args:
            schedule: a cron expression, a number of seconds, a timedelta,
                `Cron` or `Interval`.
            canvas: what each fire submits; leave it out to decorate a task.
            name: the entry's unique name; defaults to the task name of a
                signature or decorated task, and is required for other canvases.
            timezone: IANA name or tzinfo of a cron expression; UTC by default.
            options: submit options, such as ``queue`` or ``priority``.

        Returns:
            The new `Entry`; without ``canvas``, a decorator that returns the
            task it decorates.

        Raises:
            InvalidSchedule: naming the entry, the bad value and the fix.
        """

        def declare(target: Canvas, default_name: str | None) -> Entry:
            entry_name = name or default_name
            if entry_name is None:
                raise InvalidSchedule(
                    f"periodic(): {target!r} needs a name; pass name='...', "
                    "because only a signature or task has a default name."
                )
            entry = make_entry(
                entry_name, schedule, target, timezone=timezone, options=options
            )
            self._add_entry(entry)
            return entry

        if canvas is not None:
            default = canvas.task if isinstance(canvas, Signature) else None
            return declare(canvas, default)

        def decorate(task: Task) -> Task:
            if not isinstance(task, Task):
                raise InvalidSchedule(
                    f"@app.periodic decorates a task, not {task!r}; put it above "
                    "@app.task."
                )
            declare(task.s(), task.name)
            return task

        return decorate

    def beat(self, **kwargs: Any) -> Beat:
        """Make a beat for this app's entries; ``with app.beat():`` runs it."""
        from stem.engine.beat import Beat

        return Beat(self, **kwargs)

    def _add_entry(self, entry: Entry) -> None:
        if entry.name in self.beat_entries:
            raise InvalidSchedule(
                f"Schedule entry {entry.name!r} is declared twice; give each "
                "entry its own name."
            )
        self.beat_entries[entry.name] = entry

    def close(self) -> None:
        """Close the driver, if one was made."""
        with self._driver_lock:
            if self._driver is not None:
                self._driver.close()
                self._driver = None

    def _register_builtins(self) -> None:
        def run_map(task: dict[str, Any], it: list[Any]) -> list[Any]:
            target = self.get_task(task["task"])
            return [target.run(item, *task["args"], **task["kwargs"]) for item in it]

        def run_starmap(task: dict[str, Any], it: list[list[Any]]) -> list[Any]:
            target = self.get_task(task["task"])
            return [target.run(*item, *task["args"], **task["kwargs"]) for item in it]

        self.task(run_map, name="stem.map")
        self.task(run_starmap, name="stem.starmap")


def _check_shared_options(options: Mapping[str, Any], call: str) -> None:
    """Check once the submit options that every run of a bulk call gets.

    Raises:
        InvalidOption, InvalidCanvas: for the first invalid option, naming
            ``call`` rather than an item, such as
            ``apply_many() > options['queue']``.
    """
    suffix = _nothing_submitted(call)
    plain = {
        name: value
        for name, value in options.items()
        if name not in ("link", "link_error")
    }
    try:
        check_options(plain, call)
    except InvalidOption as err:
        raise InvalidOption(f"{err}{suffix}") from err
    try:
        # Signature.set checks that each link and errback is a canvas, and
        # compiling encodes their arguments, as each item's compile would.
        compile_canvas(
            Signature("stem.check").set(
                link=options.get("link"), link_error=options.get("link_error")
            )
        )
    except NotSerializable as err:
        where = f"{call} > {err.path}" if err.path else call
        raise NotSerializable(where, f"{err.problem}.{suffix}") from err
    except CanvasError as err:
        raise type(err)(f"{call}: {err}{suffix}") from err


def _nothing_submitted(call: str) -> str:
    """Return the sentence that ends every error a bulk call raises before storing."""
    return f" Nothing of this {call} call was submitted."


def _bulk_items(items: Any, call: str, items_name: str) -> list[Any]:
    """Return the items of a bulk call as a list.

    Raises:
        InvalidCanvas: if ``items`` is not an iterable of items. A string,
            a mapping and a canvas are iterable (or indexable) but are one
            value, not a list of items, so they are rejected too.
    """
    suffix = _nothing_submitted(call)
    if isinstance(items, Canvas):
        raise InvalidCanvas(
            f"{call}: {items_name} is {items!r}, one canvas. Pass a list of "
            f"canvases, such as [canvas].{suffix}"
        )
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise InvalidCanvas(
            f"{call}: {items_name} is {items!r}, not a list. Pass a list or "
            f"other iterable with one item per run.{suffix}"
        )
    return list(items)


def _check_args_item(args: Any, index: int) -> None:
    """Check that one item of ``apply_many()`` is a tuple or list of arguments.

    Raises:
        InvalidCanvas: naming the item and how to pass it instead.
    """
    suffix = _nothing_submitted("apply_many()")
    if isinstance(args, Mapping):
        # Celery users pass keyword arguments as a dict, but apply_many()
        # items carry positional arguments only.
        raise InvalidCanvas(
            f"apply_many(): item {index} is {args!r}, a mapping, but each item "
            "is a tuple or list of positional arguments. To pass keyword "
            "arguments, submit signatures instead: "
            f"app.submit_many([task.s(**kwargs) for kwargs in args_list]).{suffix}"
        )
    if not isinstance(args, (list, tuple)):
        raise InvalidCanvas(
            f"apply_many(): item {index} is {args!r}, not a tuple or list of "
            f"arguments. Pass ({args!r},) for a single argument.{suffix}"
        )


def _at_index(error: CanvasError, item: str, call: str) -> CanvasError:
    """Return a copy of a canvas error that names the item of the bulk call."""
    suffix = _nothing_submitted(call)
    if isinstance(error, NotSerializable):
        return NotSerializable(f"{item} > {error.path}", f"{error.problem}.{suffix}")
    return type(error)(f"{item}: {error}{suffix}")


def _check_run_id(run_id: Any) -> str:
    """Return the run id given at submit, or a new one when none was given."""
    if run_id is None:
        return new_run_id()
    if not isinstance(run_id, str) or not run_id.strip():
        raise InvalidOption(
            f"apply_async(): run_id {run_id!r} is invalid; pass a non-empty string, "
            "or leave it out to get a new id."
        )
    if any(unicodedata.category(char) in ("Cc", "Cf", "Cs") for char in run_id):
        raise InvalidOption(
            f"apply_async(): run_id {run_id!r} contains a control or format "
            "character, which would reach terminals unescaped; use printable "
            "characters only."
        )
    return run_id


def _options_key(options: Mapping[str, Any]) -> Hashable | None:
    """Return a hashable key of option values that distinguishes True, 1 and 1.0.

    Returns None when a value cannot be hashed.
    """
    key = tuple((name, type(value), value) for name, value in options.items())
    try:
        hash(key)
    except TypeError:
        return None
    return key


def task_name_of(function: Callable[..., Any]) -> str:
    """Return the default task name: ``module.qualname``, never ``__main__``."""
    module = function.__module__
    if module == "__main__":
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        if main_file:
            module = Path(main_file).stem
    return f"{module}.{function.__qualname__}"
