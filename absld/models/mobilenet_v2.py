"""MobileNetV2 for small images (CIFAR variant).

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018, in the
CIFAR layout of kuangliu/pytorch-cifar used for the students of RSLAD (Zi et al., ICCV 2021)
and ABSLD (Zhao et al., 2024): stride 1 in the stem convolution and in the second stage,
a final 1x1 convolution to 1280 channels, global average pooling and a linear head. As in
that code, blocks use ReLU (not ReLU6), and a stride-1 block whose width changes gets a
projected (1x1 conv + BN) residual. Module names (``conv1``, ``bn1``, ``layers``, ``conv2``,
``bn2``, ``linear``) follow it, so its checkpoints load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
import torch.nn.functional as F

from absld.models.common import ImageClassifier, global_avg_pool2d

__all__ = ["CIFAR_CFG", "InvertedResidual", "MobileNetV2", "mobilenet_v2"]

# (expansion, out_planes, num_blocks, stride) of each stage; strides of the stem and of the
# second stage are 1 (ImageNet: 2) because CIFAR images are 32x32.
CIFAR_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1, linear), residual when stride is 1."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 1:
            out = out + self.shortcut(x)
        return out


class MobileNetV2(ImageClassifier):
    """MobileNetV2 with the CIFAR strides of :data:`CIFAR_CFG`.

    Args:
        arch: registry name recorded in checkpoints.
        num_classes, in_channels, mean, std: see :class:`ImageClassifier`.
        cfg: (expansion, out_planes, num_blocks, stride) of each stage.
    """

    def __init__(
        self,
        *,
        arch: str,
        num_classes: int,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        cfg: Sequence[tuple[int, int, int, int]] = CIFAR_CFG,
    ) -> None:
        super().__init__(
            arch=arch, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std
        )
        self.conv1 = nn.Conv2d(in_channels, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks = []
        in_planes = 32
        for expansion, out_planes, num_blocks, stride in cfg:
            for block_stride in [stride] + [1] * (num_blocks - 1):
                blocks.append(InvertedResidual(in_planes, out_planes, expansion, block_stride))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(in_planes, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)

    def forward_normalized(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(global_avg_pool2d(out))  # (B, 1280) -> (B, num_classes)


def mobilenet_v2(
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> MobileNetV2:
    """MobileNetV2, CIFAR variant of kuangliu/pytorch-cifar (the RSLAD/ABSLD student)."""
    return MobileNetV2(
        arch="mobilenet_v2",
        num_classes=num_classes,
        in_channels=in_channels,
        mean=mean,
        std=std,
    )
