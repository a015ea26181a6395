"""Weights from the Hugging Face hub: ``hf-hub:ORG/NAME[@REVISION]`` wherever a weights file is
accepted (``model.pretrained``, ``distill.teacher_weights``, ``checkpoint=`` of evaluate and
predict).

Files are resolved through huggingface_hub's own cache (``hf_hub_download``), so everything
that configures it applies: ``HF_HOME`` / ``HF_HUB_CACHE`` (where), ``HF_HUB_OFFLINE=1`` (cache
only), ``HF_TOKEN`` (private and gated repositories), ``HF_ENDPOINT`` (a mirror). ``REVISION``
is a branch, a tag or a commit hash; without one, ``main``.

The repository is read in timm's layout (what ``timm.models.push_to_hf_hub`` writes):
``config.json`` names the ``architecture``, ``num_classes``, optional ``model_args`` and
``label_names``, and the preprocessing under ``pretrained_cfg`` (``input_size``, ``mean``,
``std``, ``crop_pct``, ``interpolation``); the weights are ``model.safetensors``, or else
``pytorch_model.bin`` (read by ``models.pretrained`` with ``torch.load(weights_only=True)``,
so it can never run code). An older single-dict ``config.json`` (no ``pretrained_cfg``) is
read too.

Every failure is one line: a malformed reference is a ConfigError, anything the hub or the
cache cannot give (no such repository, revision or file, gated or private without a token, no
network, offline with nothing cached, an HTTP error) a CheckpointError (exit 4).

This module loads neither torch nor huggingface_hub at import (``import vit_dist`` stays fast
and works without the hub client); huggingface_hub is imported by the function that resolves.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from .errors import CheckpointError, ConfigError
from .files import load_json_object

log = logging.getLogger(__name__)

PREFIX = "hf-hub:"
SAFETENSORS = "model.safetensors"
PICKLE = "pytorch_model.bin"
CONFIG = "config.json"
# timm's defaults for a pretrained_cfg that leaves a value out (timm.data.constants, _cfg).
_DEFAULT_MEAN = (0.485, 0.456, 0.406)
_DEFAULT_STD = (0.229, 0.224, 0.225)
_DEFAULT_CROP_PCT = 0.875
# ORG/NAME as the hub allows them: letters, digits, '-', '_', '.'; no '--' or '..' runs.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
_FORMAT = "expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION (e.g. hf-hub:timm/vit_base_patch16_224.augreg_in21k)"


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hf-hub:`` reference."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class HubModelConfig:
    """What a timm ``config.json`` says about the model and its preprocessing."""

    architecture: str
    num_classes: int
    model_args: dict
    global_pool: str | None
    img_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    interpolation: str
    label_names: list[str] | None


def is_hub_ref(value: object) -> TypeGuard[str]:
    """Whether a weights setting names the hub (``hf-hub:...``) rather than a local path."""
    return isinstance(value, str) and value.startswith(PREFIX)


def parse_ref(value: str, key: str = "weights") -> HubRef:
    """``hf-hub:ORG/NAME[@REVISION]`` -> HubRef; a ConfigError naming ``key`` otherwise."""
    rest = value[len(PREFIX) :] if is_hub_ref(value) else ""
    repo_id, at, revision = rest.partition("@")
    if not _REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id or (at and not revision):
        raise ConfigError(f"{key}={value!r}: {_FORMAT}")
    if revision and (revision != revision.strip() or any(c.isspace() for c in revision)):
        raise ConfigError(f"{key}={value!r}: a revision has no spaces ({_FORMAT})")
    return HubRef(repo_id, revision or None)


def _known_errors() -> tuple[type[BaseException], ...]:
    """The exception types a hub download can end with that are the user's situation, not a
    bug: huggingface_hub's (its HTTP errors are OSErrors), OSError (connection refused, a
    read-only cache, ...), ValueError (the client's own validation), and the base errors of
    the HTTP library it uses (httpx2 in huggingface_hub 2.x, httpx in 1.x, requests in 0.x),
    whichever of them is installed."""
    found: list[type[BaseException]] = [OSError, ValueError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _first_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _hub_error(ref: HubRef, filename: str, e: BaseException) -> CheckpointError:
    """One line for a failed download (the most specific of huggingface_hub's errors first)."""
    # huggingface_hub.utils re-exports these in every version this package supports (>=0.23).
    from huggingface_hub import constants
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, GatedRepoError):
        why = "the repository is gated: accept its terms on huggingface.co and set HF_TOKEN"
    elif isinstance(e, RepositoryNotFoundError):
        why = "no such repository on the hub (or it is private and HF_TOKEN is not set or has no access)"
    elif isinstance(e, RevisionNotFoundError):
        why = f"{ref.repo_id} has no revision {ref.revision!r} (a branch, tag or commit hash)"
    elif isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        if not constants.HF_HUB_OFFLINE and e.__cause__ is not None:  # the connection's own error
            reason += f" ({_first_line(e.__cause__)})"
        why = (
            f"{filename} is not in the hub cache ({constants.HF_HUB_CACHE}) and {reason}; "
            "download it once where the network is reachable (same HF_HOME)"
        )
    elif isinstance(e, EntryNotFoundError):
        why = f"the repository has no file {filename}"
    elif isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        why = f"the hub refused {filename} (HTTP {status}): {_first_line(e)}"
    else:
        why = f"cannot fetch {filename}: {_first_line(e)}"
    return CheckpointError(f"{ref}: {why}")


def _is_missing(e: BaseException) -> bool:
    """A file the repository (or, offline, the cache) does not have: try the next candidate."""
    # Only once a download failed: see _hub_error.
    from huggingface_hub.utils import EntryNotFoundError

    return isinstance(e, EntryNotFoundError)


def _download(ref: HubRef, filename: str) -> Path:
    """One file of the repository through the hub cache; huggingface_hub's own errors pass."""
    # Imported here, not at the top: only a hub reference needs the client, and importing it
    # (with its HTTP library) would slow down every `import vit_dist`.
    from huggingface_hub import hf_hub_download

    # The HTTP clients log every request at INFO, which our INFO logging would print.
    for noisy in ("httpx", "httpx2", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _reachable_or_cached(ref, filename)
    return Path(hf_hub_download(repo_id=ref.repo_id, filename=filename, revision=ref.revision))


def _reachable_or_cached(ref: HubRef, filename: str) -> None:
    """For a file that is not in the cache, one metadata request first, without retries: with
    no network, hf_hub_download would retry the connection 5 times with backoff (about 25 s and a
    warning line each) before failing; here the first failure is the answer, and it is the same
    LocalEntryNotFoundError (cause attached) that :func:`_hub_error` words. A cached file is left
    to hf_hub_download, which falls back to the cache at once when the hub cannot be reached."""
    # The hub client: imported only for a hub reference (see _download)
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.utils import LocalEntryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return
    if isinstance(try_to_load_from_cache(ref.repo_id, filename, revision=ref.revision), str):
        return
    url = hf_hub_url(ref.repo_id, filename, revision=ref.revision)
    try:
        get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as e:
        if not _no_answer(e):
            raise  # the hub answered (404, 401, ...): hf_hub_download and _hub_error word it
        raise LocalEntryNotFoundError(f"{url}: the hub cannot be reached") from e


# What huggingface_hub's HTTP clients raise when no answer came (refused, DNS, timeout): httpx's
# (huggingface_hub 1.x / 2.x: httpx or its fork httpx2) TransportError family, requests' (0.x)
# ConnectionError / Timeout, which are OSErrors. By name: which client it is depends on the
# installed huggingface_hub, and none of them need be importable.
_NO_ANSWER = {"TransportError", "NetworkError", "TimeoutException", "ConnectError", "ConnectTimeout"}


def _no_answer(e: BaseException) -> bool:
    from huggingface_hub.utils import HfHubHTTPError  # only for a hub reference (see _download)

    if isinstance(e, HfHubHTTPError):  # an answer (an OSError too, through its HTTP client)
        return False
    return isinstance(e, (OSError, TimeoutError)) or any(c.__name__ in _NO_ANSWER for c in type(e).__mro__)


def fetch(ref: HubRef, filename: str) -> Path:
    """The local path of ``filename`` in ``ref`` (downloaded into the hub cache if needed)."""
    try:
        return _download(ref, filename)
    except _known_errors() as e:
        raise _hub_error(ref, filename, e) from None


def weights_file(ref: HubRef) -> Path:
    """The repository's weights: ``model.safetensors``, else ``pytorch_model.bin``."""
    try:
        return _download(ref, SAFETENSORS)
    except _known_errors() as e:
        if not _is_missing(e):
            raise _hub_error(ref, SAFETENSORS, e) from None
        first = e
    try:
        path = _download(ref, PICKLE)
    except _known_errors() as e:
        if not _is_missing(e):
            raise _hub_error(ref, PICKLE, e) from None
        raise _hub_error(ref, f"{SAFETENSORS} (nor {PICKLE})", first) from None
    log.info("%s: no %s, reading %s (tensors only)", ref, SAFETENSORS, PICKLE)
    return path


def describe(ref: HubRef, path: Path) -> str:
    """``hf-hub:ORG/NAME@COMMIT``: the reference pinned to the commit its file came from (the
    cache keeps files under ``snapshots/<commit>/``), for logs and eval.json."""
    commit = path.parent.name if path.parent.parent.name == "snapshots" else ref.revision
    return f"{PREFIX}{ref.repo_id}" + (f"@{commit}" if commit else "")


def _number_list(value: object, n: int, what: str) -> tuple[float, ...]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != n
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"{what} is not a list of {n} numbers: {value!r}")
    return tuple(float(v) for v in value)


def parse_config(cfg: dict) -> HubModelConfig:
    """A timm ``config.json`` (already parsed) -> HubModelConfig; ValueError/KeyError/TypeError
    when it is not one."""
    if "pretrained_cfg" not in cfg:  # the older single-dict layout
        cfg = {"architecture": cfg["architecture"], "pretrained_cfg": cfg, **cfg}
    pcfg = cfg["pretrained_cfg"]
    if not isinstance(pcfg, dict):
        raise TypeError("pretrained_cfg is not an object")
    architecture = cfg["architecture"]
    if not isinstance(architecture, str) or not architecture:
        raise ValueError(f"architecture is not a name: {architecture!r}")
    num_classes = cfg.get("num_classes", pcfg.get("num_classes", 1000))
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise ValueError(f"num_classes is not a count: {num_classes!r}")
    model_args = dict(cfg.get("model_args") or {})
    input_size = _number_list(pcfg.get("input_size", (3, 224, 224)), 3, "pretrained_cfg.input_size")
    in_chans, height, width = (int(v) for v in input_size)
    if isinstance(model_args.get("img_size"), int):  # the weights' own size, as timm reads it
        height = width = model_args["img_size"]
    if height != width:
        raise ValueError(f"input_size {height}x{width} is not square (vit_dist models take square images)")
    labels = cfg.get("label_names", pcfg.get("label_names", pcfg.get("labels")))
    labels = [str(x) for x in labels] if isinstance(labels, list) and len(labels) == num_classes else None
    crop_pct = pcfg.get("crop_pct", _DEFAULT_CROP_PCT)
    if not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct is not in (0, 1]: {crop_pct!r}")
    global_pool = cfg.get("global_pool")
    return HubModelConfig(
        architecture=architecture,
        num_classes=num_classes,
        model_args=model_args,
        global_pool=global_pool if isinstance(global_pool, str) else None,
        img_size=height,
        in_chans=in_chans,
        mean=_number_list(pcfg.get("mean", _DEFAULT_MEAN), in_chans, "pretrained_cfg.mean"),
        std=_number_list(pcfg.get("std", _DEFAULT_STD), in_chans, "pretrained_cfg.std"),
        crop_pct=float(crop_pct),
        interpolation=str(pcfg.get("interpolation", "bicubic")),
        label_names=labels,
    )


def read_config(ref: HubRef) -> HubModelConfig:
    """The repository's ``config.json`` read as timm writes it (see the module docstring)."""
    path = fetch(ref, CONFIG)
    cfg = load_json_object(path, limit=16 * 1024 * 1024, error=CheckpointError, what=f"{ref} {CONFIG}")
    try:
        return parse_config(cfg)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{ref}: {CONFIG} is not a timm model config ({type(e).__name__}: {e})"
        ) from None


def preprocessing_differences(
    hc: HubModelConfig, mean: list[float], std: list[float], interpolation: str
) -> list[str]:
    """How a run's input normalisation and resize filter differ from the weights' own
    (``pretrained_cfg``), one phrase each; fine-tuning with other statistics quietly costs
    accuracy. A filter vit_dist does not have (lanczos, ...) is not compared."""
    out = []
    for key, mine, theirs in (("data.mean", mean, hc.mean), ("data.std", std, hc.std)):
        if len(mine) != len(theirs) or any(abs(a - b) > 1e-3 for a, b in zip(mine, theirs)):
            out.append(f"{key}={list(mine)} (the weights': {list(theirs)})")
    if hc.interpolation in ("bilinear", "bicubic") and interpolation != hc.interpolation:
        out.append(f"data.interpolation={interpolation} (the weights': {hc.interpolation})")
    return out
