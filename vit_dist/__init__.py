"""vit_dist: train ViT, DeiT and Swin image classifiers on streaming WebDataset shards,
from one CPU process to many GPU nodes (DDP or FSDP2), configured by YAML."""

__version__ = "0.1.0"

# Before anything imports torch: MKL's fast kernels on AMD CPUs (see cpu_blas).
from . import cpu_blas as _cpu_blas

_cpu_blas.enable()
