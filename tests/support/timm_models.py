"""What tests/unit/test_timm_models.py and tests/integration/test_timm_models.py share."""

from __future__ import annotations

import yaml
from helpers import CONFIG

SWIN = {  # timm's Swin-T layout, shrunk: 32 px input, one block per stage, 4x4 windows
    "name": "timm:swin_tiny_patch4_window7_224",
    "embed_dim": 48,
    "depths": [1, 1, 1, 1],
    "window_size": 4,
    "drop_path_rate": 0.1,
}


def _config(tmp_path, model: dict, name: str = "config.yaml", **data) -> str:
    """The digits demo config with another model section (and data keys)."""
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["model"] = model
    cfg["data"].update(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)
