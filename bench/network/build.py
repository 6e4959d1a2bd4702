"""Compile the C helpers (delayd.c, nsexec.c) on first use, into a cache keyed by their source.

`cc -O2` (or `$CC`) into `$XDG_CACHE_HOME/rtbench/` (default `~/.cache/rtbench/`), falling
back to a directory under the system's temp dir when that is not writable. The binary's
name carries a hash of the source, so an edited delayd.c is rebuilt and concurrent builds
never see a half-written file (each writes its own temp file, then renames it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.network.errors import BuildError

HERE = Path(__file__).parent
FLAGS = ("-O2", "-Wall", "-std=gnu11")


def _cache_dirs() -> list[Path]:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return [Path(base) / "rtbench", Path(tempfile.gettempdir()) / f"rtbench-{os.getuid()}"]


def compiler() -> str:
    """The C compiler's path: `$CC`, else cc, gcc or clang on PATH."""
    names = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise BuildError(
        f"no C compiler found (tried {', '.join(names)}): the network helpers "
        "(bench/network/delayd.c, nsexec.c) are compiled on first use; install one "
        "(Debian: apt-get install gcc) or set CC")


def delayd_path() -> Path:
    """The compiled delay element (delayd.c)."""
    return binary("delayd")


def nsexec_path() -> Path:
    """The compiled namespace launcher (nsexec.c)."""
    return binary("nsexec")


def binary(name: str) -> Path:
    """bench/network/NAME.c compiled, building it if this source has not been built yet."""
    path = HERE / f"{name}.c"
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror}") from exc
    digest = hashlib.sha256(source + " ".join(FLAGS).encode()).hexdigest()[:16]
    errors = []
    for directory in _cache_dirs():
        target = directory / f"{name}-{digest}"
        if os.access(target, os.X_OK):
            return target
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=directory)
            os.close(fd)
        except OSError as exc:
            errors.append(f"{directory}: {exc.strerror}")
            continue
        try:
            cc = compiler()
            proc = subprocess.run([cc, *FLAGS, "-o", tmp, str(path)], capture_output=True,
                                  text=True, timeout=120, check=False)
            if proc.returncode != 0:
                raise BuildError(f"compiling {path} with {cc} failed:\n{proc.stderr[-3000:]}")
            os.chmod(tmp, 0o755)
            os.replace(tmp, target)
            return target
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise BuildError(f"no writable directory for the compiled {name}: {'; '.join(errors)}")
