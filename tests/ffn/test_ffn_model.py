"""The FFN network: the CPU input layout changes speed, not results."""

from __future__ import annotations

import pytest
import torch

from connectome.ffn import model as ffn_model
from connectome.ffn.model import FFN, FFNConfig


def test_channels_last_input_gives_the_default_layouts_logits_and_gradients(monkeypatch):
    torch.manual_seed(0)
    net = FFN(FFNConfig(fov=(9, 9, 9), deltas=(3, 3, 3), depth=3, features=8))
    x = torch.randn(3, 2, 9, 9, 9)
    results = {}
    for channels_last in (False, True):
        monkeypatch.setattr(ffn_model, "CPU_CHANNELS_LAST", channels_last)
        net.zero_grad()
        out = net.forward_stacked(x)
        out.square().mean().backward()
        results[channels_last] = (out.detach().clone(), [p.grad.clone() for p in net.parameters()])
    (out0, grads0), (out1, grads1) = results[False], results[True]
    assert out0.abs().max() > 0.1  # the network does something
    torch.testing.assert_close(out1, out0, rtol=1e-5, atol=1e-5)
    assert out1.is_contiguous()  # callers read it with .numpy() and write it into POM tensors
    for g0, g1 in zip(grads0, grads1):
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_a_batch_of_one_sent_to_onednn_gives_pytorchs_logits_and_gradients(monkeypatch):
    torch.manual_seed(1)
    net = FFN(FFNConfig(fov=(9, 9, 9), deltas=(3, 3, 3), depth=3, features=8))
    x = torch.randn(1, 2, 9, 9, 9)
    results, calls = {}, []
    onednn = torch.ops.aten.mkldnn_convolution
    monkeypatch.setattr(torch.ops.aten, "mkldnn_convolution", lambda *a: calls.append(1) or onednn(*a))
    for direct in (False, True):
        monkeypatch.setattr(ffn_model, "CPU_ONEDNN_SINGLE", direct)
        net.zero_grad()
        out = net.forward_stacked(x)
        out.square().mean().backward()
        results[direct] = (out.detach().clone(), [p.grad.clone() for p in net.parameters()])
        convolutions = sum(isinstance(m, torch.nn.Conv3d) for m in net.modules())
        assert len(calls) == (convolutions if direct else 0)  # every convolution of the direct pass went there
    (out0, grads0), (out1, grads1) = results[False], results[True]
    assert out0.abs().max() > 0.1
    torch.testing.assert_close(out1, out0, rtol=1e-5, atol=1e-5)
    assert out1.is_contiguous()
    for g0, g1 in zip(grads0, grads1):
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5)
    # and one row of a batch of two gives the same logits as that row alone
    with torch.inference_mode():
        pair = net.forward_stacked(torch.cat([x, torch.randn(1, 2, 9, 9, 9)]))
    torch.testing.assert_close(pair[:1], out1, rtol=1e-5, atol=1e-5)


def test_bfloat16_logits_are_close_to_float32_on_either_path(monkeypatch):
    """A batch of one in bfloat16 goes to oneDNN where this CPU's oneDNN computes bfloat16 and to PyTorch's own
    kernel elsewhere; either way the logits stay near float32's."""
    torch.manual_seed(2)
    net = FFN(FFNConfig(fov=(9, 9, 9), deltas=(3, 3, 3), depth=3, features=8))
    x = torch.randn(1, 2, 9, 9, 9)
    calls: list = []
    onednn = torch.ops.aten.mkldnn_convolution
    monkeypatch.setattr(torch.ops.aten, "mkldnn_convolution", lambda *a: calls.append(a[0].dtype) or onednn(*a))
    supported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    with torch.inference_mode():
        ref = net.forward_stacked(x)
        for direct in (False, True):
            monkeypatch.setattr(ffn_model, "CPU_ONEDNN_SINGLE", direct)
            calls.clear()
            out = net.forward_stacked(x, torch.bfloat16)
            assert out.dtype == torch.float32
            torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05 * float(ref.abs().max()))
            assert bool(calls) == (direct and supported) and set(calls) <= {torch.bfloat16}
        # a CPU whose oneDNN lacks bfloat16 (no AVX-512) never sends bfloat16 there
        calls.clear()
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
        torch.testing.assert_close(net.forward_stacked(x, torch.bfloat16), ref, rtol=0.05,
                                   atol=0.05 * float(ref.abs().max()))
        assert calls == []
        net.forward_stacked(x)
        assert bool(calls) == torch.backends.mkldnn.is_available()  # float32 still goes to oneDNN
