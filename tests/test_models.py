import pytest
import torch

from mrl.errors import MRLError
from mrl.models import MODELS, MatryoshkaClassifier, create_model

INPUTS = {  # constructor arguments, input shape, representation size d
    "mlp": (dict(in_features=784, hidden=(32,)), (4, 1, 28, 28), 64),
    "resnet": (dict(in_channels=1, widths=(4, 8, 8)), (4, 1, 28, 28), 64),
    "resnet50": (dict(in_channels=3), (4, 3, 32, 32), 2048),
}


def test_every_registered_model_is_covered():
    assert set(MODELS) == set(INPUTS)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("tied", [False, True])
def test_model_contract(name, tied):
    torch.manual_seed(0)
    kwargs, shape, d = INPUTS[name]
    backbone = create_model(name, num_features=d, **kwargs)
    assert backbone.num_features == d
    model = MatryoshkaClassifier(backbone, 10, [8, 16, d], tied=tied)
    x = torch.randn(*shape)
    z = model.embed(x)
    assert z.shape == (4, d)
    logits = model(x)
    assert logits.shape == (3, 4, 10)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_prefix_of_the_representation_is_what_each_head_sees():
    torch.manual_seed(0)
    model = MatryoshkaClassifier(create_model("mlp", in_features=20, num_features=32, hidden=(16,)), 3, [8, 32]).eval()
    x = torch.randn(5, 20)
    z = model.embed(x)
    torch.testing.assert_close(model(x)[0], model.head.heads[0](z[:, :8]))


def test_unknown_model_lists_known_ones():
    with pytest.raises(MRLError, match="unknown model 'vit'; known models: mlp, resnet"):
        create_model("vit")


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(MRLError, match="MLP expects 20 input features"):
        create_model("mlp", in_features=20, num_features=8)(torch.randn(2, 10))
    with pytest.raises(MRLError, match=r"expects images \[B, 1, H, W\]"):
        create_model("resnet", in_channels=1, num_features=8)(torch.randn(2, 3, 8, 8))
