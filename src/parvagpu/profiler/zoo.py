"""Small models defined here, with seeded random weights: profiling works and is tested
without downloading anything. Each factory declares its input shape (`input_shape`, one item
without the batch dimension), so `parvagpu profile parvagpu.profiler.zoo:tiny_cnn` needs no
`--shape`."""

from __future__ import annotations


def tiny_cnn():
    """A four-layer CNN for 3x32x32 images (CIFAR-sized), 10 classes, about 24k parameters."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, 10),
    )


tiny_cnn.input_shape = (3, 32, 32)


def small_mlp():
    """A three-layer MLP on 64 features, 10 outputs, about 85k parameters."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )


small_mlp.input_shape = (64,)
