"""``hf-hub:ORG/NAME[@REVISION]`` weights (vit_dist.core.hub), never touching the network.

Each test builds a real huggingface_hub cache in a temporary HF_HOME (``hub/models--ORG--NAME``
with ``blobs/``, ``snapshots/<commit>/`` symlinks and ``refs/<branch>``) holding a tiny timm
ViT written here by timm itself, and runs with HF_HUB_OFFLINE=1 and HF_ENDPOINT at a closed
local port. The hub's own answers (no such repository / revision / file, gated) come from a
local HTTP server that speaks the hub's error headers.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ROOT, assert_ok, env, run_process
from safetensors.torch import save_file
from support.hub import (
    COMMIT_A,
    ORG,
    digit_png,
)

from vit_dist.core.errors import EXIT_CHECKPOINT

# ----------------------------------------------------------------------------------- references


# ------------------------------------------------------------------------------ predict, loading


def test_predict_command_offline_with_nothing_cached_is_one_line(hub, tmp_path):
    image = digit_png(tmp_path / "d.png")
    proc = run_process(
        [sys.executable, "-m", "vit_dist.predict", f"checkpoint=hf-hub:{ORG}/absent", str(image)],
        timeout=120,
        env=env(**hub["env"]),
    )
    assert proc.returncode == EXIT_CHECKPOINT, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("checkpoint error: hf-hub:test-org/absent: "), proc.stderr
    assert "HF_HUB_OFFLINE is set" in lines[0]


# ------------------------------------------------------------------------ the hub's own answers


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers like huggingface.co for repositories that do not exist, revisions and files
    that do not, and a gated repository (the X-Error-Code headers huggingface_hub reads)."""

    def _answer(self) -> None:
        # /{org}/{name}/resolve/{revision}/{file}
        parts = self.path.split("?")[0].strip("/").split("/")
        repo, revision = "/".join(parts[:2]), parts[3] if len(parts) > 3 else "main"
        if repo == f"{ORG}/gated":
            status, code = 403, "GatedRepo"
        elif repo != f"{ORG}/exists":
            status, code = 404, "RepoNotFound"
        elif revision != "main":
            status, code = 404, "RevisionNotFound"
        else:
            status, code = 404, "EntryNotFound"
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", f"{code} (fake hub)")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _answer

    def log_message(self, *args) -> None:  # quiet
        pass


_RESOLVE = """
import json, sys
from vit_dist.core.errors import KINDS
from vit_dist.core.hub import parse_ref, read_config, weights_file
for ref in sys.argv[1:]:
    try:
        weights_file(parse_ref(ref)) if ref.endswith("exists") else read_config(parse_ref(ref))
        print(json.dumps({"ref": ref, "ok": True}))
    except Exception as e:
        code = next(c for types, _, c in KINDS if isinstance(e, types))
        print(json.dumps({"ref": ref, "type": type(e).__name__, "code": code, "message": str(e)}))
"""


def test_the_hubs_answers_are_one_checkpoint_error_each(hub):
    """Through a real huggingface_hub client in a fresh process (its settings come from the
    environment) against a local fake hub."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    expected = {
        f"hf-hub:{ORG}/missing": "no such repository on the hub",
        f"hf-hub:{ORG}/exists@nope": "has no revision 'nope'",
        f"hf-hub:{ORG}/exists": "the repository has no file model.safetensors (nor pytorch_model.bin)",
        f"hf-hub:{ORG}/gated": "the repository is gated: accept its terms",
    }
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        results = _resolve(list(expected), {**hub["env"], "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint})
    finally:
        server.shutdown()
    _check_one_line_each(results, expected)


def test_no_network_with_nothing_cached_is_one_checkpoint_error(hub):
    """At the first refused connection, not after huggingface_hub's 5 retries with backoff
    (about 25 s, a warning line each)."""
    expected = {f"hf-hub:{ORG}/unreachable": "config.json is not in the hub cache"}
    logs: list[str] = []
    results = _resolve(
        list(expected), {**hub["env"], "HF_HUB_OFFLINE": "0"}, stderr=logs
    )  # HF_ENDPOINT: closed
    assert "Retrying" not in logs[0], logs[0]
    _check_one_line_each(results, expected)
    assert "the hub cannot be reached" in results[0]["message"], results
    assert "refused" in results[0]["message"], results  # the connection's own error, in brief


def _check_one_line_each(results: list[dict], expected: dict[str, str]) -> None:
    assert [r["ref"] for r in results] == list(expected)
    for r in results:
        assert r.get("type") == "CheckpointError" and r["code"] == EXIT_CHECKPOINT, r
        assert r["message"].startswith(r["ref"] + ": ") and expected[r["ref"]] in r["message"], r
        assert "\n" not in r["message"]


def _resolve(refs: list[str], variables: dict, stderr: list[str] | None = None) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-c", _RESOLVE, *refs],
        cwd=ROOT,
        env=env(**variables),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    if stderr is not None:
        stderr.append(proc.stderr)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


# ---------------------------------------------------------------- evaluate, fine-tune, distill


def tiny_run_config(tmp_path: Path, shards: Path, **sections) -> Path:
    """A config for vit_tiny_patch16_224 cut down to 2 blocks, on the digits shards."""
    cfg = {
        "model": {"name": "vit_tiny_patch16_224", "depth": 2},
        "data": {
            "train": str(shards),
            "val": str(shards),
            "img_size": 32,
            "workers": 1,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "crop_pct": 0.9,
        },
        "augment": {"hflip": 0.0, "randaugment_ops": 0, "random_erasing": 0.0, "mixup": 0.0, "cutmix": 0.0},
        "train": {"steps": 2, "batch_size": 16},
        "logging": {"every": 1, "wandb": False},
        "precision": "fp32",
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_evaluate_with_hub_weights_equals_the_local_file(hub, weights, digits_data_dir, tmp_path):
    config = tiny_run_config(tmp_path, digits_data_dir)
    save_file(weights["a"], str(tmp_path / "local.safetensors"))
    results = {}
    for name, checkpoint in (("hub", f"hf-hub:{ORG}/tiny-vit"), ("local", tmp_path / "local.safetensors")):
        proc = run_process(
            [sys.executable, "-m", "vit_dist.evaluate", "--config", str(config)]
            + [f"checkpoint={checkpoint}", f"output_dir={tmp_path / name}"],
            timeout=300,
            env=env(**hub["env"]),
        )
        assert_ok(proc)
        results[name] = json.loads((tmp_path / name / "eval.json").read_text())
    hub_result, local = results["hub"], results["local"]
    pinned = f"loaded {len(weights['a'])} tensors from hf-hub:{ORG}/tiny-vit@{COMMIT_A}"
    assert hub_result["weights"].startswith(pinned), hub_result
    assert hub_result["num_samples"] == local["num_samples"] == 360
    assert hub_result["top1"] == local["top1"]
    assert hub_result["loss"] == pytest.approx(local["loss"], abs=1e-6)


@pytest.mark.slow
def test_fine_tune_from_the_hub_at_another_size_and_classes_with_a_hub_teacher(
    hub, weights, digits_data_dir, tmp_path
):
    """model.pretrained=hf-hub (5 classes, 32 px) -> the digits (10 classes) at 48 px: position
    embeddings resized, head re-initialised; distill.teacher_weights=hf-hub builds the teacher
    from config.json (10 classes, resized to 48 px, its own mean/std)."""
    out = tmp_path / "run"
    config = tiny_run_config(
        tmp_path,
        digits_data_dir,
        model={"pretrained": f"hf-hub:{ORG}/tiny-vit-in5"},
        data={"img_size": 48, "mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3]},
        optim={"lr": 1.0e-9, "warmup_steps": 0, "weight_decay": 0.0},
        distill={"type": "soft", "teacher_weights": f"hf-hub:{ORG}/tiny-vit"},
        checkpoint={"every": 2},
    )
    proc = run_process(
        [sys.executable, "-m", "vit_dist.train", "--config", str(config), f"output_dir={out}"],
        timeout=600,
        env=env(**hub["env"]),
    )
    assert_ok(proc)
    log = proc.stdout + proc.stderr
    assert f"from hf-hub:{ORG}/tiny-vit-in5@{COMMIT_A}; classifier re-initialised (head)" in log, log[-3000:]
    assert "(checkpoint: 5)" in log
    teacher = f"teacher loaded {len(weights['a'])} tensors from hf-hub:{ORG}/tiny-vit@{COMMIT_A}"
    assert teacher in log, log[-3000:]

    state = torch.load(next(out.glob("checkpoints/step-*/state.pt")), weights_only=True)["model"]
    start = weights["in5"]
    assert state["pos_embed"].shape == (1, 1 + 9, 192)  # 2x2 patches + cls -> 3x3 + cls
    assert state["head.weight"].shape == (10, 192)
    for name in ("patch_embed.proj.weight", "blocks.1.mlp.fc2.weight", "cls_token"):
        torch.testing.assert_close(state[name], start[name], rtol=0, atol=1e-6)  # lr 1e-9: 2 steps


# ------------------------------------------------------------------------------------ the recipe
