"""The network package's errors, one tree; the CLI turns every `NetworkError` into exit 2.

    NetworkError
    ├── ProfileError        a profile is unknown or invalid (also a ValueError)
    ├── NetworkUnavailable  this machine cannot shape a link: not root, no namespaces, no TUN
    │   └── BuildError      the delay element cannot be compiled (no C compiler)
    └── ElementFailed       the delay element or the netem setup failed while running
"""

from __future__ import annotations


class NetworkError(Exception):
    """Base of every error of bench.network."""


class ProfileError(NetworkError, ValueError):
    """A network profile is unknown or invalid; the message names the file and key."""


class NetworkUnavailable(NetworkError):
    """A shaped link cannot be made here; never answered by falling back to loopback."""


class BuildError(NetworkUnavailable):
    """bench/network/delayd.c could not be compiled."""


class ElementFailed(NetworkError):
    """The delay element (or a netem setup command) failed after it was started."""
