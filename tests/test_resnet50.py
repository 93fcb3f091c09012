"""ResNet-50 in torchvision's layout, and timm backbones by name."""

import pytest
import torch
from torch import nn

from mrl.errors import MRLError
from mrl.models import MatryoshkaClassifier, ResNet50, create_model

# torchvision.models.resnet50().named_parameters(): 161 tensors; the published total.
TORCHVISION_RESNET50_PARAMS = 25_557_032


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    return create_model("resnet50")


def test_parameter_count_with_a_1000_class_head(resnet50):
    backbone = sum(p.numel() for p in resnet50.parameters())
    head = nn.Linear(2048, 1000)
    assert backbone + sum(p.numel() for p in head.parameters()) == TORCHVISION_RESNET50_PARAMS
    # FF-2048 is ResNet-50 with its usual classifier: the same count through MatryoshkaClassifier
    ff = MatryoshkaClassifier(resnet50, 1000, [2048])
    assert sum(p.numel() for p in ff.parameters()) == TORCHVISION_RESNET50_PARAMS


def test_torchvision_layer_names_and_shapes(resnet50):
    shapes = {name: tuple(p.shape) for name, p in resnet50.state_dict().items()}
    # a few entries of torchvision's state dict, names and shapes as it has them
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer2.0.conv2.weight"] == (128, 128, 3, 3)  # stride on the 3x3 (V1.5)
    assert resnet50.layer2[0].conv2.stride == (2, 2) and resnet50.layer2[0].conv1.stride == (1, 1)
    assert shapes["layer4.2.bn3.running_var"] == (2048,)
    assert [len(getattr(resnet50, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    # 53 conv weights + 53 BN weight/bias pairs; torchvision's 161 tensors also count fc's two
    assert len(list(resnet50.parameters())) == 161 - 2


def test_forward_features_shape(resnet50):
    resnet50.eval()
    with torch.no_grad():
        assert resnet50.forward_features(torch.randn(2, 3, 64, 48)).shape == (2, 2048)
        z = resnet50(torch.randn(1, 3, 224, 224))
    assert z.shape == (1, 2048) and torch.isfinite(z).all() and (z >= 0).all()  # pooled after a ReLU


def test_refusals(resnet50):
    with pytest.raises(MRLError, match="needs images of at least 32x32 pixels"):
        resnet50(torch.randn(1, 3, 16, 64))
    with pytest.raises(MRLError, match=r"expects images \[B, 3, H, W\]"):
        resnet50(torch.randn(1, 1, 32, 32))
    with pytest.raises(MRLError, match="representation has 2048 dims, got rep-dim 512"):
        ResNet50(num_features=512)


def test_timm_backbone_by_name():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    backbone = create_model("timm/resnet18", in_channels=3, num_features=512)
    assert backbone.num_features == 512
    assert backbone.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_timm_missing_or_unknown_is_one_clear_error():
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(MRLError, match=r'needs timm: pip install "mrl\[timm\]"'):
            create_model("timm/resnet18")
    else:
        with pytest.raises(MRLError, match="unknown timm model 'no_such_net'"):
            create_model("timm/no_such_net")
