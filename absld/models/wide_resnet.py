"""Wide ResNet, exactly as in TRADES (the ABSLD teacher).

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016, as implemented in TRADES
(Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy",
ICML 2019; yaodongyu/TRADES ``models/wideresnet.py``), whose public WRN-34-10 checkpoint
``model_cifar_wrn.pt`` (RobustBench ``Zhang2019Theoretically``) is the teacher of RSLAD and
ABSLD. Reproduced module for module so that checkpoint loads with ``strict=True``:

- pre-activation blocks (BN -> ReLU -> conv); when a block changes width, the shortcut 1x1
  convolution ``convShortcut`` is applied to the *pre-activated* input, otherwise the
  shortcut is the raw input;
- ``sub_block1`` is an unused duplicate of ``block1``: it is never called in ``forward`` but
  its weights are in the public checkpoint, so it is kept (and counted in parameters);
- the same initialisation (He-normal convolutions, unit BN weights, zero biases).

One deliberate difference: the final pooling is a global average (TRADES: ``avg_pool2d(8)``,
identical on 32x32 inputs), so 28x28 inputs work too.
"""

from __future__ import annotations

from collections.abc import Sequence
import math

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from absld.models.common import ImageClassifier, ModelError, global_avg_pool2d

__all__ = ["BasicBlock", "NetworkBlock", "WideResNet", "wrn34_10"]


class BasicBlock(nn.Module):
    """TRADES pre-activation block: BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus shortcut."""

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(
            in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False
        )
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut: nn.Conv2d | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(
                in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.convShortcut is None:
            out = self.relu1(self.bn1(x))
            shortcut = x
        else:
            # TRADES pre-activates x itself here, so the projection sees BN-ReLU(x).
            x = self.relu1(self.bn1(x))
            out = x
            shortcut = self.convShortcut(x)
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return torch.add(shortcut, out)


class NetworkBlock(nn.Module):
    """``num_layers`` BasicBlocks in ``.layer``; only the first one changes width and stride."""

    def __init__(
        self,
        num_layers: int,
        in_planes: int,
        out_planes: int,
        stride: int,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                BasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    drop_rate,
                )
                for i in range(num_layers)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(ImageClassifier):
    """WRN-``depth``-``widen_factor`` of TRADES (widths 16, 16k, 32k, 64k; (depth-4)/6 blocks).

    Args:
        depth: total depth; (depth - 4) must be divisible by 6.
        widen_factor: width multiplier k.
        arch: registry name recorded in checkpoints (default ``wrn<depth>_<k>``).
        num_classes, in_channels, mean, std: see :class:`ImageClassifier`.
        drop_rate: dropout between the two convolutions of each block (TRADES: 0).
    """

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        *,
        num_classes: int,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        drop_rate: float = 0.0,
        arch: str | None = None,
    ) -> None:
        super().__init__(
            arch=arch if arch is not None else f"wrn{depth}_{widen_factor}",
            num_classes=num_classes,
            in_channels=in_channels,
            mean=mean,
            std=std,
        )
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ModelError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise ModelError(f"WideResNet widen_factor must be >= 1, got {widen_factor}")
        self.depth = depth
        self.widen_factor = widen_factor
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        blocks_per_stage = (depth - 4) // 6

        self.conv1 = nn.Conv2d(
            in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False
        )
        self.block1 = NetworkBlock(blocks_per_stage, widths[0], widths[1], 1, drop_rate)
        self.sub_block1 = NetworkBlock(blocks_per_stage, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(blocks_per_stage, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(blocks_per_stage, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        self.n_channels = widths[3]
        self._init_like_trades()

    def _init_like_trades(self) -> None:
        """He-normal convolutions (fan-out), BN weight 1 / bias 0, Linear bias 0 (TRADES)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward_normalized(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        out = self.block1(out)  # sub_block1 is not used, as in TRADES
        out = self.block2(out)
        out = self.block3(out)
        out = self.relu(self.bn1(out))
        return self.fc(global_avg_pool2d(out))  # (B, 64k) -> (B, num_classes)


def wrn34_10(
    *,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> WideResNet:
    """WRN-34-10 of TRADES: the architecture of the public ABSLD/RSLAD teacher."""
    return WideResNet(
        34,
        10,
        arch="wrn34_10",
        num_classes=num_classes,
        in_channels=in_channels,
        mean=mean,
        std=std,
    )
