"""The run configuration: one validated object built from a YAML file plus dotted overrides.

    cfg = load_config("configs/digits_vit.yaml", ["train.epochs=3", "optim.lr=1e-3"])

Every key has a declared type, range and allowed values; everything is checked before any
work starts. An unknown key fails with its name and the closest valid key; a bad value fails
naming the key, the value and what is allowed. All failures are ``ConfigError`` (one line).
Every number must be finite: nan and inf are refused for every float key, list item and model
keyword (none has a use for them, and they pass every range check unnoticed). Every integer key
is at most ``MAX_INT`` (10**12) unless its field's doc names a tighter bound, so a typo such as
``train.steps=10**30`` fails here instead of deep inside a loop or an allocation.
Override values are parsed as YAML scalars/lists (``3``, ``1e-3``, ``true``, ``[2,2,6,2]``).
``model.<kw>`` passes any model keyword through; those are checked against the model's
constructor when the model is resolved. A free keyword's value (``model.<kw>``,
``distill.teacher_kwargs``) that YAML 1.1 keeps as a string although it is a number (``1e-3``,
``nan``) is read as that number. This module does not import torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .files import parse_yaml, read_text, short
from .hub import is_hub_ref, parse_ref
from .options import did_you_mean
from .policy import parse_policy

__all__ = ["Config", "ConfigError", "config_from_dict", "dump_config", "load_config", "parse_overrides"]

# The upper bound of every integer key without a tighter one of its own: far above any real run,
# far below where an int stops fitting an int64 tensor or an epoch length times a batch overflows.
MAX_INT = 10**12
# What YAML 1.1 leaves a string but a reader means as a float: an exponent without a dot or
# without a sign (1e-3, 1.0e5), and spelled-out non-finite values (nan, inf, -Infinity).
_YAML11_FLOAT = re.compile(r"[-+]?(?:(?:\d[\d_]*\.?\d*|\.\d+)[eE][-+]?\d+|nan|inf|infinity)", re.IGNORECASE)


def _field(
    default: Any = dataclasses.MISSING, *, lo=None, hi=None, lo_open=False, factory=None, doc: str = ""
):
    """A config field with an optional numeric range [lo, hi] (lo exclusive when lo_open); an
    integer field without ``hi`` is bounded by ``MAX_INT``."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelSection:
    name: str = _field(
        "vit",
        doc="registered name (python -m vit_dist.models list), family vit|deit_distilled|swin, "
        "or timm:<name> for any timm model (pip install vit_dist[timm])",
    )
    pretrained: str | None = _field(
        None, doc="timm-format weights to start from: a file or hf-hub:ORG/NAME[@REVISION]"
    )
    # Any other key under `model:` is a model keyword (img_size, depth, drop_path_rate, ...).
    kwargs: dict = _field(
        factory=dict,
        doc="any other key under model: is a keyword of the model's constructor (model.depth=6, "
        "model.drop_path_rate=0.1, model.depths=[2,2,6,2]), checked against it before any work (a wrong "
        "name says the closest); see python -m vit_dist.models list / check NAME key=value",
    )


@dataclass
class DataSection:
    train: str | list[str] | None = _field(None, doc="training shard spec")
    val: str | list[str] | None = _field(None, doc="validation shard spec")
    meta: str | None = _field(None, doc="directory holding dataset.json, for remote shards")
    val_class_map: str | None = _field(
        None,
        doc="how data.val's classes become the training classes (or, in evaluate, the "
        "checkpoint's): unset: they must be the same list; names: by class name (each val "
        "class must be a training class, e.g. a 200-class subset); or a JSON file "
        "{val class name: training class name}",
    )
    workers: int = _field(4, lo=0, hi=256, doc="loader processes per rank (at most 256)")
    img_size: int = _field(224, lo=1, hi=16384, doc="square model input side in pixels; at most 16384")
    num_classes: int | None = _field(None, lo=1, hi=10**7, doc="default: from dataset.json; at most 10**7")
    in_chans: int = _field(3, lo=1, hi=1024, doc="image channels the model takes; at most 1024")
    mode: Literal["exact", "resampled"] = _field(
        "exact", doc="exact: every sample once per epoch; resampled: shards drawn with replacement"
    )
    samples_per_epoch: int | None = _field(None, lo=1, doc="resampled mode: global samples per epoch")
    shuffle_buffer: int = _field(1000, lo=0, hi=10**7, doc="samples held per loader stream (at most 10**7)")
    pin_memory: bool = _field(True, doc="pin host batches for the copy to a CUDA device (no effect on CPU)")
    normalize_on: Literal["auto", "worker", "device"] = _field(
        "auto", doc="where uint8 images become normalised floats; auto: device on CUDA, workers on CPU"
    )
    prefetch: int = _field(2, lo=1, hi=1024, doc="batches prefetched per loader worker (at most 1024)")
    max_bad_fraction: float = _field(
        0.01, lo=0.0, hi=1.0, doc="stop when more than this fraction of the samples read is unusable"
    )
    max_image_pixels: int = _field(
        89_478_485,
        lo=1,
        hi=89_478_485,
        doc="an image whose header declares more pixels (width x height) is a bad sample, never decoded; "
        "default and ceiling: PIL's own limit (about 270 MB of RGB per decode)",
    )
    max_sample_bytes: int = _field(
        64 * 2**20,
        lo=1,
        doc="a sample with a tar member declaring more bytes is a bad sample, never read into memory",
    )
    # preprocessing of every image, trained or evaluated (augmentation: AugmentSection)
    crop_pct: float = _field(
        0.875, lo=0.0, hi=1.0, lo_open=True, doc="eval: resize to img_size / crop_pct, center crop img_size"
    )
    interpolation: Literal["bilinear", "bicubic"] = _field(
        "bilinear",
        doc="resize filter of the train crop and the eval resize; timm's and DeiT's weights used bicubic",
    )
    mean: list[float] = _field(factory=lambda: [0.485, 0.456, 0.406], doc="per-channel normalisation mean")
    std: list[float] = _field(factory=lambda: [0.229, 0.224, 0.225], doc="per-channel normalisation std")


@dataclass
class AugmentSection:
    """Training-time augmentation (``augment.*``); DeiT's ImageNet settings by default, except that
    the default RandAugment is torchvision's (2 ops at magnitude 9 of its 31 levels, milder than
    timm's ``rand-m9-mstd0.5-inc1`` at 9 of 10, which the shipped recipes set as ``policy``). Evaluation
    and prediction use none of it: their preprocessing (``data.img_size``, ``crop_pct``,
    ``interpolation``, ``mean``, ``std``) is the data section's."""

    scale: list[float] = _field(factory=lambda: [0.08, 1.0], doc="random resized crop: area range [min, max]")
    ratio: list[float] = _field(
        factory=lambda: [0.75, 4 / 3], doc="random resized crop: aspect ratio range [min, max]"
    )
    hflip: float = _field(0.5, lo=0.0, hi=1.0, doc="probability of a horizontal flip")
    crop: Literal["rrc", "simple"] = _field(
        "rrc",
        doc="rrc (RandomResizedCrop: scale, ratio) | simple (DeiT III: shorter side to img_size, 4 px reflect pad, random crop)",
    )
    policy: str | None = _field(
        None,
        doc="timm RandAugment string (rand-m9-mstd0.5-inc1) or three_augment (DeiT III, timm's 3a); "
        "set, it replaces randaugment_ops/_magnitude and trivial_augment",
    )
    randaugment_ops: int = _field(2, lo=0, hi=64, doc="RandAugment ops per image (0 = off); at most 64")
    randaugment_magnitude: int = _field(9, lo=0, hi=30, doc="RandAugment magnitude")
    trivial_augment: bool = _field(False, doc="TrivialAugmentWide instead of RandAugment")
    color_jitter: float = _field(
        0.0, lo=0.0, doc="brightness = contrast = saturation jitter strength; 0 = off"
    )
    random_erasing: float = _field(0.25, lo=0.0, hi=1.0, doc="probability of random erasing")
    mixup: float = _field(0.8, lo=0.0, doc="Beta(a, a) for mixup; 0 = off")
    cutmix: float = _field(1.0, lo=0.0, doc="Beta(a, a) for cutmix; 0 = off")
    mixup_prob: float = _field(1.0, lo=0.0, hi=1.0, doc="probability that a batch is mixed at all")
    switch_prob: float = _field(0.5, lo=0.0, hi=1.0, doc="with both on: probability of cutmix over mixup")


@dataclass
class TrainSection:
    epochs: int | None = _field(None, lo=1, hi=10**6, doc="at most 10**6")
    steps: int | None = _field(None, lo=1, doc="optimizer steps; overrides epochs; at most 10**12")
    batch_size: int = _field(
        64, lo=1, hi=2**20, doc="per device, at most 2**20 (a larger batch than the data set is padded)"
    )
    grad_accum: int = _field(1, lo=1, hi=2**16, doc="micro-batches per optimizer step; at most 2**16")
    seed: int = _field(0, lo=0, hi=2**32 - 1, doc="0 .. 2**32-1")
    label_smoothing: float = _field(0.1, lo=0.0, hi=1.0, doc="label smoothing of the training targets")
    loss: Literal["ce", "bce"] = _field(
        "ce",
        doc="ce (softmax cross-entropy) | bce (per-class binary cross-entropy, DeiT III); eval reports ce",
    )
    max_skipped_steps: int = _field(20, lo=0, doc="stop after this many non-finite (skipped) steps")
    sync_debug: Literal["off", "warn", "error"] = _field(
        "off", doc="CUDA: warn or stop when a train step makes the host wait for the GPU (from step 3)"
    )


@dataclass
class OptimSection:
    name: Literal["adamw", "sgd", "lamb"] = _field(
        "adamw",
        doc="adamw (fused where supported) | sgd (momentum, nesterov) | lamb (layer-wise trust ratio)",
    )
    lr: float = _field(5e-4, lo=0.0, lo_open=True, doc="peak learning rate (after warmup)")
    base_batch_size: int | None = _field(None, lo=1, doc="scale lr by global_batch / base_batch_size")
    weight_decay: float = _field(
        0.05, lo=0.0, doc="weight decay (decoupled for adamw; not on norms, biases, embeddings)"
    )
    betas: list[float] = _field(factory=lambda: [0.9, 0.999], doc="adamw / lamb betas [beta1, beta2]")
    eps: float = _field(1e-8, lo=0.0, lo_open=True, doc="adamw / lamb epsilon")
    momentum: float = _field(0.9, lo=0.0, hi=1.0, doc="sgd momentum")
    nesterov: bool = _field(True, doc="sgd: Nesterov momentum (timm's --opt sgd)")
    schedule: Literal["cosine", "step", "linear", "constant"] = _field(
        "cosine",
        doc="lr after warmup: cosine | linear (to min_lr) | step (decay_rate every decay_epochs) | constant",
    )
    warmup_epochs: float = _field(0.0, lo=0.0, doc="linear warmup length in epochs (may be fractional)")
    warmup_steps: int | None = _field(None, lo=0, doc="overrides warmup_epochs")
    warmup_lr: float = _field(0.0, lo=0.0, doc="the lr warmup starts from (it rises linearly to lr)")
    min_lr: float = _field(1e-6, lo=0.0, doc="where cosine / linear end, and the cooldown's lr")
    cooldown_epochs: float = _field(
        0.0,
        lo=0.0,
        doc="the run's last epochs at min_lr (part of train.epochs; timm adds them after --epochs)",
    )
    cooldown_steps: int | None = _field(None, lo=0, doc="overrides cooldown_epochs")
    decay_epochs: float = _field(
        30.0, lo=0.0, lo_open=True, doc="step: multiply the lr by decay_rate every this many epochs"
    )
    decay_steps: int | None = _field(None, lo=1, doc="overrides decay_epochs")
    decay_rate: float = _field(0.1, lo=0.0, hi=1.0, lo_open=True, doc="step: the factor at each decay")
    clip_grad: float | None = _field(None, lo=0.0, lo_open=True, doc="max global grad norm; null = off")
    layer_decay: float | None = _field(
        None, lo=0.0, hi=1.0, lo_open=True, doc="layer-wise lr decay (fine-tuning)"
    )


@dataclass
class EmaSection:
    decay: float = _field(0.0, lo=0.0, hi=1.0, doc="EMA of weights; 0 = off, e.g. 0.9998")
    every: int = _field(1, lo=1, doc="update every N optimizer steps")


@dataclass
class DistillSection:
    type: Literal["none", "soft", "hard"] = _field(
        "none", doc="knowledge distillation from a teacher; none = off"
    )
    teacher: str | None = _field(
        None, doc="registry, timm:<name> or torchvision model name (optional for a vit_dist checkpoint)"
    )
    teacher_weights: str | None = _field(
        None, doc="weights file, vit_dist checkpoint / run directory, or hf-hub:ORG/NAME[@REVISION]"
    )
    teacher_kwargs: dict = _field(factory=dict, doc="extra keywords for building the teacher")
    alpha: float = _field(0.5, lo=0.0, hi=1.0, doc="soft: weight of the KL term")
    tau: float = _field(1.0, lo=0.0, lo_open=True, doc="soft: temperature")
    teacher_mean: list[float] | None = _field(None, doc="teacher input normalisation; default data.mean")
    teacher_std: list[float] | None = _field(None, doc="default data.std")
    shard_teacher_above_gb: float = _field(
        4.0, lo=0.0, doc="FSDP-shard the teacher when its weights exceed this"
    )


@dataclass
class ParallelSection:
    strategy: Literal["ddp", "fsdp"] = _field(
        "ddp",
        doc="ddp: replicated weights; fsdp: FSDP2 fully_shard per block and on the root; "
        "unset: fsdp under accelerate launch --use_fsdp",
    )
    compile: bool = _field(
        False,
        doc="torch.compile each block (inductor); unset: true under accelerate --dynamo_backend inductor",
    )
    activation_checkpointing: bool = _field(False, doc="recompute each block's activations in backward")
    reshard_after_forward: bool = _field(True, doc="fsdp: free gathered weights after forward (less memory)")


@dataclass
class EvalSection:
    every: int = _field(0, lo=0, doc="optimizer steps between evaluations; 0 = each epoch end")
    batch_size: int | None = _field(None, lo=1, hi=2**20, doc="default: train.batch_size; at most 2**20")


@dataclass
class LoggingSection:
    every: int = _field(10, lo=1, doc="optimizer steps between logged metrics")
    wandb: bool = _field(True, doc="log to Weights & Biases")
    project: str = _field("vit_dist", doc="W&B project")
    entity: str | None = _field(None, doc="W&B entity (team or user); default: W&B's")
    name: str | None = _field(None, doc="W&B run name; default: W&B's")
    mode: Literal["auto", "offline", "online"] = _field(
        "auto", doc="auto: online only with a key and a network"
    )
    progress: Literal["auto", "bar", "lines"] = _field(
        "auto", doc="progress display; auto: a bar on a terminal, else one line per logged step"
    )
    system_metrics: bool = _field(True, doc="W&B system charts (GPU utilisation, memory, power; CPU, disk)")
    system_metrics_interval: float = _field(
        15.0, lo=1.0, hi=3600.0, doc="seconds between W&B system-metric samples"
    )
    tensorboard: bool = _field(False, doc="also write TensorBoard events to output_dir/tensorboard")


@dataclass
class CheckpointSection:
    every: int = _field(0, lo=0, doc="optimizer steps between checkpoints; 0 = epoch ends")
    keep: int = _field(2, lo=1, doc="keep the last K (the best is kept too)")


@dataclass
class Config:
    model: ModelSection = _field(factory=ModelSection)
    data: DataSection = _field(factory=DataSection)
    augment: AugmentSection = _field(factory=AugmentSection)
    train: TrainSection = _field(factory=TrainSection)
    optim: OptimSection = _field(factory=OptimSection)
    ema: EmaSection = _field(factory=EmaSection)
    distill: DistillSection = _field(factory=DistillSection)
    parallel: ParallelSection = _field(factory=ParallelSection)
    eval: EvalSection = _field(factory=EvalSection)
    logging: LoggingSection = _field(factory=LoggingSection)
    checkpoint: CheckpointSection = _field(factory=CheckpointSection)
    precision: Literal["fp32", "bf16", "fp16"] = _field(
        "fp32", doc="autocast dtype (fp16 adds a loss scaler); unset: accelerate launch's --mixed_precision"
    )
    resume: str | None = _field(None, doc="'auto' (latest in output_dir, else fresh) or a checkpoint path")
    output_dir: str = _field("runs/default", doc="the run directory (a run owns it)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = {"name": self.model.name, "pretrained": self.model.pretrained, **self.model.kwargs}
        return d


# --------------------------------------------------------------------------- validation


def _all_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every valid dotted key, e.g. 'optim.lr'."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _all_keys(hints[f.name], f"{prefix}{f.name}.")
        elif f.name != "kwargs":
            keys.append(prefix + f.name)
    return keys


def _check_type(key: str, value: Any, tp) -> Any:
    """Return value coerced to tp (int -> float, list/tuple) or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        errors = []
        for a in candidates:
            try:
                return _check_type(key, value, a)
            except ConfigError as e:
                errors.append(e)
        if len(candidates) == 1:  # X | None: X's own message says what is wrong (nan, a list item)
            raise errors[0]
        raise ConfigError(f"{key}: {_shown(value)} is not {_type_name(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {_shown(value)} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_shown(value)}")
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        return [_check_type(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is dict:
        return _free_value(key, value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {_shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_shown(value)}{_digits_hint(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_shown(value)}")
        return _finite(key, value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_shown(value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _finite(key: str, value: int | float) -> float:
    """``value`` as a float, or ConfigError when it is nan, inf or an int too large for a float.

    nan compares false with everything, so it would pass any range check; inf passes every
    lower bound. Neither has a meaning in any key, so both are refused by name.
    """
    try:
        number = float(value)
    except OverflowError:
        raise ConfigError(f"{key}: {_shown(value)} is too large for a number") from None
    if not math.isfinite(number):
        raise ConfigError(f"{key}: {_shown(value)} is not a finite number (nan and inf are not allowed)")
    return number


def _digits_hint(value: Any) -> str:
    """For ``1e7`` given to an integer key: how to write it (integer keys take digits only)."""
    if not (isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip())):
        return ""
    number = float(value)
    if not (math.isfinite(number) and number.is_integer() and abs(number) <= MAX_INT):
        return ""  # no hint that leads straight into the next error
    return f" (integer keys take digits: write {int(number)})"


def _shown(value: Any, limit: int = 40) -> str:
    """A short repr of ``value`` (``files.short``), so a 400-digit typo or an expanded YAML
    alias stays a one-line message."""
    return short(value, limit)


def _free_value(key: str, value: Any) -> Any:
    """A free keyword's value (``model.<kw>``, ``distill.teacher_kwargs``), checked where the
    schema cannot: numbers YAML 1.1 leaves as strings become floats, and every float, also
    inside lists and mappings, must be finite (these go straight to a constructor)."""
    if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, float):
        return _finite(key, value)
    if isinstance(value, (list, tuple)):
        return [_free_value(f"{key}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _free_value(f"{key}.{k}", v) for k, v in value.items()}
    return value


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _check_range(key: str, value: Any, meta) -> None:
    """``value`` within the field's [lo, hi]; an integer also within ``MAX_INT`` when the field
    sets no ``hi`` (floats are finite already: ``_check_type``)."""
    if value is None or isinstance(value, (list, str, bool, dict)):
        return
    lo, hi = meta.get("lo"), meta.get("hi")
    if hi is None and isinstance(value, int):
        hi = MAX_INT
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        raise ConfigError(f"{key}: {_shown(value)} must be {'>' if meta.get('lo_open') else '>='} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: {_shown(value)} must be <= {hi}")


_AUGMENT_KEYS = frozenset(f.name for f in dataclasses.fields(AugmentSection))


def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {_shown(raw)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    extra = {k: v for k, v in raw.items() if k not in names or k == "kwargs"}
    if cls is ModelSection:
        # free model keywords: names checked against the model later, numbers checked here
        kwargs["kwargs"] = {k: _free_value(prefix + str(k), v) for k, v in extra.items()}
    elif extra:
        k = next(iter(extra))
        if prefix == "data." and k in _AUGMENT_KEYS:  # where these lived before AugmentSection
            raise ConfigError(
                f"config key 'data.{k}' is now 'augment.{k}' (augmentation has its own section)"
            )
        raise ConfigError(
            f"unknown config key {_shown(prefix + str(k), 80)}{did_you_mean(prefix + str(k), _all_keys())}"
        )
    for f in dataclasses.fields(cls):
        if f.name not in raw or f.name == "kwargs":
            continue
        key, tp, value = prefix + f.name, hints[f.name], raw[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, value if value is not None else {}, key + ".")
            continue
        value = _check_type(key, value, tp)
        _check_range(key, value, f.metadata)
        kwargs[f.name] = value
    return cls(**kwargs)


def _check_consistency(cfg: Config, *, training: bool = True) -> None:
    if cfg.data.mode == "resampled" and not cfg.data.samples_per_epoch:
        raise ConfigError("data.samples_per_epoch is required with data.mode=resampled (the epoch length)")
    for key, v in (
        ("optim.betas", cfg.optim.betas),
        ("augment.scale", cfg.augment.scale),
        ("augment.ratio", cfg.augment.ratio),
    ):
        if len(v) != 2:
            raise ConfigError(f"{key}: expected 2 numbers, got {_shown(v)}")
    if cfg.augment.policy is not None:
        parse_policy(cfg.augment.policy)
        if cfg.augment.trivial_augment:
            raise ConfigError("augment.policy and augment.trivial_augment=true are two policies: set one")
    if len(cfg.data.mean) != len(cfg.data.std):
        raise ConfigError("data.mean and data.std must have the same length")
    d = cfg.distill
    if d.type != "none" and not (d.teacher or d.teacher_weights):
        raise ConfigError(f"distill.type={d.type} needs distill.teacher and/or distill.teacher_weights")
    for key, ref in (
        ("model.pretrained", cfg.model.pretrained),
        ("distill.teacher_weights", d.teacher_weights),
    ):
        if is_hub_ref(ref):
            parse_ref(ref, key)  # the syntax only: the hub itself is asked when the weights load
    for name in ("teacher_mean", "teacher_std"):
        v = getattr(d, name)
        if v is not None and len(v) != len(cfg.data.mean):
            raise ConfigError(f"distill.{name}: expected {len(cfg.data.mean)} numbers, got {_shown(v)}")
    if training and cfg.train.epochs is None and cfg.train.steps is None:
        raise ConfigError("set train.epochs or train.steps")


# --------------------------------------------------------------------------- loading


def parse_overrides(items: list[str]) -> dict:
    """['a.b=1', 'c=x'] -> {'a': {'b': 1}, 'c': 'x'} (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.epochs=3)")
        key, text = item.split("=", 1)
        value = (
            parse_yaml(text, source=f"override {key}", error=ConfigError, text_if_invalid=True)
            if text != ""
            else None
        )
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override")
        node[parts[-1]] = value
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


CONFIG_LIMIT = 256 * 1024  # bytes of a config file: the largest recipe is a few KiB


def read_yaml(path: str | os.PathLike) -> dict:
    """A config file's sections: bounded and validated by ``files`` (a regular UTF-8 file of at
    most ``CONFIG_LIMIT`` bytes, no key twice, no alias expansion without bound)."""
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    raw = parse_yaml(
        read_text(path, limit=CONFIG_LIMIT, error=ConfigError, what="config file"),
        source=str(path),
        error=ConfigError,
    )
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def config_from_dict(raw: dict, *, training: bool = True) -> Config:
    """``training=False``: a config for a command that trains nothing (evaluate), which needs
    no run length."""
    cfg = _build(Config, raw, "")
    _check_consistency(cfg, training=training)
    return cfg


def load_config(
    path: str | os.PathLike | None, overrides: list[str] | None = None, *, training: bool = True
) -> Config:
    """YAML file (optional) + dotted overrides -> validated Config, or ConfigError."""
    raw = read_yaml(path) if path else {}
    raw = _merge(raw, parse_overrides(list(overrides or [])))
    return config_from_dict(raw, training=training)


def dump_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (loadable again with load_config)."""
    with open(path, "w") as fh:
        yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
