"""Generate a self-signed OPC UA application certificate and key (if absent).

``edgeflow certs --out certs/ --app-uri urn:edgeflow:client`` writes
``<name>_cert.der`` and ``<name>_key.pem``; existing files are kept.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from pathlib import Path

# Imported eagerly: anyio loads its file module lazily, and a lazy import racing the OPC UA
# server thread's imports trips a CPython 3.11 compiler bug ("AST constructor recursion").
import anyio._core._fileio  # noqa: F401
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

__all__ = ["ensure_certificate", "main"]


def ensure_certificate(
    out: Path,
    *,
    name: str = "edgeflow",
    app_uri: str = "urn:edgeflow:client",
    server: bool = False,
) -> tuple[Path, Path]:
    """Return ``(cert.der, key.pem)`` under ``out``, creating them when missing."""
    out.mkdir(parents=True, exist_ok=True)
    cert, key = out / f"{name}_cert.der", out / f"{name}_key.pem"
    if not (cert.exists() and key.exists()):
        use = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
        asyncio.run(
            setup_self_signed_certificate(
                key,
                cert,
                app_uri,
                socket.gethostname(),
                use,
                {"countryName": "EU", "organizationName": "edgeflow", "commonName": name},
            )
        )
    return cert, key


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``edgeflow certs``)."""
    p = argparse.ArgumentParser(prog="edgeflow certs", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("certs"))
    p.add_argument("--name", default="edgeflow")
    p.add_argument("--app-uri", default="urn:edgeflow:client")
    p.add_argument("--server", action="store_true", help="server certificate (default: client)")
    a = p.parse_args(argv)
    cert, key = ensure_certificate(a.out, name=a.name, app_uri=a.app_uri, server=a.server)
    print(f"certificate {cert}\nprivate key {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
