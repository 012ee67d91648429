"""Generate the siglip.v1 Python stubs from the proto at import time (nothing generated is committed).

    from siglip_stubs import pb2, pb2_grpc
"""

import importlib
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
PROTO = "siglip/v1/siglip.proto"


def _generate() -> tuple:
    with tempfile.TemporaryDirectory(prefix="siglip-stubs-") as out:
        args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--grpc_python_out={out}", PROTO]
        if protoc.main(args) != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {PROTO_ROOT / PROTO}")
        sys.path.insert(0, out)
        try:
            # Modules stay in sys.modules once imported, so the directory can go.
            return importlib.import_module("siglip.v1.siglip_pb2"), importlib.import_module("siglip.v1.siglip_pb2_grpc")
        finally:
            sys.path.remove(out)


pb2, pb2_grpc = _generate()
