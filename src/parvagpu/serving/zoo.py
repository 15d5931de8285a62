"""The embedded example's eleven models, built offline with random weights (or a local state dict
through the models config's `weights`).

The CNNs are torchvision's architectures (`torchvision.models.<name>(weights=None)`; the models
extra pins torchvision 0.28.0, the release of torch 2.13.0), so a state dict saved from torchvision
loads as `weights`. Where torchvision does not load (not installed, or PyPI's CUDA build of it
beside a CPU-only torch: "operator torchvision::nms does not exist"), `impl: auto` (the default)
falls back to the same networks written here in plain torch, following the published layer
configurations (ResNet: He et al. 2016, bottleneck blocks [3,4,6,3] / [3,4,23,3] / [3,8,36,3];
DenseNet: Huang et al. 2017, growth 32, blocks [6,12,24,16] / [6,12,32,32] / [6,12,48,32]; VGG:
Simonyan and Zisserman 2015, configurations D and E; MobileNetV2: Sandler et al. 2018; Inception
v3: Szegedy et al. 2016): the same parameter counts and cost, other parameter names (torchvision's
state dicts do not load into them). `impl: torchvision` or `builtin` (the factory's `args`) picks
one. BERT-base is `transformers.BertModel` from its default configuration (12 layers, hidden 768),
no download.

Inputs: images (n, 3, 224, 224) FP32 (Inception v3: 299 x 299), BERT token ids (n, 128) INT64;
outputs: 1000 logits, BERT the pooled output (n, 768).
"""

from __future__ import annotations

from typing import Any, Callable

from parvagpu.core.errors import ParvaError
from parvagpu.core.extras import install_hint

IMPLS = ("auto", "torchvision", "builtin")


def _torchvision_models(required: bool):
    """`torchvision.models`, or None when torchvision does not load and `required` is false."""
    try:
        import torchvision.models as tvm
    except ImportError:
        if required:
            raise ParvaError(f"impl torchvision needs torchvision: {install_hint('models')}") from None
        return None
    except RuntimeError as exc:  # a torchvision built for another torch: its C++ operators are missing
        if required:
            import torch

            raise ParvaError(f"torchvision does not load beside torch {torch.__version__}: {exc}") from None
        return None
    return tvm


def _build(name: str, builtin: Callable[[int], Any], seed: int, impl: str, **tv_args):
    """torchvision's `name` with random weights (seeded), or the plain-torch `builtin` (see above)."""
    if impl not in IMPLS:
        raise ParvaError(f"{name}: impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    tvm = None if impl == "builtin" else _torchvision_models(required=impl == "torchvision")
    if tvm is None:
        return builtin(seed)
    _seeded(seed)
    return getattr(tvm, name)(weights=None, **tv_args)


def _torch():
    import torch
    from torch import nn

    return torch, nn


def _seeded(seed: int):
    torch, _ = _torch()
    torch.manual_seed(seed)


def _conv_bn(cin: int, cout: int, k, stride=1, padding=0, relu=True, eps=1e-5):
    _, nn = _torch()
    layers = [nn.Conv2d(cin, cout, k, stride, padding, bias=False), nn.BatchNorm2d(cout, eps=eps)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


# --- ResNet ---------------------------------------------------------------------------------------


def _bottleneck_cls():
    _, nn = _torch()

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = 4 * width
            self.body = nn.Sequential(_conv_bn(cin, width, 1), _conv_bn(width, width, 3, stride, 1),
                                      _conv_bn(width, cout, 1, relu=False))
            self.skip = _conv_bn(cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout else nn.Identity()
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.body(x) + self.skip(x))

    return Bottleneck


def _resnet(blocks: list[int], seed: int = 0):
    _, nn = _torch()
    _seeded(seed)
    Bottleneck = _bottleneck_cls()
    layers: list[Any] = [_conv_bn(3, 64, 7, 2, 3), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, n in enumerate(blocks):
        width = 64 * 2**i
        for j in range(n):
            layers.append(Bottleneck(cin, width, 2 if j == 0 and i > 0 else 1))
            cin = 4 * width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


def resnet50(seed: int = 0, impl: str = "auto"):
    return _build("resnet50", lambda seed: _resnet([3, 4, 6, 3], seed), seed, impl)


def resnet101(seed: int = 0, impl: str = "auto"):
    return _build("resnet101", lambda seed: _resnet([3, 4, 23, 3], seed), seed, impl)


def resnet152(seed: int = 0, impl: str = "auto"):
    return _build("resnet152", lambda seed: _resnet([3, 8, 36, 3], seed), seed, impl)


# --- DenseNet -------------------------------------------------------------------------------------


def _dense_layer_cls():
    torch, nn = _torch()

    class DenseLayer(nn.Module):
        def __init__(self, cin: int, growth: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, 4 * growth, 1, bias=False),
                nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True), nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False),
            )

        def forward(self, x):
            return torch.cat([x, self.body(x)], 1)

    return DenseLayer


def _densenet(blocks: list[int], growth: int = 32, seed: int = 0):
    _, nn = _torch()
    _seeded(seed)
    DenseLayer = _dense_layer_cls()
    c = 2 * growth
    layers: list[Any] = [_conv_bn(3, c, 7, 2, 3), nn.MaxPool2d(3, 2, 1)]
    for i, n in enumerate(blocks):
        for _ in range(n):
            layers.append(DenseLayer(c, growth))
            c += growth
        if i < len(blocks) - 1:  # transition: halve channels and resolution
            layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
            c //= 2
    layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000)]
    return nn.Sequential(*layers)


def densenet121(seed: int = 0, impl: str = "auto"):
    return _build("densenet121", lambda seed: _densenet([6, 12, 24, 16], seed=seed), seed, impl)


def densenet169(seed: int = 0, impl: str = "auto"):
    return _build("densenet169", lambda seed: _densenet([6, 12, 32, 32], seed=seed), seed, impl)


def densenet201(seed: int = 0, impl: str = "auto"):
    return _build("densenet201", lambda seed: _densenet([6, 12, 48, 32], seed=seed), seed, impl)


# --- VGG ------------------------------------------------------------------------------------------


def _vgg(convs: list[int], seed: int = 0):
    _, nn = _torch()
    _seeded(seed)
    layers: list[Any] = []
    cin = 3
    for stage, n in enumerate(convs):
        cout = min(64 * 2**stage, 512)
        for _ in range(n):
            layers += [nn.Conv2d(cin, cout, 3, 1, 1), nn.ReLU(inplace=True)]
            cin = cout
        layers.append(nn.MaxPool2d(2, 2))
    layers += [
        nn.AdaptiveAvgPool2d(7), nn.Flatten(),
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
        nn.Linear(4096, 1000),
    ]
    return nn.Sequential(*layers)


def vgg16(seed: int = 0, impl: str = "auto"):
    return _build("vgg16", lambda seed: _vgg([2, 2, 3, 3, 3], seed), seed, impl)


def vgg19(seed: int = 0, impl: str = "auto"):
    return _build("vgg19", lambda seed: _vgg([2, 2, 4, 4, 4], seed), seed, impl)


# --- MobileNetV2 ----------------------------------------------------------------------------------


def _inverted_residual_cls():
    _, nn = _torch()

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            layers: list[Any] = []
            if expand != 1:
                layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
            layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU6(inplace=True), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    return InvertedResidual


def mobilenet_v2(seed: int = 0, impl: str = "auto"):
    return _build("mobilenet_v2", _mobilenet_v2, seed, impl)


def _mobilenet_v2(seed: int):
    _, nn = _torch()
    _seeded(seed)
    Block = _inverted_residual_cls()
    # (expansion, channels, repeats, first stride)
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    layers: list[Any] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)]
    cin = 32
    for t, c, n, s in settings:
        for j in range(n):
            layers.append(Block(cin, c, s if j == 0 else 1, t))
            cin = c
    layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, 1000)]
    return nn.Sequential(*layers)


# --- Inception v3 ---------------------------------------------------------------------------------


def _branches_cls():
    torch, nn = _torch()

    class Branches(nn.Module):
        """Parallel branches concatenated on channels; a branch that is a list splits in two."""

        def __init__(self, *branches) -> None:
            super().__init__()
            self.branches = nn.ModuleList(
                nn.ModuleList(b) if isinstance(b, list) else b for b in branches
            )

        def forward(self, x):
            out = []
            for b in self.branches:
                if isinstance(b, nn.ModuleList):  # a stem then two heads side by side
                    y = b[0](x)
                    out += [b[1](y), b[2](y)]
                else:
                    out.append(b(x))
            return torch.cat(out, 1)

    return Branches


def _cbr(cin, cout, k, stride=1, padding=0):
    return _conv_bn(cin, cout, k, stride, padding, eps=1e-3)


def _inception_a(Branches, cin: int, pool: int):
    _, nn = _torch()
    return Branches(
        _cbr(cin, 64, 1),
        nn.Sequential(_cbr(cin, 48, 1), _cbr(48, 64, 5, padding=2)),
        nn.Sequential(_cbr(cin, 64, 1), _cbr(64, 96, 3, padding=1), _cbr(96, 96, 3, padding=1)),
        nn.Sequential(nn.AvgPool2d(3, 1, 1), _cbr(cin, pool, 1)),
    )


def _inception_c(Branches, cin: int, c7: int):
    _, nn = _torch()
    return Branches(
        _cbr(cin, 192, 1),
        nn.Sequential(_cbr(cin, c7, 1), _cbr(c7, c7, (1, 7), padding=(0, 3)), _cbr(c7, 192, (7, 1), padding=(3, 0))),
        nn.Sequential(_cbr(cin, c7, 1), _cbr(c7, c7, (7, 1), padding=(3, 0)), _cbr(c7, c7, (1, 7), padding=(0, 3)),
                      _cbr(c7, c7, (7, 1), padding=(3, 0)), _cbr(c7, 192, (1, 7), padding=(0, 3))),
        nn.Sequential(nn.AvgPool2d(3, 1, 1), _cbr(cin, 192, 1)),
    )


def _inception_e(Branches, cin: int):
    _, nn = _torch()

    def split(c):  # 1x3 and 3x1 side by side
        return [nn.Identity(), _cbr(c, 384, (1, 3), padding=(0, 1)), _cbr(c, 384, (3, 1), padding=(1, 0))]

    return Branches(
        _cbr(cin, 320, 1),
        [_cbr(cin, 384, 1), *split(384)[1:]],
        [nn.Sequential(_cbr(cin, 448, 1), _cbr(448, 384, 3, padding=1)), *split(384)[1:]],
        nn.Sequential(nn.AvgPool2d(3, 1, 1), _cbr(cin, 192, 1)),
    )


def inception_v3(seed: int = 0, impl: str = "auto"):
    """Inception v3 for 299 x 299 inputs. torchvision's keeps its auxiliary classifier's parameters
    (so its checkpoints load) but runs it only in training; the built-in one has none."""
    return _build("inception_v3", _inception_v3, seed, impl, aux_logits=True, init_weights=True)


def _inception_v3(seed: int):
    _, nn = _torch()
    _seeded(seed)
    B = _branches_cls()
    stem = [_cbr(3, 32, 3, 2), _cbr(32, 32, 3), _cbr(32, 64, 3, padding=1), nn.MaxPool2d(3, 2),
            _cbr(64, 80, 1), _cbr(80, 192, 3), nn.MaxPool2d(3, 2)]
    reduce_b = B(_cbr(288, 384, 3, 2),
                 nn.Sequential(_cbr(288, 64, 1), _cbr(64, 96, 3, padding=1), _cbr(96, 96, 3, 2)),
                 nn.MaxPool2d(3, 2))
    reduce_d = B(nn.Sequential(_cbr(768, 192, 1), _cbr(192, 320, 3, 2)),
                 nn.Sequential(_cbr(768, 192, 1), _cbr(192, 192, (1, 7), padding=(0, 3)),
                               _cbr(192, 192, (7, 1), padding=(3, 0)), _cbr(192, 192, 3, 2)),
                 nn.MaxPool2d(3, 2))
    body = [_inception_a(B, 192, 32), _inception_a(B, 256, 64), _inception_a(B, 288, 64), reduce_b,
            _inception_c(B, 768, 128), _inception_c(B, 768, 160), _inception_c(B, 768, 160),
            _inception_c(B, 768, 192), reduce_d, _inception_e(B, 1280), _inception_e(B, 2048)]
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(2048, 1000)]
    return nn.Sequential(*stem, *body, *head)


# --- BERT -----------------------------------------------------------------------------------------


def bert_base(seed: int = 0, layers: int = 12, hidden: int = 768, heads: int = 12):
    """BERT-base as `transformers.BertModel` from its configuration, random weights (no download);
    called with `input_ids`, it returns the pooled output among others. Smaller sizes for tests."""
    _seeded(seed)
    try:
        from transformers import BertConfig, BertModel
    except ImportError:
        from parvagpu.core.errors import ParvaError

        raise ParvaError(f"the BERT model needs transformers: {install_hint('models')}") from None
    cfg = BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                     intermediate_size=4 * hidden)
    return BertModel(cfg, add_pooling_layer=True)
