"""ResNet-18 for small images (CIFAR variant).

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, in the CIFAR layout of
kuangliu/pytorch-cifar that RSLAD (Zi et al., ICCV 2021) and ABSLD (Zhao et al., 2024) use for
their students: a 3x3 stride-1 stem convolution, no max-pool, BasicBlocks [2, 2, 2, 2] with
widths 64-128-256-512, global average pooling and a linear head. Module names (``conv1``,
``bn1``, ``layer1`` ... ``layer4``, ``shortcut``, ``linear``) follow that code, so its
checkpoints load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
import torch.nn.functional as F

from absld.models.common import ImageClassifier, global_avg_pool2d

__all__ = ["BasicBlock", "ResNet", "resnet18"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a (projected when needed) identity shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(ImageClassifier):
    """Stem, four stages of residual blocks, global average pooling, linear head.

    Args:
        num_blocks: residual blocks in each of the four stages ([2, 2, 2, 2] for ResNet-18).
        arch: registry name recorded in checkpoints.
        num_classes, in_channels, mean, std: see :class:`ImageClassifier`.
    """

    def __init__(
        self,
        num_blocks: Sequence[int],
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
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512 * BasicBlock.expansion, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes * BasicBlock.expansion
        return nn.Sequential(*layers)

    def forward_normalized(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(global_avg_pool2d(out))  # (B, 512) -> (B, num_classes)


def resnet18(
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ResNet:
    """ResNet-18, CIFAR variant (11,173,962 parameters for 10 classes and 3 channels)."""
    return ResNet(
        [2, 2, 2, 2],
        arch="resnet18",
        num_classes=num_classes,
        in_channels=in_channels,
        mean=mean,
        std=std,
    )
