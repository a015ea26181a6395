"""``augment.policy``: the text of an augmentation policy, parsed (no torch here, so that the
config layer checks it before any work; ``data/policies.py`` builds the transform).

Two forms:

- ``three_augment`` (timm's ``3a``): DeiT III's 3-Augment, one of grayscale, solarization or
  Gaussian blur per image;
- a timm RandAugment string, ``rand-`` then dash-separated sections in any order, as timm's
  ``rand_augment_transform`` reads them: ``m<int>`` magnitude (default 10, on timm's 0-10
  scale), ``n<int>`` ops per image (2), ``p<float>`` probability of each op (0.5),
  ``mstd<float>`` std of Gaussian noise on the magnitude per op (0; above 100: uniform in
  [0, m]), ``mmax<int>`` upper clip of the magnitude (10), ``inc<0|1>`` the ops whose strength
  increases with the magnitude. DeiT's recipe is ``rand-m9-mstd0.5-inc1``. timm's weighted op
  sets (``t...``) and AutoAugment / AugMix policies are refused by name.
"""

from __future__ import annotations

import dataclasses
import math
import re

from .errors import ConfigError

THREE_AUGMENT = ("three_augment", "3a")


@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
    magnitude: int = 10
    num_ops: int = 2
    prob: float = 0.5
    magnitude_std: float = 0.0
    magnitude_max: int = 10
    increasing: bool = False


def parse_policy(text: str, key: str = "augment.policy") -> RandAugmentSpec | str:
    """``'three_augment'`` for 3-Augment, else the :class:`RandAugmentSpec` of a timm string;
    ConfigError naming ``key`` and the section it cannot read."""
    if text in THREE_AUGMENT:
        return "three_augment"
    head, *sections = text.split("-")
    if head != "rand":
        raise ConfigError(
            f"{key}: {text!r} is not a policy here: use three_augment (or 3a), or a timm RandAugment "
            "string such as rand-m9-mstd0.5-inc1 (AutoAugment and AugMix policies are not supported)"
        )
    fields: dict = {}
    for section in sections:
        m = re.fullmatch(r"(mstd|mmax|inc|m|n|p)(\d+(?:\.\d*)?|\.\d+)", section)
        if m is None:
            raise ConfigError(
                f"{key}: section {section!r} of {text!r} is not one of m<int>, n<int>, p<float>, "
                "mstd<float>, mmax<int>, inc<0|1> (timm's weighted op sets t... are not supported)"
            )
        name, value = m.groups()
        try:
            if name == "mstd":
                std = float(value)
                fields["magnitude_std"] = math.inf if std > 100 else std
            elif name == "p":
                fields["prob"] = float(value)
            elif name == "inc":
                fields["increasing"] = bool(int(value))
            else:
                fields[{"m": "magnitude", "n": "num_ops", "mmax": "magnitude_max"}[name]] = int(value)
        except ValueError:
            raise ConfigError(f"{key}: section {section!r} of {text!r} needs an integer") from None
    spec = RandAugmentSpec(**fields)
    if not 0.0 <= spec.prob <= 1.0 or not 0 <= spec.num_ops <= 64:
        raise ConfigError(f"{key}: {text!r}: p must be in [0, 1] and n in [0, 64]")
    return spec
