"""Data layer: WebDataset-style tar shards -> per-rank batches (see ``pipeline.py`` for the flow).

Modules, one job each:

* ``shards``      writers (``python -m vit_dist.data.shards``) and ``ensure_digits_shards``
* ``meta``        the ``dataset.json`` index beside the shards
* ``spec``        shard specs (paths, braces, globs, directories, URLs) -> shard list
* ``plan``        deterministic per-(rank, worker) epoch plans; the resumable position
* ``tario``       tar -> raw samples, bad shards turned into counted placeholders
* ``decode``      image bytes -> tensors, crops fused into decoding
* ``transforms``  train/eval transforms, Mixup/CutMix with label smoothing
* ``pipeline``    the stages end to end, ``DataConfig``, ``ShardLoader``, ``build_loader``
* ``workers``     loader worker processes: start method, signals, owner watch, stall/death checks
* ``forkserver_init``  what the workers' forkserver imports when it starts
* ``evaluation``  exactly-once evaluation sums and cross-rank reductions
* ``bench``       ``python -m vit_dist.data.bench``: decode and loader throughput
"""

from ..errors import DataError
from .evaluation import EvalSums, all_reduce_sum, global_bad_samples
from .pipeline import DataConfig, ShardLoader, build_loader, dist_rank_world
from .spec import ShardList, resolve_shards
from .transforms import AugmentConfig, MixupCutmix, SampleTransform


def __getattr__(name: str):
    # The writers load lazily: importing them here would make ``python -m vit_dist.data.shards``
    # import its own module twice (runpy warns about exactly that).
    if name in ("ensure_digits_shards", "write_shards"):
        from . import shards

        return getattr(shards, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AugmentConfig",
    "DataConfig",
    "DataError",
    "EvalSums",
    "MixupCutmix",
    "SampleTransform",
    "ShardList",
    "ShardLoader",
    "all_reduce_sum",
    "build_loader",
    "dist_rank_world",
    "ensure_digits_shards",
    "global_bad_samples",
    "resolve_shards",
    "write_shards",
]
