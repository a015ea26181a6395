"""vit_dist: train ViT, DeiT and Swin image classifiers on streaming WebDataset shards,
from one CPU process to many GPU nodes (DDP or FSDP2), configured by YAML.

Layers; a module imports only from its own layer or the ones above it in this list
(``tests/test_layers.py`` checks it, function-local imports included):

base (no torch)
    errors       every user-facing exception type and the exit code it ends a command with
    options      booleans, ``key=value`` command options, did-you-mean
    atomic       temp-file-then-rename writes
    hub          ``hf-hub:ORG/NAME[@REVISION]`` weights through the Hugging Face hub cache
    config       the validated run config: schema, YAML + dotted overrides
    config_help  the ``--help`` reference of every config key and command option, from the schema
    launch_env   accelerate launch's own flags (mixed precision, FSDP, dynamo) as config keys
foundations
    models/      plain ``nn.Module`` ViT / DeiT / Swin, registry, timm weight loading, any timm
                 model as ``timm:<name>`` (optional extra), what a block is
    data/        shard writers, shard specs, epoch plans, tar reading, decode, the loader
    distributed  process-group start-up and the few collectives
    testing/     test-only fault injection
components
    amp, losses, optim, ema   precision and loss scaling; losses; optimizer and lr schedule; EMA
    parallel     compile / activation checkpointing / FSDP2 or DDP, applied from outside
    checkpoint   atomic, resumable checkpoints and their compatibility checks
    manifest     what each checkpoint file was when written (sizes, CRC-32s) and the check
    rundir       a run owns its output_dir: the job's lock, no new run over an old one, run.json
    weights      loading weights from checkpoints and exports; writing the export
    distill      the frozen teacher and the distillation losses
    evaluation   the exactly-once evaluation loop
    metrics/     run logger (JSONL, progress, W&B, curves), step timing, peak FLOP/s, MFU
    preemption, sync_debug    preemption signals; host-device sync checks (CUDA)
the loop
    trainer      one object that owns a run from start-up to the final evaluation
entry points (nothing in the package imports them)
    train, evaluate, export, predict, bench, models.__main__, data.shards, data.bench;
    cli holds their shared command-line plumbing
"""

__version__ = "0.1.0"
