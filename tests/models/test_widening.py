"""Widening a U-Net: the wide network starts out computing exactly what the narrow one did."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from connectome.models import UNet, preset
from connectome.models.widening import can_widen, widen_state


def _trained_like(config, seed: int) -> UNet:
    """A network with random weights, biases and BatchNorm statistics (every path matters)."""
    torch.manual_seed(seed)
    net = UNet(dataclasses.replace(config, norm="batch"))
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) * 0.5 + 0.25 if t.dim() == 1 else torch.randn_like(t) * 0.2)
    return net


@pytest.mark.parametrize("arch", ["iso", "aniso"])
def test_widened_network_computes_the_same_outputs(arch):
    narrow = _trained_like(preset(arch), seed=0)
    wide = UNet(dataclasses.replace(narrow.config, base_channels=12, max_channels=96))
    assert can_widen(narrow.state_dict(), wide.state_dict()) is None
    wide.load_state_dict(widen_state(narrow.state_dict(), wide.state_dict()))
    x = torch.randn(2, 1, *((8, 48, 48) if arch == "aniso" else (24, 24, 24)))
    for mode in ("eval", "train"):  # running statistics, then the batch's own
        narrow.train(mode == "train")
        wide.train(mode == "train")
        with torch.no_grad():
            torch.testing.assert_close(wide(x), narrow(x), rtol=1e-5, atol=1e-5)
    # and the extra channels learn: one step moves the output away from the narrow network's
    opt = torch.optim.SGD(wide.parameters(), lr=0.1)
    wide(x).square().mean().backward()
    extra = wide.head.weight.grad[:, narrow.config.channels[0]:]
    assert extra.abs().max() > 0
    opt.step()


def test_a_wider_or_differently_shaped_state_does_not_fit():
    narrow, wide = UNet(preset("iso")), UNet(dataclasses.replace(preset("iso"), base_channels=12))
    assert can_widen(wide.state_dict(), narrow.state_dict()) is not None
    assert can_widen(UNet(preset("aniso")).state_dict(), wide.state_dict()) is not None
    with pytest.raises(ValueError, match="does not fit"):
        widen_state(wide.state_dict(), narrow.state_dict())
