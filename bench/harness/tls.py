"""A throwaway certificate authority and server certificate for `rtbench run --tls`.

Made with trustme (a CA and certificates from `cryptography`, no openssl subprocess):
the CA signs one server certificate valid for 127.0.0.1, ::1 and localhost, plus any
other addresses or names the servers are reached by. The servers get `cert` and `key`
(`rtbench serve --tls-cert --tls-key`), the clients trust `ca` only (`--tls-ca`): every
client verifies the certificate, none switches verification off.

    python -m bench.harness.tls DIR [NAME ...]   # writes DIR/ca.pem, DIR/cert.pem, DIR/key.pem
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True, slots=True)
class CertPaths:
    ca: Path  # the CA certificate the clients trust (PEM)
    cert: Path  # the server's certificate chain, its own first (PEM)
    key: Path  # the server's private key (PEM), readable by the owner only


def make_certs(directory: Path | str, extra: Sequence[str] = ()) -> CertPaths:
    """A new CA and a server certificate for LOOPBACK and `extra` (IP addresses or DNS
    names), written to `directory` (created if need be) as ca.pem, cert.pem and key.pem."""
    import trustme  # imported on use: only a --tls run needs it

    names = list(dict.fromkeys([*LOOPBACK, *extra]))
    ca = trustme.CA(organization_name="rtbench throwaway CA")
    server = ca.issue_cert(*names, common_name="rtbench server")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = CertPaths(out / "ca.pem", out / "cert.pem", out / "key.pem")
    ca.cert_pem.write_to_path(str(paths.ca))
    with open(paths.cert, "wb") as f:
        for blob in server.cert_chain_pems:
            f.write(blob.bytes())
    # the key: owner-only from the start, never world-readable for a moment
    fd = os.open(paths.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(server.private_key_pem.bytes())
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.harness.tls",
        description="Write a throwaway CA (ca.pem) and a server certificate and key "
                    "(cert.pem, key.pem) for 127.0.0.1, ::1, localhost and NAMEs.")
    parser.add_argument("dir", type=Path, help="directory to write the three files to")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="more IP addresses or DNS names the certificate is valid for")
    args = parser.parse_args(argv)
    paths = make_certs(args.dir, args.names)
    print(f"CA {paths.ca}\ncertificate {paths.cert}\nkey {paths.key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
