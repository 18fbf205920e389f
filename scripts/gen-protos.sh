#!/usr/bin/env bash
# Regenerate the KubeVirt hook protobuf/gRPC modules in passtcore/kubevirt/proto/
# from the .proto files shipped beside them (copies of
# ../shared/docs/kubevirt-protos/, the exact upstream interface definitions).
# protoc writes absolute imports ("import api_info_pb2"); they are rewritten to
# package-relative ones so that the modules live inside passtcore.kubevirt.proto.
# The generated code checks the protobuf/grpcio runtime versions it needs at
# import time: keep the `sidecar` extra in pyproject.toml in step (printed below).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=passtcore/kubevirt/proto
SRC=${KUBEVIRT_PROTOS:-}
if [ -n "$SRC" ]; then
  cp "$SRC"/api_info.proto "$SRC"/api_v1alpha2.proto "$SRC"/api_v1alpha3.proto "$OUT"/
fi
rm -f "$OUT"/*_pb2.py "$OUT"/*_pb2_grpc.py "$OUT"/*_pb2.pyi
"$PY" -m grpc_tools.protoc -I "$OUT" --python_out="$OUT" --pyi_out="$OUT" \
  --grpc_python_out="$OUT" "$OUT"/api_info.proto "$OUT"/api_v1alpha2.proto "$OUT"/api_v1alpha3.proto
# package-relative imports
sed -i -E 's/^import (api_[a-z0-9_]+_pb2) as /from . import \1 as /' "$OUT"/*_pb2_grpc.py
echo "passtcore: needs $(sed -n 's/^# Protobuf Python Version: /protobuf>=/p' "$OUT"/api_info_pb2.py)" \
  "and $(sed -n "s/^GRPC_GENERATED_VERSION = '\\(.*\\)'/grpcio>=\\1/p" "$OUT"/api_info_pb2_grpc.py)"
echo "passtcore: regenerated $(ls "$OUT"/*_pb2*.py | wc -l) modules in $OUT"
