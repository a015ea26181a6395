#!/usr/bin/env bash
# Fetch, on a machine with pip access, the wheels that the leased GPU machines lack into ./.whl
# (git-ignored), for launch/bench_gpu.sh to install there. The GPU image has Python 3.12, torch,
# torchvision, accelerate and timm, but not webdataset and wandb, nor those of their needs
# listed here (the rest it has). Exact versions: one version of each, or the install there fails.
#
#   bash launch/gpu_wheels.sh        # -> .whl/*.whl (about 24 MB), then name .whl in the call's carry
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WHEELS=(
    webdataset==1.0.2 braceexpand==0.1.7
    wandb==0.31.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5
    platformdirs==4.14.8 sniffio==1.3.1 distro==1.9.0 cwevals==0.0.1b1 googleapis_common_protos==1.76.0
    opentelemetry_api==1.45.2 opentelemetry_sdk==1.45.2 opentelemetry_proto==1.45.2
    opentelemetry_exporter_otlp_proto_http==1.45.2 opentelemetry_exporter_otlp_proto_common==1.45.2
    opentelemetry_exporter_otlp_common==0.66b2 opentelemetry_exporter_http_transport==0.66b2
    opentelemetry_semantic_conventions==0.66b2
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "${WHEELS[@]}"
echo "$(ls .whl/*.whl | wc -l) wheels in .whl ($(du -sh .whl | cut -f1))"
