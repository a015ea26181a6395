"""``vit_dist.export`` and ``vit_dist.predict`` on real checkpoints of short digits runs.

One single-process (DDP layout, with EMA) and one 2-process FSDP run of 6 steps are shared by
the module; the exported weights are checked against the checkpoint's own tensors (read
without the exporter's code path), against timm for a registered architecture, and through
the predict CLI on real digit images.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import env, free_port
from PIL import Image
from support.export_predict import _logits

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke_cpu.yaml"
LINE = re.compile(r"^  (\d+)\. (\S+) +(\d\.\d{4})$")


def _check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


def _train(data: Path, out: Path, *extra: str, nproc: int = 1) -> Path:
    args = [
        "--config",
        str(SMOKE),
        f"data.train={data}",
        f"data.val={data}",
        f"output_dir={out}",
        "logging.wandb=false",
        "train.steps=6",
        *extra,
    ]
    if nproc == 1:
        cmd, proc_env = [sys.executable, "-m", "vit_dist.train", *args], env()
    else:
        launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc)]
        launch += ["--num_machines", "1", "--main_process_port", str(free_port())]
        cmd, proc_env = [sys.executable, *launch, "-m", "vit_dist.train", *args], env(ACCELERATE_USE_CPU="1")
    _check(subprocess.run(cmd, cwd=ROOT, env=proc_env, capture_output=True, text=True, timeout=300))
    return out


@pytest.fixture(scope="module")
def ddp_run(digits_data_dir, tmp_path_factory) -> Path:
    """A single-process run (state.pt checkpoints) with EMA weights."""
    return _train(digits_data_dir, tmp_path_factory.mktemp("export") / "ddp", "ema.decay=0.9")


@pytest.fixture(scope="module")
def fsdp_run(digits_data_dir, tmp_path_factory) -> Path:
    """A 2-process FSDP run (sharded dcp/ checkpoints)."""
    out = tmp_path_factory.mktemp("export") / "fsdp"
    return _train(digits_data_dir, out, "parallel.strategy=fsdp", nproc=2)


def _fresh_model(info: dict):
    from vit_dist.models import create_model

    return create_model(info["model_name"], **info["model_kwargs"]).eval()


def _assert_exported(weights: Path, reference_sd: dict[str, torch.Tensor]) -> dict:
    """The file holds exactly the model's timm-named tensors and reproduces the reference logits."""
    from safetensors.torch import load_file

    from vit_dist.models import load_pretrained

    info = json.loads(weights.with_suffix(".json").read_text())
    tensors = load_file(weights)
    assert not [k for k in tensors if "module." in k or "_orig_mod." in k]
    reference = _fresh_model(info)
    assert set(tensors) == set(reference.state_dict())  # the model's own (timm) names, nothing else
    assert "blocks.0.attn.qkv.weight" in tensors and "head.weight" in tensors
    reference.load_state_dict(reference_sd, strict=True)

    exported = _fresh_model(info)
    load_pretrained(exported, weights, verbose=False)
    x = torch.randn(4, 3, info["img_size"], info["img_size"], generator=torch.Generator().manual_seed(0))
    assert (_logits(exported, x) - _logits(reference, x)).abs().max().item() <= 1e-6
    return info


def test_export_ddp_checkpoint_model_and_ema(ddp_run):
    from vit_dist.checkpoint.weights import export_checkpoint

    state = torch.load(
        ddp_run / "checkpoints" / "step-00000006" / "state.pt", map_location="cpu", weights_only=True
    )
    weights = export_checkpoint(ddp_run)  # the run directory: its latest checkpoint
    assert weights == ddp_run / "export" / "model.safetensors"
    info = _assert_exported(weights, state["model"])
    assert info["model_name"] == "vit" and info["num_classes"] == 10 and info["step"] == 6
    assert info["classes"] == [str(i) for i in range(10)]
    assert (info["img_size"], info["crop_pct"], info["mean"], info["std"]) == (16, 1.0, [0.5] * 3, [0.5] * 3)
    assert info["model_kwargs"]["embed_dim"] == 64 and info["ema"] is False
    assert Path(info["source"]) == (ddp_run / "checkpoints" / "step-00000006").resolve()
    assert not list(weights.parent.glob(".*tmp*"))  # the temporary files were renamed away

    ema = export_checkpoint(ddp_run / "checkpoints" / "best", ema=True)
    assert ema == ddp_run / "export" / "model_ema.safetensors"
    ema_sd = {**state["model"], **state["ema"]}  # EMA covers parameters; buffers are the model's
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["ema"])
    assert json.loads(ema.with_suffix(".json").read_text())["ema"] is True
    _assert_exported(ema, ema_sd)


@pytest.mark.oldest_torch
@pytest.mark.multiproc
def test_export_fsdp_checkpoint_in_one_process(fsdp_run, tmp_path, capsys, recwarn):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from vit_dist import export

    ckpt = fsdp_run / "checkpoints" / "step-00000006"
    assert (ckpt / "dcp").is_dir() and not (ckpt / "state.pt").exists()
    # The reference: torch's own offline DCP -> torch.save conversion, not the exporter's path.
    dcp_to_torch_save(ckpt / "dcp", tmp_path / "full.pt")
    full = torch.load(tmp_path / "full.pt", map_location="cpu", weights_only=True)["model"]
    recwarn.clear()

    # The CLI, in this process (no process group), given the run's checkpoints/ directory.
    out = tmp_path / "out" / "tiny.safetensors"
    assert export.main([f"checkpoint={fsdp_run / 'checkpoints'}", f"out={out}"]) == 0
    stdout = capsys.readouterr().out
    assert f"wrote {out}" in stdout and f"wrote {out.with_suffix('.json')}" in stdout
    assert not [w for w in recwarn if "torch.distributed" in str(w.message)]  # expected, so silenced
    info = _assert_exported(out, full)
    assert info["step"] == 6 and info["classes"] == [str(i) for i in range(10)]


def _digit_images(directory: Path) -> list[Path]:
    """Three real digits (8x8 -> 16 px), as JPEG, PNG and JPEG."""
    from sklearn.datasets import load_digits

    d = load_digits()
    paths = []
    for i, ext in zip((3, 10, 27), ("jpg", "png", "jpg")):
        im = Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8)).resize((16, 16))
        path = directory / f"digit_{d.target[i]}_{i}.{ext}"
        im.convert("RGB").save(path)
        paths.append(path)
    return paths


def _parse(stdout: str) -> dict[str, list[tuple[int, str, float]]]:
    blocks: dict[str, list] = {}
    current = None
    for line in stdout.splitlines():
        m = LINE.match(line)
        if m:
            blocks[current].append((int(m[1]), m[2], float(m[3])))
        else:
            current = line
            blocks[current] = []
    return blocks


def test_predict_cli_on_digit_images(ddp_run, tmp_path, capsys):
    from vit_dist import predict
    from vit_dist.checkpoint.weights import export_checkpoint
    from vit_dist.core.config import DataSection
    from vit_dist.data.transforms import SampleTransform
    from vit_dist.models import load_pretrained

    weights = export_checkpoint(ddp_run, out=tmp_path / "m.safetensors")
    images = _digit_images(tmp_path)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG" * 8)
    argv = [f"checkpoint={weights}", str(images[0]), str(broken), str(images[1]), str(images[2])]
    proc = subprocess.run(
        [sys.executable, "-m", "vit_dist.predict", *argv],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot read image {broken}: "), proc.stderr
    blocks = _parse(proc.stdout)
    assert list(blocks) == [str(p) for p in images]  # the broken one skipped, the rest printed

    # The reference: the exported weights in a fresh model, the eval transform of the sidecar.
    info = json.loads(weights.with_suffix(".json").read_text())
    model = _fresh_model(info)
    load_pretrained(model, weights, verbose=False)
    transform = SampleTransform(DataSection(img_size=16, crop_pct=1.0, mean=[0.5] * 3, std=[0.5] * 3), None)
    for path in images:
        rows = blocks[str(path)]
        assert [r for r, _, _ in rows] == [1, 2, 3, 4, 5]
        names, probs = [n for _, n, _ in rows], [p for _, _, p in rows]
        assert set(names) <= {str(i) for i in range(10)} and len(set(names)) == 5
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 5e-4
        logits = _logits(model, transform(path.read_bytes()).unsqueeze(0))[0]
        assert names[0] == str(int(logits.argmax()))
        expected = logits.softmax(-1)[[int(n) for n in names]]
        assert np.allclose(probs, expected.numpy(), atol=6e-5)

    # From the training checkpoint directly (no export): the same model, the same output.
    assert predict.main([f"checkpoint={ddp_run}", str(images[0]), "topk=3"]) == 0
    same = _parse(capsys.readouterr().out)[str(images[0])]
    assert same == blocks[str(images[0])][:3]
