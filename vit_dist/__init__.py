"""vit_dist: train ViT, DeiT and Swin image classifiers on streaming WebDataset shards,
from one CPU process to many GPU nodes (DDP or FSDP2), configured by YAML."""

__version__ = "0.1.0"
