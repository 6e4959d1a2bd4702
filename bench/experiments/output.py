"""What the standalone benchmarks share: run one measurement per target, print and save."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

Result = dict[str, Any]


def run_each(targets: str, measure: Callable[[str], Coroutine[Any, Any, Result]]) -> list[Result]:
    """Measure each comma-separated target in its own event loop; print each result as JSON."""
    results = []
    for target in targets.split(","):
        result = asyncio.run(measure(target))
        results.append(result)
        print(orjson.dumps(result).decode(), flush=True)
    return results


def write_json(path: str | None, results: Any) -> None:
    """`results` (any JSON value) to `path`, indented, its directory made if need be; nothing
    without a path."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(orjson.dumps(results, option=orjson.OPT_INDENT_2))
