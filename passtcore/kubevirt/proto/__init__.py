"""Generated protobuf/gRPC modules of KubeVirt's hook API (do not edit them).

``api_info`` (``kubevirt.hooks.info.Info``), ``api_v1alpha2`` and
``api_v1alpha3`` (``kubevirt.hooks.v1alpha{2,3}.Callbacks``) are compiled by
``scripts/gen-protos.sh`` with grpcio-tools from the ``.proto`` files beside
them, which are exact copies of upstream's interface definitions. The modules
check the protobuf/grpcio runtime versions at import time; the ``sidecar``
extra in pyproject.toml pins a compatible range.
"""
