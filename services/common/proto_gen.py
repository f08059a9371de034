"""Generate the Python gRPC stubs of ``proto/leadre.proto`` into ``services/common/pb/``.

The stubs are committed (a fresh clone, a wheel and a Docker image need no protoc step);
``tests/services/test_proto.py`` fails when they no longer match the .proto. Regenerate
after editing the contract::

    python -m services.common.proto_gen
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto" / "leadre.proto"
OUT = Path(__file__).resolve().parent / "pb"
HEADER = ("# Generated from proto/leadre.proto by `python -m services.common.proto_gen`; "
          "do not edit.\n# ruff: noqa\n")


def compile_proto(out_dir: Path, descriptor_set: Path | None = None) -> None:
    """Run protoc (grpcio-tools) on the contract into ``out_dir``."""
    from grpc_tools import protoc

    args = ["protoc", f"-I{PROTO.parent}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", str(PROTO)]
    if descriptor_set is not None:
        args[1:1] = [f"--descriptor_set_out={descriptor_set}"]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")


def generate(out: Path = OUT) -> list[Path]:
    """Write leadre_pb2.py, leadre_pb2.pyi and leadre_pb2_grpc.py into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        compile_proto(Path(tmp))
        for src in sorted(Path(tmp).iterdir()):
            text = src.read_text()
            # protoc writes `import leadre_pb2`, which only works from that directory.
            text = re.sub(r"^import leadre_pb2 as", "from . import leadre_pb2 as", text,
                          flags=re.MULTILINE)
            dst = out / src.name
            dst.write_text(HEADER + text)
            written.append(dst)
    (out / "__init__.py").write_text('"""Generated gRPC stubs (see services/common/proto_gen.py)."""\n')
    return written


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT))
    sys.exit(0)
