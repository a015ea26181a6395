"""The model contract (``models.protocol.VitDistModel``): every registered name, every
free-form family, each family's class built directly and ``timm:<name>`` models have every
member, each of the kind the Protocol declares; the contract is documented member by member;
registration lives next to the model definitions."""

from __future__ import annotations

import ast
import collections.abc
import inspect
import sys
import types
import typing
from pathlib import Path

import pytest
import torch
from torch import nn

from vit_dist.core.config import load_config
from vit_dist.core.errors import ConfigError
from vit_dist.models import (
    DistilledVisionTransformer,
    ModelDefaults,
    SwinTransformer,
    VisionTransformer,
    VitDistModel,
    build_model,
    create_model,
    list_families,
    list_models,
    protocol,
)
from vit_dist.models.registry import check_model_kwargs, model_kwargs, resolve_spec

HINTS = typing.get_type_hints(VitDistModel)  # the data members
METHODS = {
    name: fn for name, fn in vars(VitDistModel).items() if inspect.isfunction(fn) and not name.startswith("_")
}
TIMM_NAMES = ["timm:vit_tiny_patch16_224", "timm:convnext_atto", "timm:deit_tiny_distilled_patch16_224"]


def _matches(value, hint) -> bool:
    """``value`` is of the kind ``hint`` names (unions, None, tuples, mappings, sequences,
    sets, lists and plain classes; element types of tuples, sets and lists checked)."""
    if hint is typing.Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if origin in (set, list):
        return isinstance(value, origin) and all(_matches(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, collections.abc.Mapping) and all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()
        )
    if origin is collections.abc.Sequence:
        return isinstance(value, collections.abc.Sequence)
    return isinstance(value, origin or hint)


def check_contract(model) -> None:
    """Every member of VitDistModel on ``model``, of the declared kind; methods with the
    Protocol's parameters, called, return what the Protocol declares."""
    assert isinstance(model, nn.Module) and isinstance(model, VitDistModel)
    for name, hint in HINTS.items():
        assert _matches(getattr(model, name), hint), f"{name}={getattr(model, name)!r} is not {hint}"
    for name, proto in METHODS.items():
        method = getattr(model, name)
        assert callable(method) and not isinstance(inspect.getattr_static(model, name), property), name
        have = inspect.signature(method).parameters
        for p in list(inspect.signature(proto).parameters.values())[1:]:  # past self
            assert p.name in have, f"{name}() takes no {p.name!r}"
            assert (have[p.name].default is p.empty) == (p.default is p.empty), f"{name}({p.name})"
        returns = typing.get_type_hints(proto)["return"]
        args = (model.state_dict(),) if name == "adapt_state_dict" else ()
        out = method(*args)
        assert _matches(out, returns), f"{name}() returned {type(out).__name__}, not {returns}"
    assert model.flops_per_image() > 0 and model.flops_per_image(executed=True) > 0
    assert model.parallelize_plan() == {}  # no tensor parallelism yet


@pytest.mark.parametrize("name", list_models() + list_families())
def test_every_registered_name_satisfies_the_contract(name):
    with torch.device("meta"):  # members only: no memory, no init cost
        model = create_model(name)
    check_contract(model)
    spec = resolve_spec(name)
    assert type(model) is spec.cls and model.model_name == name and model.model_kwargs == spec.kwargs
    assert set(model.transformer_blocks()) <= set(model.modules()) and model.transformer_blocks()


@pytest.mark.parametrize("cls", [VisionTransformer, DistilledVisionTransformer, SwinTransformer])
def test_every_family_class_satisfies_the_contract_built_directly(cls):
    with torch.device("meta"):
        model = cls()
    check_contract(model)
    assert model.model_name is None and dict(model.model_kwargs) == {}
    assert isinstance(model, ModelDefaults)


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_timm_models_satisfy_the_contract(name):
    pytest.importorskip("timm")
    model = create_model(name, num_classes=10, img_size=32)
    check_contract(model)
    assert model.model_name == name and model.model_kwargs == {"num_classes": 10, "img_size": 32}
    assert model.img_size == 32 and model.in_chans == 3
    assert model.return_both_heads is None  # timm's distilled DeiT averages its heads itself
    assert model.classifier_prefixes  # from timm's pretrained_cfg


def test_optional_members_have_their_none_values():
    with torch.device("meta"):
        vit, deit, swin = (create_model(n) for n in ("vit", "deit_distilled", "swin"))
    assert vit.return_both_heads is None and swin.return_both_heads is None
    assert deit.return_both_heads is False  # two heads: the evaluator may ask for both
    for m in (vit, deit, swin):
        assert m.layer_ids() is None and m.input_stats is None and m.parallelize_plan() == {}
    assert vit.classifier_prefixes == ("head.",) and deit.classifier_prefixes == ("head.", "head_dist.")
    assert swin.classifier_prefixes == ("head.fc.",)
    assert not isinstance(nn.Linear(2, 2), VitDistModel)


def test_every_member_is_documented_once():
    """A docstring right under each member of the Protocol, and no member without one."""
    tree = ast.parse(Path(protocol.__file__).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "VitDistModel")
    documented, body = set(), cls.body
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign):
            nxt = body[i + 1] if i + 1 < len(body) else None
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                documented.add(node.target.id)
        elif isinstance(node, ast.FunctionDef) and ast.get_docstring(node):
            documented.add(node.name)
    assert documented == set(HINTS) | set(METHODS)
    assert len(HINTS) + len(METHODS) == 14


def test_registration_sits_with_the_model_definitions():
    """Each name is registered by a model module, by a function of that name next to the
    family's class (registry.py registers none), and the distilled DeiT takes exactly ViT's
    keywords (no special case in the registry)."""
    modules = [m for m in list(sys.modules) if m.startswith("vit_dist.models.")]
    found = {m: list_models(module=m) + list_families(module=m) for m in modules}
    assert sorted(n for names in found.values() for n in names) == sorted(list_models() + list_families())
    assert found["vit_dist.models.registry"] == []
    for module, names in found.items():
        for name in names:
            spec = getattr(sys.modules[module], name)()
            assert spec == resolve_spec(name), name
    assert model_kwargs(DistilledVisionTransformer) == model_kwargs(VisionTransformer)
    check_model_kwargs("deit_distilled", {"depth": 2, "global_pool": "token"})
    with pytest.raises(ConfigError, match="did you mean 'depth'"):
        check_model_kwargs("deit_tiny_distilled_patch16_224", {"dpeth": 2})


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("vit", {"dpeth": 3}, "did you mean 'depth'"),
        ("vit_base_patch16_244", {}, "did you mean 'vit_base_patch16_224'"),
        ("resnet18", {}, "timm has it"),
        ("vit", {"img_size": 30, "patch_size": 4}, "not divisible"),
        ("vit", {"embed_dim": 50, "num_heads": 3}, "not divisible by num_heads"),
        ("vit", {"global_pool": "max"}, "global_pool must be"),
        ("vit", {"class_token": False}, "needs class_token"),
        ("vit", {"drop_path_rate": 1.0}, r"drop path rate must be in \[0, 1\)"),
        ("vit", {"img_size": (32, 32, 3)}, "expected an int or a pair"),
        ("deit_distilled", {"global_pool": "avg"}, "global_pool='token'"),
        ("swin", {"depths": (2, 2), "num_heads": (3,)}, "differ in length"),
        ("swin", {"global_pool": "max"}, "global_pool must be"),
    ],
)
def test_user_mistakes_in_model_keywords_are_config_errors(name, kwargs, match):
    with torch.device("meta"), pytest.raises(ConfigError, match=match):
        create_model(name, **kwargs)


def test_build_model_img_size_mismatch_is_a_config_error():
    cfg = load_config(None, ["train.steps=1", "model.name=vit", "model.img_size=48", "data.img_size=32"])
    with torch.device("meta"), pytest.raises(ConfigError, match="differs from data.img_size"):
        build_model(cfg.model, cfg.data, 10)
