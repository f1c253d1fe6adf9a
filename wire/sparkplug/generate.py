"""Regenerate ``sparkplug_b_pb2.py`` from ``sparkplug_b.proto`` (needs grpcio-tools).

``python -m wire.sparkplug.generate``; the generated module is committed so the runtime
needs only the ``protobuf`` package.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    """Run protoc from grpcio-tools on the schema."""
    from grpc_tools import protoc

    rc = protoc.main(
        ["protoc", f"-I{HERE}", f"--python_out={HERE}", str(HERE / "sparkplug_b.proto")]
    )
    if rc != 0:
        raise SystemExit(rc)


if __name__ == "__main__":
    main()
