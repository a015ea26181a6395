"""Fuzzed parsers: every reader of untrusted bytes (config YAML, dataset.json, checkpoint
meta.json, export sidecars, tar shards, image headers and decoders) is fed thousands of
generated and mutated inputs. Each must end in success or in its documented error kind, never in
another exception, a crash, a hang or an allocation past its bound.

Budget: ``VIT_DIST_FUZZ_EXAMPLES`` examples per property (default 1000: about 40 s for the
whole file on 2 cores), derandomized, so CI runs the same inputs every time; set it higher (and
``VIT_DIST_FUZZ_SEED`` to explore other inputs) for a longer hunt. Inputs that once failed stay
here as ``@example`` regression cases.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import time
import tracemalloc
from pathlib import Path

from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

from vit_dist.core.errors import CheckpointError, ConfigError, DataError

EXAMPLES = int(os.environ.get("VIT_DIST_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a bound of our own below: Hypothesis' deadline flakes on a loaded machine
    derandomize="VIT_DIST_FUZZ_SEED" not in os.environ,
    database=None,  # nothing written outside the test's own temporary files
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEED = seed(int(os.environ.get("VIT_DIST_FUZZ_SEED", "0")))
MEMORY_BOUND = 64 * 2**20  # bytes a parser may allocate for one input of at most a few KiB
TIME_BOUND = 10.0  # seconds for one input


def _mutated(original: bytes) -> st.SearchStrategy[bytes]:
    """``original`` with a few byte flips, insertions, deletions and a possible truncation."""
    edit = st.tuples(
        st.sampled_from(["flip", "insert", "delete", "truncate", "repeat"]),
        st.integers(0, max(len(original) - 1, 0)),
        st.integers(0, 255),
    )

    def apply(edits) -> bytes:
        data = bytearray(original)
        for op, pos, byte in edits:
            pos = min(pos, max(len(data) - 1, 0))
            if op == "flip" and data:
                data[pos] ^= byte or 1
            elif op == "insert":
                data.insert(pos, byte)
            elif op == "delete" and data:
                del data[pos : pos + byte % 16 + 1]
            elif op == "truncate":
                del data[pos:]
            elif op == "repeat" and data:
                data[pos:pos] = data[pos : pos + byte % 32 + 1] * (byte % 8 + 1)
        return bytes(data)

    return st.lists(edit, min_size=1, max_size=8).map(apply)


def _bounded(fn, *args):
    """``fn(*args)`` with its Python allocations and its time measured; fails past MEMORY_BOUND
    or TIME_BOUND (generous: one input of a few KiB takes milliseconds; a hang takes forever)."""
    tracemalloc.start()
    start = time.monotonic()
    try:
        return fn(*args)
    finally:
        elapsed = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MEMORY_BOUND, f"{fn.__name__} allocated {peak} bytes"
        assert elapsed < TIME_BOUND, f"{fn.__name__} took {elapsed:.1f} s"


def _one_line(e: BaseException) -> None:
    text = str(e)
    assert text and "\n" not in text and len(text) < 2000, text


# ---------------------------------------------------------------- JSON and YAML


CONFIG_YAML = (Path(__file__).resolve().parents[2] / "configs" / "digits_vit.yaml").read_bytes()
DATASET_JSON = json.dumps(
    {
        "format": "vit_dist.shards/1",
        "source": "digits",
        "classes": ["0", "1", "2"],
        "image_size": 32,
        "splits": {
            "train": {
                "num_samples": 40,
                "shards": [{"name": "train-000000.tar", "num_samples": 40, "num_bytes": 4096}],
            }
        },
    }
).encode()


@SEED
@FUZZ
@given(_mutated(CONFIG_YAML))
@example(b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nprecision: *b\n")
@example(b"train: {steps: 1}\ntrain: {steps: 2}\n")
@example("train:\n  steps: 1\n".encode("utf-16"))
@example(b"[" * 100_000)
def test_the_config_reader(data):
    from vit_dist.core.config import load_config

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_bytes(data)
        try:
            _bounded(load_config, path, ["output_dir=" + d])
        except ConfigError as e:
            _one_line(e)


@SEED
@FUZZ
@given(st.one_of(_mutated(DATASET_JSON), st.binary(max_size=512)))
@example(b"[]")
@example(b'{"format": "vit_dist.shards/1", "classes": 10, "splits": {}}')
@example(b'{"format": "vit_dist.shards/1", "classes": [], "splits": {"train": "x"}}')
@example(b"[" * 200_000)
@example(
    DATASET_JSON.replace(
        b'"num_samples": 40, "num_bytes"', b'"num_samples": 1' + b"0" * 100 + b', "num_bytes"'
    )
)
def test_the_dataset_json_reader(data):
    from vit_dist.data.meta import read_meta

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "dataset.json").write_bytes(data)
        try:
            _bounded(read_meta, d)
        except DataError as e:
            _one_line(e)


def _meta_json() -> bytes:
    from vit_dist.checkpoint.manifest import meta_crc

    meta = {"step": 4, "world_size": 2, "fsdp": False, "model_name": "vit", "num_classes": 10, "files": {}}
    meta["model_kwargs"] = {"embed_dim": 32, "depth": 2}
    meta["meta_crc32"] = meta_crc(meta)
    return json.dumps(meta).encode()


@SEED
@FUZZ
@given(_mutated(_meta_json()))
@example(b"[" * 100_000 + b"]" * 100_000)
@example(_meta_json().replace(b'"step": 4', b'"step": null'))
def test_the_checkpoint_meta_reader(data):
    from vit_dist.checkpoint.store import checkpoint_problem

    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d) / "checkpoints" / "step-00000004"
        ckpt.mkdir(parents=True)
        (ckpt / "meta.json").write_bytes(data)
        problem = _bounded(checkpoint_problem, ckpt)  # never raises: a damaged checkpoint is a problem
        assert problem is None or "\n" not in problem


_SIDECAR = {
    "model_name": "vit",
    "model_kwargs": {"img_size": 16, "embed_dim": 32, "in_chans": 3},
    "num_classes": 2,
    "classes": ["a", "b"],
    "img_size": 16,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.2, 0.2, 0.2],
    "crop_pct": 0.9,
}
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@SEED
@FUZZ
@given(
    st.dictionaries(st.sampled_from(sorted(_SIDECAR)), _JSON_VALUES, max_size=4),
    _mutated(json.dumps(_SIDECAR).encode()),
)
@example({"classes": ["a"]}, json.dumps(_SIDECAR).encode())
@example({"mean": [], "img_size": 0, "crop_pct": 0}, json.dumps(_SIDECAR).encode())
def test_the_export_sidecar_reader(edits, data):
    from vit_dist.checkpoint.weights import read_sidecar

    with tempfile.TemporaryDirectory() as d:
        for i, body in enumerate((json.dumps({**_SIDECAR, **edits}).encode(), data)):
            weights = Path(d) / f"m{i}.safetensors"
            weights.with_suffix(".json").write_bytes(body)
            try:
                info = _bounded(read_sidecar, weights)
            except CheckpointError as e:
                _one_line(e)
            else:  # what predict then relies on
                assert info is not None and len(info["mean"]) == len(info["std"])
                assert info["img_size"] >= 1 and 0 < info["crop_pct"] <= 1


# ---------------------------------------------------------------- tar shards


def _shard_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(3):
            for ext, body in (("jpg", b"\xff\xd8\xff" + bytes(40)), ("cls", str(i).encode())):
                info = tarfile.TarInfo(f"s{i}.{ext}")
                info.size = len(body)
                tf.addfile(info, io.BytesIO(body))
    return buf.getvalue()


SHARD = _shard_bytes()


@SEED
@FUZZ
@given(_mutated(SHARD))
@example(SHARD[:700])
@example(SHARD.replace(b"00000000050", b"77777777777", 1))  # a member that claims 8 GB
def test_the_tar_reader(data):
    from vit_dist.data.tar_reader import BadSample, read_slice

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.tar"
        path.write_bytes(data)
        try:
            samples = _bounded(lambda: list(read_slice(str(path), 0, None, max_bytes=4096)))
        except DataError as e:
            _one_line(e)
            return
        for s in samples:
            assert isinstance(s, (dict, BadSample))
            if isinstance(s, dict):
                assert all(len(v) <= 4096 for k, v in s.items() if isinstance(v, bytes))


# ---------------------------------------------------------------- images


def _images() -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8))
    out = []
    for fmt, kw in (("JPEG", {"quality": 80}), ("JPEG", {"progressive": True}), ("PNG", {}), ("WEBP", {})):
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        out.append(buf.getvalue())
    buf = io.BytesIO()
    im.convert("L").save(buf, "PNG")  # grayscale: another PNG colour type
    out.append(buf.getvalue())
    return out


IMAGES = _images()


@SEED
@FUZZ
@given(st.sampled_from(range(len(IMAGES))).flatmap(lambda i: _mutated(IMAGES[i])), st.booleans())
@example(IMAGES[2][:60], True)  # a PNG cut inside its IDAT: libpng's crash, once
@example(IMAGES[0][:200], False)  # a JPEG cut in its scan
def test_the_image_decoders_raise_or_decode_never_crash(data, train):
    """A native decoder crash would kill this process, and so fail the test run. Any exception
    is a counted bad sample in the loader (pipeline._decode); success is a (3, 16, 16) image."""
    from vit_dist.data.decode import decode_random_resized_crop, decode_resize_center_crop, image_size

    decode = decode_random_resized_crop if train else decode_resize_center_crop
    try:
        _bounded(image_size, data)  # the header parser the pixel limit relies on
        out = _bounded(decode, data, 16)
    except Exception as e:
        assert not isinstance(e, (MemoryError, RecursionError)), repr(e)
        return
    assert tuple(out.shape) == (3, 16, 16)
