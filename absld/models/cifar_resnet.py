"""ResNet-56, the CIFAR ResNet of He et al. ("Deep Residual Learning for Image Recognition", CVPR 2016,
§4.2): a 3x3 16-channel stem, three stages of 9 BasicBlocks each with widths 16-32-64 (stride 2 at
the start of stages 2 and 3), global average pooling and a linear head, 6n + 2 = 56 layers.

B-MTARD's clean teacher (zhaoshiji123/MTARD-extension ``resnet18_mtard_cifar10.py:74``: ``resnet56()``).
The extension's own ``cifar10_models`` holds no ``resnet56``; the one its authors used for their clean
teachers is the CIFAR ResNet of zhaoshiji123/MTARD ``cifar10_nat_teacher_models/resnet.py:71-155``
(chenyaofo/pytorch-cifar-models), whose shortcut is a 1x1 convolution with BatchNorm where the shape
changes (lines 126-132) and whose modules are named ``conv1``, ``bn1``, ``layer1``-``layer3`` (each block
``conv1``, ``bn1``, ``conv2``, ``bn2``, ``downsample``) and ``fc``. The names here are the same, so such
checkpoints load strictly (their ``relu``/``avgpool`` modules hold no weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from absld.models.common import ImageClassifier, global_avg_pool2d

__all__ = ["CifarResNet", "resnet56"]


class _Block(nn.Module):
    """Two 3x3 convolutions with BatchNorm; a 1x1 convolution + BatchNorm shortcut where the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(ImageClassifier):
    """Stem, three stages of ``blocks`` residual blocks (16, 32, 64 channels), pooling, linear head."""

    def __init__(self, blocks: int, *, arch: str, num_classes: int, in_channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__(arch=arch, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes = 16
        stages = []
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            stage = [_Block(planes, width, stride)] + [_Block(width, width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():  # the reference's initialisation (lines 119-124)
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_normalized(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(global_avg_pool2d(out))  # (B, 64) -> (B, num_classes)


def resnet56(*, num_classes: int, in_channels: int = 3, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None) -> CifarResNet:
    """ResNet-56, CIFAR variant (9 blocks per stage)."""
    return CifarResNet(9, arch="resnet56", num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
