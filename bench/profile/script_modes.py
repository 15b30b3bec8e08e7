"""Compare the Redis CPU of the driver's scripts with EVALSHA and with FCALL.

Run from the repository root:
``python bench/profile/script_modes.py [--repeats R] [--chain]``.
Each repeat submits, claims and completes ``--tasks`` runs through the
driver twice, once with EVALSHA and once with FCALL of the driver's
Functions library, and the order of the two alternates between repeats. So
a change in the machine's load during the run biases neither mode. Each
figure is Redis CPU per call (used_cpu_user + used_cpu_sys of INFO cpu),
min, median and max over the repeats. ``--chain`` uses a two-step chain in
place of one task, so the calls take the long path with graph.lua.
"""

from __future__ import annotations

import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])

import lua_cost
from common import arguments, private_redis
from lua_cost import REAL_SCRIPTS, Runs


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--tasks", type=int, default=5_000, help="runs per block")
    parser.add_argument("--batch", type=int, default=250, help="calls per pipeline")
    parser.add_argument("--repeats", type=int, default=8, help="repeats per mode")
    parser.add_argument(
        "--chain", action="store_true", help="time a two-step chain's first step"
    )
    options = parser.parse_args()
    if options.chain:
        compile_one = lua_cost.compile_canvas
        lua_cost.compile_canvas = lambda signature: compile_one(
            signature | signature.clone()
        )
    costs: dict[bool, dict[str, list[float]]] = {
        functions: {name: [] for name in REAL_SCRIPTS} for functions in (False, True)
    }
    with private_redis() as url:
        for repeat in range(options.repeats):
            order = (False, True) if repeat % 2 == 0 else (True, False)
            for functions in order:
                runs = Runs(
                    url,
                    options.tasks,
                    options.batch,
                    functions,
                    f"{repeat}-{functions}",
                )
                runs.complete(url, options.batch)
                for name in REAL_SCRIPTS:
                    costs[functions][name].append(runs.costs[name]["cpu"])
                runs.close()
    print(f"Redis CPU us per call, min median max, over {options.repeats} repeats")
    for functions in (False, True):
        kind = "FCALL" if functions else "EVALSHA"
        for name in REAL_SCRIPTS:
            print(f"{kind:>8} {name:>9}: {lua_cost.stats(costs[functions][name])}")
        per_task = [
            sum(costs[functions][name][repeat] for name in REAL_SCRIPTS)
            for repeat in range(options.repeats)
        ]
        print(f"{kind:>8} {'per task':>9}: {lua_cost.stats(per_task)}")


if __name__ == "__main__":
    main()
