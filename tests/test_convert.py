"""Parity of converted torchvision-layout ResNet weights against a PyTorch reference."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

from jaxcifar.models import create_model  # noqa: E402
from jaxcifar.models.convert import (  # noqa: E402
    convert_state_dict,
    load_torch_resnet,
    read_torch_state_dict,
)

TOL = 1e-4


# --- Minimal PyTorch ResNet with torchvision's module names (torchvision is unavailable). ---


def _downsample(inplanes: int, planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == planes:
        return None
    return nn.Sequential(
        nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
    )


class TorchBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class TorchBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = _downsample(inplanes, planes * 4, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class TorchResNet(nn.Module):
    def __init__(self, block, layers: list[int], num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, num_blocks in enumerate(layers):
            planes, blocks = 64 * 2**i, []
            for j in range(num_blocks):
                blocks.append(block(inplanes, planes, 2 if i > 0 and j == 0 else 1))
                inplanes = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x):
        return self.fc(self.features(x))


def _randomised(model: nn.Module) -> nn.Module:
    """Non-trivial BN affine params and running stats, so every tensor matters."""
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.weight.data = torch.rand(c, generator=gen) + 0.5
            module.bias.data = torch.randn(c, generator=gen) * 0.1
            module.running_mean = torch.randn(c, generator=gen) * 0.1
            module.running_var = torch.rand(c, generator=gen) + 0.5
    return model.eval()


TORCH_MODELS = {
    "resnet18_imagenet": lambda n: TorchResNet(TorchBasicBlock, [2, 2, 2, 2], n),
    "resnet50": lambda n: TorchResNet(TorchBottleneck, [3, 4, 6, 3], n),
}


def _torch_model(name: str, num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    return _randomised(TORCH_MODELS[name](num_classes))


def _resnet18_case() -> tuple[dict[str, np.ndarray], dict]:
    """A torchvision-layout resnet18 state dict as numpy, plus a matching Flax template."""
    torch_model = _torch_model("resnet18_imagenet", 12)
    state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    model = create_model("resnet18_imagenet", num_classes=12)
    return state_dict, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)


def _torch_eval(fn, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return fn(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()


@pytest.fixture(scope="module", params=list(TORCH_MODELS))
def checkpoint(request, tmp_path_factory):
    """A random 12-class torch ResNet saved as both .safetensors and .pth."""
    torch_model = _torch_model(request.param, 12)
    directory = tmp_path_factory.mktemp(request.param)
    state_dict = torch_model.state_dict()
    save_file(state_dict, directory / "model.safetensors")
    torch.save(state_dict, directory / "model.pth")
    return request.param, torch_model, directory


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_logits_match_pytorch(checkpoint, images, suffix):
    name, torch_model, directory = checkpoint
    model = create_model(name, num_classes=12)
    variables = load_torch_resnet(directory / f"model{suffix}", model, num_classes=12)
    logits = model.apply(variables, jnp.asarray(images), train=False)
    expected = _torch_eval(torch_model, images)
    assert np.abs(expected).max() > 0.1  # parity on near-zero logits would prove little
    np.testing.assert_allclose(logits, expected, rtol=0, atol=TOL)


def test_different_head_keeps_template_and_backbone_matches(checkpoint, images):
    name, torch_model, directory = checkpoint
    model = create_model(name, num_classes=10)
    rng = jax.random.PRNGKey(3)
    template = model.init(rng, jnp.zeros((1, 32, 32, 3)), train=False)
    variables = load_torch_resnet(directory / "model.safetensors", model, rng=rng)
    jax.tree.map(
        np.testing.assert_array_equal, variables["params"]["head"], template["params"]["head"]
    )
    features = model.apply(
        variables,
        jnp.asarray(images),
        method=lambda m, x: m.backbone(x, use_running_average=True),
    )
    expected = _torch_eval(torch_model.features, images)
    np.testing.assert_allclose(features, expected, rtol=0, atol=TOL)


def test_cifar_stem_shape_mismatch_names_key():
    state_dict, _ = _resnet18_case()
    model = create_model("resnet18", num_classes=12)
    template = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    with pytest.raises(ValueError, match=r"conv1\.weight.*\(7, 7, 3, 64\).*\(3, 3, 3, 64\)"):
        convert_state_dict(state_dict, template)


def test_unused_and_missing_keys_are_reported():
    state_dict, template = _resnet18_case()
    with pytest.raises(ValueError, match="extra.weight"):
        convert_state_dict({**state_dict, "extra.weight": np.zeros(3)}, template)
    del state_dict["layer2.0.downsample.1.running_var"]
    with pytest.raises(ValueError, match="backbone/layer2_0/downsample_bn/var"):
        convert_state_dict(state_dict, template)


def test_pth_without_torch_has_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match="needs PyTorch"):
        read_torch_state_dict(tmp_path / "model.pth")
