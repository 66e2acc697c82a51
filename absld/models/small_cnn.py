"""Small CNNs for the CPU quick profile and the tests (not architectures from the paper).

``small_cnn`` follows the layout of the SmallCNN of TRADES (Zhang et al., ICML 2019) for
MNIST (conv32-conv32-pool-conv64-conv64-pool, a 4x4 spatial map, two fully-connected layers)
with padded convolutions, BatchNorm, and an adaptive pool to 4x4 so that 1x28x28 and 3x32x32
inputs share one head. ``tiny_cnn`` has a couple of thousand parameters and exists so the
tests run an end-to-end pipeline in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from absld.models.common import ImageClassifier, adaptive_avg_pool2d, global_avg_pool2d

__all__ = ["SmallCNN", "TinyCNN", "mini_cnn", "small_cnn", "tiny_cnn"]


def _conv_bn_relu(in_planes: int, out_planes: int) -> nn.Sequential:
    """3x3 same-padding convolution, BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_planes),
        nn.ReLU(),
    )


class SmallCNN(ImageClassifier):
    """conv32-conv32-maxpool-conv64-conv64-maxpool, adaptive 4x4 pool, fc 1024-256-classes.

    Args:
        arch: registry name recorded in checkpoints.
        num_classes, in_channels, mean, std: see :class:`ImageClassifier`.
        hidden: width of the hidden fully-connected layer.
        widths: channels of the first and the second pair of convolutions.
    """

    pooled_size = 4

    def __init__(
        self,
        *,
        arch: str,
        num_classes: int,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        hidden: int = 256,
        widths: tuple[int, int] = (32, 64),
    ) -> None:
        super().__init__(
            arch=arch, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std
        )
        narrow, wide = widths
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, narrow),
            _conv_bn_relu(narrow, narrow),
            nn.MaxPool2d(2),
            _conv_bn_relu(narrow, wide),
            _conv_bn_relu(wide, wide),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(wide * self.pooled_size**2, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward_normalized(self, x: Tensor) -> Tensor:
        out = self.features(x)  # (B, 64, H/4, W/4)
        out = adaptive_avg_pool2d(out, self.pooled_size)  # (B, 64, 4, 4)
        return self.classifier(out.flatten(1))


class TinyCNN(ImageClassifier):
    """conv8-maxpool-conv16, global average pool, linear: ~2k parameters, for tests.

    Args:
        arch: registry name recorded in checkpoints.
        num_classes, in_channels, mean, std: see :class:`ImageClassifier`.
    """

    def __init__(
        self,
        *,
        arch: str,
        num_classes: int,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(
            arch=arch, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std
        )
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, 8),
            nn.MaxPool2d(2),
            _conv_bn_relu(8, 16),
        )
        self.linear = nn.Linear(16, num_classes)

    def forward_normalized(self, x: Tensor) -> Tensor:
        return self.linear(global_avg_pool2d(self.features(x)))  # (B, 16) -> (B, classes)


def small_cnn(
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> SmallCNN:
    """Fast CNN for the CPU quick profile (about 0.33M parameters)."""
    return SmallCNN(
        arch="small_cnn", num_classes=num_classes, in_channels=in_channels, mean=mean, std=std
    )


def mini_cnn(
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> SmallCNN:
    """``small_cnn`` at half width (conv16-16-32-32, fc 512-128): quick-profile students."""
    return SmallCNN(
        arch="mini_cnn", num_classes=num_classes, in_channels=in_channels, mean=mean, std=std,
        hidden=128, widths=(16, 32),
    )


def tiny_cnn(
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> TinyCNN:
    """Test-sized CNN (a couple of thousand parameters)."""
    return TinyCNN(
        arch="tiny_cnn", num_classes=num_classes, in_channels=in_channels, mean=mean, std=std
    )
