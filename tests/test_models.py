"""TemporalNet, the dual-stream encoder and the classifier against METHOD.md ("Encoder").

Forward passes use the tiny preset and short signals, so the file runs in seconds on a 2-core CPU; the
paper preset is only built (shapes, parameter count), never run. The torch.compile test is marked slow.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from ecgfast import LEADS
from ecgfast.models import (
    LEAD_GROUPS,
    PRESETS,
    DualStreamTemporalNet,
    ECGClassifier,
    TemporalNet,
    TemporalNetConfig,
    count_parameters,
    temporalnet_config,
    temporalnet_macs,
)

ODD_LENGTHS = (2500, 1001, 37)  # the 5 s segment, an odd length, a prime barely above the pool


def _tiny_dual(seed: int = 0) -> DualStreamTemporalNet:
    torch.manual_seed(seed)
    return DualStreamTemporalNet(temporalnet_config("tiny"))


def _paper_net_parameters_by_hand() -> int:
    """One TemporalNet of METHOD.md, counted from its layer list (conv weight c_in*c_out*k, BN 2c)."""

    def conv(c_in, c_out, k, bias=False):
        return c_in * c_out * k + (c_out if bias else 0)

    def bn(c):
        return 2 * c  # weight and bias; running stats are buffers

    stem = conv(1, 32, 7, bias=True) + bn(32)
    blocks = [(32, 64), (64, 128), (128, 256), (256, 256)]
    branches = 0
    for k in (3, 7):
        for c_in, c_out in blocks:
            branches += conv(c_in, c_in, k) + bn(c_in) + conv(c_in, c_out, k) + bn(c_out)
            if c_in != c_out:
                branches += conv(c_in, c_out, 1) + bn(c_out)  # 1x1 skip
    fusion = conv(512, 512, 3, bias=True) + bn(512)
    projection = (512 * 256 + 256) + (256 * 128 + 128)
    return stem + branches + fusion + projection


# --- configuration ------------------------------------------------------------------------------------------


def test_lead_groups_match_method():
    assert LEAD_GROUPS == ((0, 1, 6, 7), (2, 3, 4, 5))
    assert [LEADS[i] for i in LEAD_GROUPS[0]] == ["I", "II", "V5", "V6"]
    assert [LEADS[i] for i in LEAD_GROUPS[1]] == ["V1", "V2", "V3", "V4"]


def test_presets_and_width():
    assert PRESETS["paper"] == TemporalNetConfig()
    assert PRESETS["paper"].block_channels == [(32, 64), (64, 128), (128, 256), (256, 256)]
    assert PRESETS["small"].block_channels == [(8, 16), (16, 32), (32, 64), (64, 64)]
    assert PRESETS["small"].feature_dim == 128
    assert min(c for pair in PRESETS["tiny"].block_channels for c in pair) == 8  # the floor
    assert temporalnet_config("tiny", dropout=0.1).dropout == 0.1
    with pytest.raises(ValueError, match="unknown TemporalNet preset"):
        temporalnet_config("huge")
    with pytest.raises(ValueError, match="odd"):
        TemporalNetConfig(kernels=(3, 4))
    with pytest.raises(ValueError, match="dropout"):
        TemporalNetConfig(dropout=1.0)


# --- the paper network, built but not run -------------------------------------------------------------------


def test_paper_parameter_count_matches_layer_list():
    per_net = _paper_net_parameters_by_hand()
    assert per_net == 3_000_896
    net = TemporalNet(temporalnet_config("paper"))
    assert count_parameters(net) == per_net
    dual = DualStreamTemporalNet(temporalnet_config("paper"))
    assert count_parameters(dual) == 2 * per_net
    assert count_parameters(ECGClassifier(dual).head) == 512 + 1


def test_paper_layer_shapes():
    net = TemporalNet(temporalnet_config("paper"))
    assert net.stem.conv.weight.shape == (32, 1, 7) and net.stem.conv.bias is not None
    assert net.stem.pool.kernel_size == 4
    for branch, k in zip(net.branches, (3, 7), strict=True):
        assert len(branch) == 4
        first = branch[0]
        assert first.conv1.weight.shape == (32, 32, k) and first.conv1.bias is None
        assert first.conv2.weight.shape == (64, 32, k) and first.conv2.bias is None
        assert first.conv1.padding == (k // 2,) and first.conv1.stride == (1,)
        # 1x1 skips exactly where the channel count changes: blocks 1-3, not block 4 (256 -> 256)
        has_skip = [isinstance(b.skip, torch.nn.Sequential) for b in branch]
        assert has_skip == [True, True, True, False]
        assert branch[2].skip.conv.weight.shape == (256, 128, 1)
        assert all(isinstance(b.dropout, torch.nn.Dropout) and b.dropout.p == 0.5 for b in branch)
    assert net.fusion.conv.weight.shape == (512, 512, 3)
    assert net.fusion.dropout.p == 0.5
    assert net.projection.hidden.weight.shape == (256, 512) and net.projection.out.weight.shape == (128, 256)


def test_macs_match_method_and_flop_counter():
    macs = temporalnet_macs(temporalnet_config("paper"), 2500)
    # METHOD.md: "about 1.8 GMAC per lead per 5 s segment"; the layer list gives 1.768 GMAC
    assert macs["total"] == 1_768_240_000
    assert abs(macs["total"] / 1.8e9 - 1) < 0.05
    # independent check of the formula: torch's FLOP counter on a tiny net (2 FLOPs per MAC)
    from torch.utils.flop_counter import FlopCounterMode

    config = temporalnet_config("tiny")
    net = TemporalNet(config).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.randn(1, 1, 101))
    assert counter.get_total_flops() == 2 * temporalnet_macs(config, 101)["total"]


# --- shapes and invariances (tiny preset) -------------------------------------------------------------------


@pytest.mark.parametrize("t", ODD_LENGTHS)
def test_output_shapes(t):
    enc = _tiny_dual().eval()
    d = enc.feature_dim
    x = torch.randn(3, 8, t)
    with torch.no_grad():
        assert enc(x).shape == (3, 2, d)
        assert enc.embed(x).shape == (3, 2, 128)
        assert enc.streams[0](x[:, :4]).shape == (3, 4, d)
        assert enc.streams[0].embed(x[:, :4]).shape == (3, 4, 128)
        assert ECGClassifier(enc, n_outputs=2)(x).shape == (3, 2)


def test_bad_inputs_raise():
    enc = _tiny_dual()
    with pytest.raises(ValueError, match="expects"):
        enc(torch.randn(2, 6, 100))  # fewer leads than the groups need
    with pytest.raises(ValueError, match="T >= 4"):
        enc.streams[0](torch.randn(2, 4, 3))


def test_streams_are_independent():
    enc = _tiny_dual().eval()
    x = torch.randn(2, 8, 200)
    with torch.no_grad():
        base = enc(x)
        for lead, changed_stream in (("V1", 1), ("I", 0)):
            x2 = x.clone()
            x2[:, LEADS.index(lead)] += torch.randn(2, 200)
            out = enc(x2)
            other = 1 - changed_stream
            assert torch.equal(out[:, other], base[:, other]), f"changing {lead} moved stream {other}"
            assert not torch.allclose(out[:, changed_stream], base[:, changed_stream])


def test_weights_shared_across_leads():
    enc = _tiny_dual().eval()
    x = torch.randn(2, 8, 150)
    net = enc.streams[0]
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        per_lead = net(x[:, :4])
        torch.testing.assert_close(net(x[:, :4][:, perm]), per_lead[:, perm], rtol=1e-5, atol=1e-6)
        # a stream feature is the mean over its leads, so a permutation inside a group leaves it unchanged
        group_b = list(LEAD_GROUPS[1])
        x2 = x.clone()
        x2[:, group_b] = x[:, [group_b[i] for i in perm]]
        torch.testing.assert_close(enc(x2), enc(x), rtol=1e-5, atol=1e-6)


def test_batch_independence_in_eval():
    enc = _tiny_dual().eval()
    x = torch.randn(5, 8, 120)
    with torch.no_grad():
        batched = enc.embed(x)
        single = torch.cat([enc.embed(x[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def test_embed_projects_the_mean_like_the_authors_mean_of_projections():
    enc = _tiny_dual().eval()
    x = torch.randn(2, 8, 90)
    with torch.no_grad():
        authors = torch.stack([net.embed(x[:, list(g)]).mean(dim=1)
                               for net, g in zip(enc.streams, LEAD_GROUPS, strict=True)], dim=1)
        torch.testing.assert_close(enc.embed(x), authors, rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter():
    enc = _tiny_dual().train()
    z = enc.embed(torch.randn(4, 8, 80))
    (z * torch.randn_like(z)).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        # a conv bias right before a train-mode BN is cancelled by the BN's mean: its gradient is ~0 by design
        if not name.endswith(("stem.conv.bias", "fusion.conv.bias")):
            assert p.grad.abs().sum() > 0, name


# --- classifier ---------------------------------------------------------------------------------------------


def test_classifier_parameter_split():
    enc = _tiny_dual()
    clf = ECGClassifier(enc)
    backbone = {id(p) for p in clf.backbone_parameters()}
    head = {id(p) for p in clf.head_parameters()}
    projection = {id(p) for s in enc.streams for p in s.projection.parameters()}
    everything = {id(p) for p in clf.parameters()}
    assert backbone.isdisjoint(head) and backbone.isdisjoint(projection)
    assert backbone | head | projection == everything
    groups = clf.parameter_groups(backbone_lr=1e-4, head_lr=0.02)
    assert [g["lr"] for g in groups] == [1e-4, 0.02]
    # the classifier is the mean of the two stream features through one Linear
    x = torch.randn(2, 8, 60)
    clf.eval()
    with torch.no_grad():
        torch.testing.assert_close(clf(x), clf.head.linear(enc(x).mean(dim=1)))


def test_classifier_on_a_single_temporalnet_means_over_leads():
    torch.manual_seed(0)
    net = TemporalNet(temporalnet_config("tiny")).eval()
    clf = ECGClassifier(net).eval()
    x = torch.randn(2, 8, 60)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), clf.head.linear(net(x).mean(dim=1)))


def test_freeze_encoder():
    clf = ECGClassifier(_tiny_dual()).freeze_encoder()
    clf.train()
    assert clf.training and clf.head.training
    assert not any(m.training for m in clf.encoder.modules())
    stats = {k: v.clone() for k, v in clf.encoder.state_dict().items()}
    x = torch.randn(4, 8, 100)
    out = clf(x)
    torch.testing.assert_close(out, clf(x))  # no dropout in a frozen encoder
    out.sum().backward()
    assert all(p.grad is None for p in clf.encoder.parameters())
    assert all(p.grad is not None for p in clf.head_parameters())
    for k, v in clf.encoder.state_dict().items():
        assert torch.equal(v, stats[k]), f"{k} changed in a frozen encoder"
    assert len(clf.parameter_groups(backbone_lr=1e-4, head_lr=0.02)) == 1
    clf.unfreeze_encoder()
    assert clf.encoder.training and all(p.requires_grad for p in clf.encoder.parameters())


# --- torch.compile ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch internals
def test_compile_fullgraph_matches_eager():
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        pytest.skip("torch.compile (inductor) on CPU needs a C++ compiler, none found")
    enc = _tiny_dual().eval()
    x = torch.randn(2, 8, 64)
    compiled = torch.compile(enc.embed, fullgraph=True)  # fullgraph: fails on any graph break
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), enc.embed(x), rtol=1e-4, atol=1e-5)


def test_cpu_fast_dropout_is_dropout_in_distribution_and_gradient():
    from ecgfast.models.dropout import CPUFastDropout

    torch.manual_seed(0)
    layer = CPUFastDropout(0.3)
    x = torch.ones(200_000, requires_grad=True)
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # kept with probability 1 - p
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))  # inverted scaling: E[y] = x
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.7)  # the gradient passes through the kept elements only
    layer.eval()
    assert torch.equal(layer(x), x)
    assert isinstance(layer, torch.nn.Dropout) and "p=0.3" in repr(layer)
    assert torch.equal(CPUFastDropout(1.0)(torch.ones(5)), torch.zeros(5))
