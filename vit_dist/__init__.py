"""vit_dist: train ViT, DeiT and Swin image classifiers on streaming WebDataset shards,
from one CPU process to many GPU nodes (DDP or FSDP2), configured by YAML.

The folders are the layers, lowest first; a module imports only from its own layer or lower
ones (``tests/unit/test_layers.py`` checks it from the source, function-local imports included):

core/         no torch: exception kinds and exit codes, option parsing, atomic writes,
              ``hf-hub:`` references, the validated run config
models/ data/ runtime/ testing/
              plain ``nn.Module`` ViT / DeiT / Swin and their contract (``models/protocol.py``);
              shards, epoch plans, tar reading, decode, the loader; process groups, precision,
              parallelization applied from outside; test-only fault injection
checkpoint/ metrics/
              checkpoints, the training state, the run directory, weights in and out; the run
              logger and its sinks, timing, peak FLOP/s and MFU
training/     the step's stages (losses, optimizer and schedule, EMA, distillation, evaluation,
              preemption) and the trainer that owns a run
cli/          the entry points' shared plumbing (arguments, ``--help``, accelerate's flags)

Entry points sit above every layer and nothing imports them: the modules at the top of the
package (``python -m vit_dist.train``, ``evaluate``, ``export``, ``predict``, ``bench``) and
the folders' own commands (``vit_dist.models``, ``vit_dist.data.shards``, ``vit_dist.data.bench``,
``vit_dist.data.plan``).
"""

__version__ = "0.1.0"
