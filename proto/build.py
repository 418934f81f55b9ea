"""Generate the protobuf/gRPC Python modules from the .proto files (run by the install step).

`python -m proto.build` regenerates when a .proto is newer than its stubs. Generation goes to a
temporary directory first and the files are moved in with os.replace, so two processes starting at
once never see a half-written stub.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent
PROTOS = sorted(PROTO_DIR.glob("*.proto"))


def _outputs(proto: Path) -> list[Path]:
    stem = proto.stem
    return [PROTO_DIR / f"{stem}_pb2.py", PROTO_DIR / f"{stem}_pb2_grpc.py", PROTO_DIR / f"{stem}_pb2.pyi"]


def stale() -> bool:
    for proto in PROTOS:
        outs = _outputs(proto)
        if any(not o.exists() or o.stat().st_mtime < proto.stat().st_mtime for o in outs):
            return True
    return False


def generate(force: bool = False) -> None:
    if not force and not stale():
        return
    from grpc_tools import protoc  # grpcio-tools: an install-time and runtime dependency

    include = Path(protoc.__file__).resolve().parent / "_proto"
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        for proto in PROTOS:
            rel = proto.relative_to(ROOT)
            args = [
                "grpc_tools.protoc", f"-I{ROOT}", f"-I{include}",
                f"--python_out={tmp}", f"--grpc_python_out={tmp}", f"--pyi_out={tmp}", str(rel),
            ]
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed on {rel}")
            for out in _outputs(proto):
                os.replace(Path(tmp) / "proto" / out.name, out)


if __name__ == "__main__":
    generate(force="--force" in sys.argv)
    print("protobuf stubs up to date")
