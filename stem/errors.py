"""Every exception Stem raises, in one place for ``except`` clauses.

See `stem.canvas.errors` and `stem.engine.errors` for the tree.
"""

from stem.canvas.errors import CanvasError as CanvasError
from stem.canvas.errors import InvalidCanvas as InvalidCanvas
from stem.canvas.errors import InvalidOption as InvalidOption
from stem.canvas.errors import NotSerializable as NotSerializable
from stem.canvas.errors import StemError as StemError
from stem.canvas.errors import StemInternalError as StemInternalError
from stem.canvas.errors import UnboundCanvas as UnboundCanvas
from stem.canvas.errors import UndecodableValue as UndecodableValue
from stem.engine.errors import DeadLettered as DeadLettered
from stem.engine.errors import DriverError as DriverError
from stem.engine.errors import DriverNotFound as DriverNotFound
from stem.engine.errors import EngineError as EngineError
from stem.engine.errors import InvalidSchedule as InvalidSchedule
from stem.engine.errors import MaxRetriesExceededError as MaxRetriesExceededError
from stem.engine.errors import NoWorkerRunning as NoWorkerRunning
from stem.engine.errors import PartialSubmitError as PartialSubmitError
from stem.engine.errors import Replace as Replace
from stem.engine.errors import Retry as Retry
from stem.engine.errors import RunNotFound as RunNotFound
from stem.engine.errors import RunNotRetryable as RunNotRetryable
from stem.engine.errors import SoftTimeLimitExceeded as SoftTimeLimitExceeded
from stem.engine.errors import TaskError as TaskError
from stem.engine.errors import TaskNotRegistered as TaskNotRegistered
from stem.engine.errors import TimeLimitExceeded as TimeLimitExceeded
from stem.engine.errors import TimeoutError as TimeoutError
from stem.engine.errors import ValueTooLarge as ValueTooLarge
from stem.engine.result import RunCancelled as RunCancelled
