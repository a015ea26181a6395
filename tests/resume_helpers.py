"""What the resume tests share (tests/integration/test_resume.py, test_soak.py): the smoke run's
overrides (RNG in the model and in the batch, EMA) and the check that two runs are the same."""

from __future__ import annotations

import json

from helpers import read_jsonl

SMOKE = [
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.drop_path_rate=0.1",  # RNG in the model ...
    "augment.mixup=0.8",  # ... and in the batch: both must be restored on resume
    "augment.cutmix=1.0",
    "augment.randaugment_ops=1",
    "train.batch_size=16",
    "data.workers=1",
    "ema.decay=0.9",
    "logging.every=1",
    "logging.wandb=false",
    "eval.every=0",
]


def resume_args(data, out, steps=14, every=5, extra=()):
    return [
        f"data.train={data}",
        f"data.val={data}",
        f"train.steps={steps}",
        f"checkpoint.every={every}",
        f"output_dir={out}",
        *SMOKE,
        *extra,
    ]


def losses_by_step(out) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_jsonl(out / "metrics.jsonl")}


def assert_same_run(ref, got):
    a, b = losses_by_step(ref), losses_by_step(got)
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-6, (s, a[s], b[s])
    ea, eb = (json.loads((d / "eval.json").read_text()) for d in (ref, got))
    for k in ("top1", "loss", "ema_top1", "ema_loss"):
        assert abs(ea[k] - eb[k]) <= 1e-6, (k, ea, eb)
