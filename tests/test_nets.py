"""Network registry: every net builds for grey 28x28, 8x8 and colour 32x32 inputs, deterministically."""

from __future__ import annotations

import pytest
import torch

from distilset.errors import DistilsetError
from distilset.nets import create_net, list_nets

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("name", ["convnet", "convnet-bn", "lenet", "alexcifarnet", "mlp", "resnet10"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_embed_shapes(name, shape):
    net = create_net(name, shape, 7, seed=0)
    x = torch.randn(3, *shape)
    assert net(x).shape == (3, 7)
    assert net.embed(x).shape == (3, net.feature_dim)


def test_convnet_dc_convention_for_28x28():
    net = create_net("convnet", (1, 28, 28), 10)
    assert net.features[0].padding == (3, 3) and net.feature_dim == 128 * 4 * 4
    assert net.features[1].num_groups == 128  # instance norm as one group per channel
    assert isinstance(create_net("convnet", (1, 28, 28), 10, norm="batch").features[1], torch.nn.BatchNorm2d)


def test_seeded_init_is_deterministic_and_isolated():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = create_net("convnet", (1, 28, 28), 10, seed=5)
    after = torch.rand(1)
    b = create_net("convnet", (1, 28, 28), 10, seed=5)
    c = create_net("convnet", (1, 28, 28), 10, seed=6)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), k
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    assert torch.equal(before, after)  # building a seeded net does not consume the global RNG


def test_xavier_init_zeroes_biases():
    net = create_net("lenet", (1, 28, 28), 10, seed=0, init="xavier")
    assert all(float(m.bias.detach().abs().max()) == 0 for m in net.modules() if isinstance(m, torch.nn.Linear))
    std = float(net.classifier.weight.detach().std())
    assert abs(std - (2 / (84 + 10)) ** 0.5) < 0.03


def test_errors_name_the_problem():
    with pytest.raises(DistilsetError, match="unknown net 'vgg'.*convnet"):
        create_net("vgg", (1, 28, 28), 10)
    with pytest.raises(DistilsetError, match="lower depth"):
        create_net("convnet", (1, 8, 8), 10, depth=4)
    with pytest.raises(DistilsetError, match="bad option"):
        create_net("lenet", (1, 28, 28), 10, width=3)
    with pytest.raises(DistilsetError, match="unknown norm"):
        create_net("convnet", (1, 28, 28), 10, norm="group")
    assert "resnet18" in list_nets()
