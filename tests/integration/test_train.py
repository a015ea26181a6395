"""The trainer end to end on real digits: one process, and 2 processes (DDP, FSDP) via accelerate."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import CONFIG, assert_ok, read_jsonl, run_evaluate, run_train
from support.train import TINY

METRIC_FIELDS = {
    "step",
    "epoch",
    "samples_seen",
    "loss",
    "lr",
    "grad_norm",
    "images_per_sec",
    "mfu",
    "max_memory_mb",
    "data_wait_frac",
    "bad_samples",
    "world_size",
}


@pytest.mark.oldest_torch
def test_single_process_digits_run_learns_and_writes_outputs(digits_data_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_train(
        [
            f"data.train={digits_data_dir}",
            f"data.val={digits_data_dir}",
            "train.epochs=5",
            "logging.every=10",
            "checkpoint.every=50",
            f"output_dir={out}",
        ],
        OMP_NUM_THREADS="2",
    )
    assert_ok(proc)
    assert "held-out top-1" in proc.stdout and str(out) in proc.stdout

    for name in ("config.yaml", "metrics.jsonl", "eval.jsonl", "eval.json", "curves.png", "run_info.json"):
        assert (out / name).is_file(), name
    metrics = read_jsonl(out / "metrics.jsonl")
    assert metrics and set(metrics[0]) >= METRIC_FIELDS, METRIC_FIELDS - set(metrics[0])
    steps = [m["step"] for m in metrics]
    assert (
        steps == sorted(steps) and steps[-1] == 5 * 23
    )  # ceil(1437 / 64) batches per epoch, the last padded
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.5, [m["loss"] for m in metrics]
    assert all(m["world_size"] == 1 and m["bad_samples"] == 0 for m in metrics)
    assert all(m["images_per_sec"] > 0 and 0 <= m["data_wait_frac"] <= 1 for m in metrics)

    evals = read_jsonl(out / "eval.jsonl")
    assert len(evals) == 5  # every epoch end (the last one is the final evaluation)
    final = json.loads((out / "eval.json").read_text())
    assert final["num_samples"] == 360
    assert final["top1"] > 0.5, final  # chance is 0.1
    assert {"top1", "top5", "loss", "num_samples"} <= set(final)

    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "best" in ckpts and f"step-{5 * 23:08d}" in ckpts
    assert (out / "checkpoints" / f"step-{5 * 23:08d}" / "meta.json").is_file()
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run directory"
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.oldest_torch
def test_ddp_and_fsdp_two_processes_match_and_fsdp_shards(digits_data_dir, tmp_path):
    common = [
        f"data.train={digits_data_dir}",
        f"data.val={digits_data_dir}",
        "train.steps=8",
        "logging.every=1",
        "logging.wandb=false",
        "model.drop_path_rate=0.1",
        "ema.decay=0.9",
        *TINY,
    ]
    losses, evals = {}, {}
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        proc = run_train([*common, f"parallel.strategy={strategy}", f"output_dir={out}"], nproc=2)
        assert_ok(proc)
        metrics = read_jsonl(out / "metrics.jsonl")
        assert [m["step"] for m in metrics] == list(range(1, 9))
        assert all(m["world_size"] == 2 for m in metrics)
        losses[strategy] = [m["loss"] for m in metrics]
        info = json.loads((out / "run_info.json").read_text())
        assert info["world_size"] == 2
        if strategy == "fsdp":
            assert info["sharded"] is True
            total, local = info["params_total"], info["params_local_per_rank"]
            # each rank holds only its shard: about half, together the whole (dim-0 padding aside)
            assert all(n < 0.6 * total for n in local), (local, total)
            assert total <= sum(local) <= 1.05 * total
        else:
            assert info["params_local_per_rank"] == [info["params_total"]] * 2
        evals[strategy] = json.loads((out / "eval.json").read_text())
        assert evals[strategy]["num_samples"] == 360
    for a, b in zip(losses["ddp"], losses["fsdp"]):
        assert abs(a - b) < 1e-4, (losses["ddp"], losses["fsdp"])
    # the EMA (sharded under FSDP) evaluates the same as under DDP
    for k in ("top1", "loss", "ema_top1", "ema_loss"):
        assert abs(evals["ddp"][k] - evals["fsdp"][k]) < 1e-4, (k, evals)
    # a sharded (DCP) checkpoint evaluates in one unsharded process to the same result
    out = tmp_path / "eval_fsdp"
    assert_ok(run_evaluate([*common, f"checkpoint={tmp_path / 'fsdp'}", f"output_dir={out}"]))
    got = json.loads((out / "eval.json").read_text())
    assert abs(got["top1"] - evals["fsdp"]["top1"]) < 1e-9 and got["num_samples"] == 360


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_paths_run(digits_data_dir, tmp_path, precision):
    out = tmp_path / precision
    proc = run_train(
        [
            f"data.train={digits_data_dir}",
            f"data.val={digits_data_dir}",
            "train.steps=6",
            "logging.every=2",
            "logging.wandb=false",
            f"precision={precision}",
            f"output_dir={out}",
            *TINY,
        ]
    )
    assert_ok(proc)
    assert f"compute torch.{'bfloat16' if precision == 'bf16' else 'float16'}" in proc.stdout
    metrics = read_jsonl(out / "metrics.jsonl")
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    if precision == "fp16":
        assert metrics[-1]["loss_scale"] > 1.0  # the scaler is active
    else:
        assert metrics[-1]["loss_scale"] == 1.0


def test_normalising_on_the_device_trains_exactly_as_in_the_workers(digits_data_dir, tmp_path):
    """data.normalize_on=device (uint8 batches, the CUDA default) and =worker give the same
    steps, with random erasing and mixup on, and the same evaluation."""
    from vit_dist.core.config import load_config
    from vit_dist.runtime.distributed import init_distributed
    from vit_dist.training.trainer import Trainer

    env = init_distributed()
    runs = {}
    for where in ("worker", "device"):
        cfg = load_config(
            CONFIG,
            [
                f"data.train={digits_data_dir}",
                f"data.val={digits_data_dir}",
                "train.steps=3",
                "data.workers=1",
                "augment.random_erasing=0.5",
                f"data.normalize_on={where}",
                "logging.wandb=false",
                f"output_dir={tmp_path / where}",
                *TINY,
            ],
        )
        trainer = Trainer(cfg, env)
        trainer.train_loader.set_epoch(0)
        batch = next(iter(trainer.train_loader))
        assert batch["image"].dtype == (torch.uint8 if where == "device" else torch.float32)
        it = iter(trainer.train_loader)
        losses = [trainer.train_step(it).item() for _ in range(3)]
        runs[where] = losses, trainer._evaluate_once()["top1"], [p.detach().clone() for p in trainer.params]
    (la, ta, pa), (lb, tb, pb) = runs["worker"], runs["device"]
    assert la == lb and ta == tb
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))


@pytest.mark.parametrize(
    "override,expected",
    [
        ("optim.lrr=1e-3", "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
        ("parallel.strategy=zero3", "parallel.strategy: 'zero3' is not one of 'ddp', 'fsdp'"),
        ("train.batch_size=0", "train.batch_size: 0 must be >= 1"),
        ("precision=fp8", "precision: 'fp8' is not one of"),
        ("model.dpeth=3", "did you mean 'depth'"),
        ("data.train=/nonexistent/shards-{000..003}.tar", "/nonexistent"),
    ],
)
def test_bad_config_fails_fast_with_one_line(override, expected, tmp_path):
    proc = run_train(
        ["train.steps=1", "logging.wandb=false", f"output_dir={tmp_path}", override], timeout=120
    )
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
@pytest.mark.multiproc
def test_evaluate_checkpoint_export_and_timm_file(digits_data_dir, tmp_path):
    """evaluate.py on a training checkpoint reproduces the trainer's final eval, on 1 and 2
    processes; it also takes a plain weights file (as timm or an export would give)."""
    run = tmp_path / "run"
    args = [f"data.train={digits_data_dir}", f"data.val={digits_data_dir}", *TINY, "logging.wandb=false"]
    assert_ok(run_train([*args, "train.steps=20", "ema.decay=0.9", f"output_dir={run}"]))
    final = json.loads((run / "eval.json").read_text())

    per_class = []
    for nproc in (1, 2):
        out = tmp_path / f"eval{nproc}"
        proc = run_evaluate([*args, f"checkpoint={run}", f"output_dir={out}"], nproc=nproc)
        assert_ok(proc)
        got = json.loads((out / "eval.json").read_text())
        assert got["num_samples"] == 360
        assert abs(got["top1"] - final["top1"]) < 1e-9 and abs(got["loss"] - final["loss"]) < 1e-4
        # Per class: the digits' ten classes, every sample once (summed over the ranks), the
        # confusion matrix's diagonal is the top-1 hits, and its picture was drawn.
        pc = json.loads((out / "eval_per_class.json").read_text())
        assert pc["classes"] == [str(d) for d in range(10)] and sum(pc["count"]) == 360
        matrix = pc["confusion"]
        assert [sum(row) for row in matrix] == pc["count"]
        assert sum(matrix[i][i] for i in range(10)) == round(got["top1"] * 360)
        assert all(t == matrix[i][i] / n for i, (t, n) in enumerate(zip(pc["top1"], pc["count"])))
        assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"wrote {out / 'eval_per_class.json'}" in proc.stdout
        per_class.append(pc)
    assert per_class[0] == per_class[1]  # 2 processes count what 1 counts

    proc = run_evaluate([*args, f"checkpoint={run}", "ema=true", f"output_dir={tmp_path / 'ema'}"])
    assert_ok(proc)
    got = json.loads((tmp_path / "ema" / "eval.json").read_text())
    assert abs(got["top1"] - final["ema_top1"]) < 1e-9

    # a plain state dict file, as a timm-format checkpoint would be
    state = torch.load(run / "checkpoints" / "step-00000020" / "state.pt", weights_only=True)["model"]
    torch.save({"state_dict": state}, tmp_path / "weights.pth")
    proc = run_evaluate([*args, f"checkpoint={tmp_path / 'weights.pth'}", f"output_dir={tmp_path / 'w'}"])
    assert_ok(proc)
    plain = json.loads((tmp_path / "w" / "eval.json").read_text())
    assert abs(plain["top1"] - final["top1"]) < 1e-9

    proc = run_evaluate([*args, f"output_dir={tmp_path / 'x'}"])
    assert proc.returncode != 0 and "checkpoint=PATH" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_compile_and_activation_checkpointing_match_eager(digits_data_dir, tmp_path):
    args = [
        f"data.train={digits_data_dir}",
        f"data.val={digits_data_dir}",
        "train.steps=4",
        "logging.every=1",
        "logging.wandb=false",
        *TINY,
    ]
    losses = {}
    for name, extra in {
        "eager": [],
        "compiled+ac": ["parallel.compile=true", "parallel.activation_checkpointing=true"],
    }.items():
        out = tmp_path / name.replace("+", "_")
        assert_ok(run_train([*args, *extra, f"output_dir={out}"], timeout=900))
        losses[name] = [m["loss"] for m in read_jsonl(out / "metrics.jsonl")]
    assert len(losses["eager"]) == 4
    for a, b in zip(losses["eager"], losses["compiled+ac"]):
        assert abs(a - b) < 1e-4, losses
