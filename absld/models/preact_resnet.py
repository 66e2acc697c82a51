"""Pre-activation ResNet-18 for small images (CIFAR variant).

He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016, in the layout of
Rice, Wong & Kolter, "Overfitting in adversarially robust deep learning", ICML 2020
(locuslab/robust_overfitting), the usual PreAct ResNet-18 of adversarial-training papers:
a 3x3 stride-1 stem, PreActBlocks [2, 2, 2, 2] (BN-ReLU before each convolution, the
shortcut projection taken after the first BN-ReLU), a final BN-ReLU (``bn``), global average
pooling and a linear head. kuangliu/pytorch-cifar's version lacks the final ``bn``; this one
follows Rice et al. so their checkpoints load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
import torch.nn.functional as F

from absld.models.common import ImageClassifier, global_avg_pool2d

__all__ = ["PreActBlock", "PreActResNet", "preact_resnet18"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv, BN-ReLU-conv, plus a shortcut (1x1 projection when the shape changes)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(ImageClassifier):
    """Stem conv, four stages of pre-activation blocks, BN-ReLU, average pool, linear head.

    Args:
        num_blocks: blocks in each of the four stages ([2, 2, 2, 2] for PreAct ResNet-18).
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
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.bn = nn.BatchNorm2d(512 * PreActBlock.expansion)
        self.linear = nn.Linear(512 * PreActBlock.expansion, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(PreActBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes * PreActBlock.expansion
        return nn.Sequential(*layers)

    def forward_normalized(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        return self.linear(global_avg_pool2d(out))  # (B, 512) -> (B, num_classes)


def preact_resnet18(
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> PreActResNet:
    """PreAct ResNet-18, CIFAR variant of Rice et al. (2020)."""
    return PreActResNet(
        [2, 2, 2, 2],
        arch="preact_resnet18",
        num_classes=num_classes,
        in_channels=in_channels,
        mean=mean,
        std=std,
    )
