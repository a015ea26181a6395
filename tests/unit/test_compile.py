"""Per-block torch.compile (parallel.apply_compile): every block runs compiled, graphs are shared.

A counting dynamo backend stands in for inductor, so these check what dynamo traces and how often
each graph runs, without paying for code generation.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from vit_dist.models import create_model
from vit_dist.runtime.parallel import apply_compile


class CountingBackend:
    """Records each graph dynamo hands over and counts how often compiled code runs."""

    def __init__(self):
        self.graphs = 0
        self.calls = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs += 1

        def run(*args):
            self.calls += 1
            return gm.forward(*args)

        return run


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _train_then_eval(model: torch.nn.Module, img: int, backend: CountingBackend) -> tuple[int, int, int]:
    """(graphs for training, compiled block runs in one training forward, graphs added by eval)."""
    x = torch.randn(2, 3, img, img)
    model.train()
    out = model(x)
    (out[0] if isinstance(out, tuple) else out).sum().backward()
    train_graphs, train_calls = backend.graphs, backend.calls
    model.eval()
    with torch.no_grad():
        model(x)
    return train_graphs, train_calls, backend.graphs - train_graphs


def test_vit_blocks_with_drop_path_share_one_graph():
    # Stochastic depth gives every block its own rate; a float rate would be a constant to dynamo
    # and force one graph per block, past the recompile limit (8) for a 12-block model.
    model = create_model(
        "vit", img_size=32, patch_size=8, embed_dim=32, depth=12, num_heads=2, drop_path_rate=0.1
    )
    rates = {blk.drop_path1.drop_prob for blk in model.blocks}
    assert len(rates) == 12
    backend = CountingBackend()
    apply_compile(model.transformer_blocks(), backend=backend)
    train_graphs, train_calls, eval_graphs = _train_then_eval(model, 32, backend)
    assert train_calls == 12  # every block ran compiled, none fell back to eager
    # block 0 (rate 0, no drop path), one graph for blocks 1-10, and the last block, which
    # computes the class token only (ViT.forward with token pooling)
    assert train_graphs == 3
    assert eval_graphs == 3


def test_swin_tiny_compiles_every_block_past_the_default_recompile_limit():
    # Swin-T: 12 blocks, 7 distinct graphs (4 stage shapes x shifted or not; the 7x7 last stage is
    # never shifted) in training and 7 more under no_grad -- 14 > dynamo's default limit of 8.
    model = create_model("swin_tiny_patch4_window7_224", num_classes=10)
    backend = CountingBackend()
    apply_compile(model.transformer_blocks(), backend=backend)
    train_graphs, train_calls, eval_graphs = _train_then_eval(model, 224, backend)
    assert train_calls == 12
    assert train_graphs == 7
    assert eval_graphs == 7
    calls_before = backend.calls
    with torch.no_grad():
        model(torch.randn(2, 3, 224, 224))
    assert backend.calls - calls_before == 12  # cached graphs reused, all blocks still compiled


def test_compiled_drop_path_matches_eager_statistics():
    # The tensor rate must still drop whole samples at the configured rate and rescale by 1/keep.
    from vit_dist.models.layers import DropPath

    dp = DropPath(0.25).train()
    compiled = torch.compile(dp, backend="eager", dynamic=False)
    torch.manual_seed(0)
    y = compiled(torch.ones(8000, 4))
    kept = (y[:, 0] != 0).float().mean().item()
    assert 0.73 < kept < 0.77
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.75))


def test_compiled_blocks_give_eager_outputs_and_gradients():
    # Under compile the blocks take other code paths (e.g. the MLP's bias joins GELU's kernel on
    # CPU); dynamo with the eager backend runs those paths without code generation.
    torch.manual_seed(0)
    eager = create_model("vit", img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5)
    compiled = create_model(
        "vit", img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=5
    )
    with torch.no_grad():  # biases start at zero: make every parameter count
        for p in eager.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    compiled.load_state_dict(eager.state_dict())
    backend = CountingBackend()
    apply_compile(compiled.transformer_blocks(), backend=backend)
    x = torch.randn(4, 3, 32, 32)
    outs = []
    for model in (eager, compiled):
        out = model(x)
        (out * torch.arange(out.numel()).reshape(out.shape)).sum().backward()
        outs.append(out.detach())
    assert backend.calls == 3  # the compiled model really ran compiled blocks
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    grads = dict(eager.named_parameters())
    for k, p in compiled.named_parameters():
        scale = grads[k].grad.abs().max().item()
        torch.testing.assert_close(p.grad, grads[k].grad, rtol=1e-4, atol=1e-5 * scale + 1e-7, msg=k)
