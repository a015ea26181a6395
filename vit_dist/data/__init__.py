"""Data layer: WebDataset-style tar shards -> per-rank batches (see ``pipeline.py`` for the flow).

Modules, one job each:

* ``writers``     ImageFolder / digits -> shards + ``dataset.json``; ``ensure_digits_shards``
* ``shards``      ``python -m vit_dist.data.shards``: the writers' command line (and ``--index``)
* ``index``       per-shard byte-offset index (``<shard>.idx``) so a stream seeks to its slice
* ``meta``        the ``dataset.json`` index beside the shards
* ``spec``        shard specs (paths, braces, globs, directories, URLs) -> shard list
* ``plan``        deterministic per-(rank, worker) epoch plans; the resumable position;
                  ``python -m vit_dist.data.plan``: the planner (``plan/simulate.py``)
* ``tar_reader``  tar -> raw samples, bad shards turned into counted placeholders
* ``decode``      image bytes -> tensors, crops fused into decoding
* ``transforms``  train/eval transforms, Mixup/CutMix with label smoothing
* ``pipeline``    the stages end to end, ``DataConfig`` (``loader_config``: from the run's config),
                  ``ShardLoader``, ``build_loader``
* ``workers``     loader worker processes: start method, signals, owner watch, stall/death checks
* ``forkserver_init``  what the workers' forkserver imports when it starts
* ``bench``       ``python -m vit_dist.data.bench``: decode and loader throughput
"""

from ..core.errors import DataError
from .pipeline import DataConfig, ShardLoader, build_loader, dist_rank_world, loader_config
from .spec import ShardList, resolve_shards
from .transforms import MixupCutmix, SampleTransform
from .writers import ensure_digits_shards, write_shards

__all__ = [
    "DataConfig",
    "DataError",
    "MixupCutmix",
    "SampleTransform",
    "ShardList",
    "ShardLoader",
    "build_loader",
    "dist_rank_world",
    "ensure_digits_shards",
    "loader_config",
    "resolve_shards",
    "write_shards",
]
