"""Network profiles: run clients and servers on the two ends of a shaped link.

- `profiles`: the profiles as data (built in, `[tool.rtbench.net.*]`, a TOML file).
- `network`: `Network(profile)`, the two namespaces and their link, as a context manager.
- `netem`: the kernel's netem on a veth pair, where the kernel has it.
- `delayd.c`, `build`, `element`: the delay element of our own where it has not.
- `namespaces`: entering a namespace from Python (setns), finding processes inside one.
- `probe`: RTT, UDP echo and goodput across a `Network` (tests, describe(), accuracy).
- `errors`: the exception tree; every `NetworkError` is a usage error (exit 2).

docs/network.md has the profiles, the mechanism and its measured accuracy.
"""

from bench.network.errors import (
    BuildError,
    ElementFailed,
    NetworkError,
    NetworkUnavailable,
    ProfileError,
)
from bench.network.network import CLIENT_ADDR, SERVER_ADDR, Network
from bench.network.profiles import BUILTIN, Profile, get_profile, get_profiles, load_profiles

__all__ = [
    "BUILTIN", "CLIENT_ADDR", "SERVER_ADDR", "BuildError", "ElementFailed", "Network",
    "NetworkError", "NetworkUnavailable", "Profile", "ProfileError", "get_profile",
    "get_profiles", "load_profiles",
]
