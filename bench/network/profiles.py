"""Network profiles as data: round-trip time, jitter, loss and bandwidth of the client-server link.

Built in: `loopback` (no namespaces: today's runs), `lan`, `wan` and `lossy` (`BUILTIN`).
Users add their own in `pyproject.toml`:

    [tool.rtbench.net.mobile]
    rtt_ms = 150
    jitter_ms = 10
    loss_pct = 0.5
    bandwidth_mbit = 5

or in a TOML file passed by path (`get_profile("nets/mobile.toml")`), whose top-level keys
are one profile named after the file (or its `name` key). Every value applies to each
direction of the link: `rtt_ms` is split into two equal one-way delays (`delay_ms` gives the
one-way delay instead), `jitter_ms` spreads each one-way delay uniformly by +/- that much
(never reordering packets), `loss_pct` drops that share of packets in each direction, and
`bandwidth_mbit` caps each direction (IP bytes), with `queue_ms` of buffer before the
bottleneck (default: one RTT, at least 10 ms).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import ROOT
from bench.network.errors import ProfileError

_KEYS = {
    "rtt_ms": "round-trip time added by the link, ms (or delay_ms, one way)",
    "delay_ms": "one-way delay, ms (or rtt_ms)",
    "jitter_ms": "+/- spread of each one-way delay, ms (uniform, no reordering)",
    "loss_pct": "packets dropped in each direction, percent (0-100)",
    "bandwidth_mbit": "capacity of each direction, Mbit/s of IP bytes (absent: unlimited)",
    "queue_ms": "buffer before the bandwidth limit, ms of transmission (needs bandwidth_mbit)",
    "description": "one line for the report",
    "name": "the profile's name (a file passed by path only)",
}


@dataclass(frozen=True)
class Profile:
    """One link shape. `loopback` is the one profile that runs without namespaces."""

    name: str
    delay_ms: float = 0.0  # one way, each direction
    jitter_ms: float = 0.0
    loss_pct: float = 0.0  # each direction
    bandwidth_mbit: float | None = None
    queue_ms: float | None = None
    description: str = ""
    loopback: bool = False

    @property
    def rtt_ms(self) -> float:
        return 2 * self.delay_ms

    @property
    def effective_queue_ms(self) -> float | None:
        """The bottleneck's buffer, in ms of transmission (None without a bandwidth limit)."""
        if self.bandwidth_mbit is None:
            return None
        return self.queue_ms if self.queue_ms is not None else max(self.rtt_ms, 10.0)

    def to_dict(self) -> dict[str, Any]:
        """The profile as written into meta.json."""
        out = asdict(self)
        out["rtt_ms"] = self.rtt_ms
        out["effective_queue_ms"] = self.effective_queue_ms
        return out


BUILTIN: dict[str, Profile] = {
    "loopback": Profile("loopback", loopback=True,
                        description="no namespaces: client and server on 127.0.0.1"),
    "lan": Profile("lan", delay_ms=0.5, description="a local network: 1 ms RTT"),
    "wan": Profile("wan", delay_ms=50.0, bandwidth_mbit=50.0,
                   description="cross-region: 100 ms RTT, 50 Mbit/s"),
    "lossy": Profile("lossy", delay_ms=50.0, loss_pct=1.0, bandwidth_mbit=10.0,
                     description="a poor mobile link: 100 ms RTT, 1 % loss, 10 Mbit/s"),
}


def _number(where: str, key: str, value: object, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProfileError(f"{where}: {key} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low or (high is not None and v > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise ProfileError(f"{where}: {key} must be {bound}, got {value!r}")
    return v


def parse_profile(name: str, table: dict[str, Any], where: str) -> Profile:
    """A profile from one TOML table; `where` names it in errors (file and section)."""
    if not isinstance(table, dict):
        raise ProfileError(f"{where}: expected a table of profile keys, got {table!r}")
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        allowed = "; ".join(f"{k}: {v}" for k, v in _KEYS.items())
        hint = " (loss is loss_pct, in percent)" if "loss" in unknown else ""
        raise ProfileError(f"{where}: unknown key(s) {', '.join(unknown)}{hint}. "
                           f"Allowed: {allowed}")
    if "rtt_ms" in table and "delay_ms" in table:
        raise ProfileError(f"{where}: give rtt_ms or delay_ms (one way), not both")
    delay = 0.0
    if "rtt_ms" in table:
        delay = _number(where, "rtt_ms", table["rtt_ms"], 0, 60_000) / 2
    elif "delay_ms" in table:
        delay = _number(where, "delay_ms", table["delay_ms"], 0, 30_000)
    jitter = _number(where, "jitter_ms", table.get("jitter_ms", 0), 0)
    if jitter > delay:
        raise ProfileError(f"{where}: jitter_ms ({jitter:g}) must not exceed the one-way delay "
                           f"({delay:g} ms)")
    loss = _number(where, "loss_pct", table.get("loss_pct", 0), 0, 100)
    if loss >= 100:
        raise ProfileError(f"{where}: loss_pct must be below 100 (nothing would get through)")
    bandwidth = None
    if "bandwidth_mbit" in table:
        bandwidth = _number(where, "bandwidth_mbit", table["bandwidth_mbit"], 0, 100_000)
        if bandwidth < 0.01:
            raise ProfileError(f"{where}: bandwidth_mbit must be at least 0.01, got {bandwidth:g}")
    queue = None
    if "queue_ms" in table:
        if bandwidth is None:
            raise ProfileError(f"{where}: queue_ms needs bandwidth_mbit (it is the buffer "
                               "before the bandwidth limit)")
        queue = _number(where, "queue_ms", table["queue_ms"], 0.1, 60_000)
    description = table.get("description", "")
    if not isinstance(description, str):
        raise ProfileError(f"{where}: description must be a string, got {description!r}")
    return Profile(name, delay, jitter, loss, bandwidth, queue, description)


def _check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ProfileError(f"{where}: a profile name is letters, digits, '-' and '_', "
                           f"got {name!r}")
    return name


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ProfileError(f"cannot read network profiles from {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from exc


def load_profiles(pyproject: Path | None = None) -> dict[str, Profile]:
    """The built-in profiles and those of `[tool.rtbench.net.*]` in `pyproject` (the repo's)."""
    path = pyproject if pyproject is not None else ROOT / "pyproject.toml"
    profiles = dict(BUILTIN)
    if not path.exists():
        return profiles
    doc = _read_toml(path)
    tables = doc.get("tool", {}).get("rtbench", {}).get("net", {})
    if not isinstance(tables, dict):
        raise ProfileError(f"{path}: [tool.rtbench.net] must hold one table per profile")
    for name, table in tables.items():
        where = f"{path} [tool.rtbench.net.{name}]"
        _check_name(name, where)
        if name in BUILTIN:
            raise ProfileError(f"{where}: {name!r} is a built-in profile; give yours another "
                               f"name (built in: {', '.join(BUILTIN)})")
        profiles[name] = parse_profile(name, table, where)
    return profiles


def load_profile_file(path: Path) -> Profile:
    """The one profile of a TOML file: its top-level keys, named by `name` or the file's stem."""
    doc = _read_toml(path)
    name = _check_name(doc.get("name", path.stem), str(path))
    if name in BUILTIN:
        raise ProfileError(f"{path}: {name!r} is a built-in profile; name yours otherwise")
    return parse_profile(name, {k: v for k, v in doc.items() if k != "name"}, str(path))


def get_profile(spec: str, pyproject: Path | None = None) -> Profile:
    """A profile by name (built in or from pyproject.toml) or by the path of a .toml file."""
    if spec.endswith(".toml") or "/" in spec:
        return load_profile_file(Path(spec))
    profiles = load_profiles(pyproject)
    if spec not in profiles:
        raise ProfileError(f"unknown network profile {spec!r}; known: {', '.join(profiles)} "
                           "(add one under [tool.rtbench.net.<name>] in pyproject.toml, or "
                           "pass the path of a .toml file)")
    return profiles[spec]


def get_profiles(specs: str, pyproject: Path | None = None) -> list[Profile]:
    """Comma-separated profile names or paths (`--net loopback,wan`), each once."""
    names = [s.strip() for s in specs.split(",") if s.strip()]
    if not names:
        raise ProfileError("no network profile given")
    if len(set(names)) != len(names):
        raise ProfileError(f"a network profile is named twice in {specs!r}")
    return [get_profile(n, pyproject) for n in names]
