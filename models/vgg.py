"""VGG16 trunk with BatchNorm, laid out for FCN.

Differences from torchvision's classifier VGG16:
- conv1_1 pads by 100 so that even a 1x1 input survives the five pools and
  the 7x7 fc6; the FCN heads then crop the upsampled scores back to HxW.
- fc6/fc7 are convolutions (7x7 and 1x1), so the net runs on any input size.
- every conv (fc6/fc7 included) is followed by BatchNorm2d + ReLU. Convs keep
  their bias (redundant before BN) so torchvision vgg16_bn weights load exactly.

Parameter names are stable (conv1_1, bn1_1, ..., conv5_3, bn5_3, fc6, bn6,
fc7, bn7): checkpoints and FCN-32s -> 16s -> 8s initialisation match on them.
"""
import torch.nn as nn
import torch.nn.functional as F

# the layout's numbers live with the memory estimate, which reads them without torch
from pipeline.memory import FC_CHANNELS, VGG16_BLOCKS, scaled


def conv_names():
    """Names of the 13 trunk 3x3 convs in forward order: ['1_1', '1_2', '2_1', ...]."""
    return [f"{b}_{i}" for b, (n, _) in enumerate(VGG16_BLOCKS, 1) for i in range(1, n + 1)]


class VGGTrunk(nn.Module):
    """forward(x) with x (N, in_channels, H, W) returns (pool3, pool4, fc7).

    With P = H + 198 (conv1_1 pads by 100 on each side) and ceil-mode pools:
      pool3: (N, 256w, ceil(P/8),  ...)      stride 8
      pool4: (N, 512w, ceil(P/16), ...)      stride 16
      fc7:   (N, 4096w, ceil(P/32) - 6, ...) stride 32 (the 7x7 fc6 eats 6)
    (same formulas for the width dimension with W).
    """

    def __init__(self, width: float = 1.0, in_channels: int = 1):
        super().__init__()
        self.width = width
        self.in_channels = in_channels
        c_in = in_channels
        for b, (n, c) in enumerate(VGG16_BLOCKS, 1):
            c_out = scaled(c, width)
            for i in range(1, n + 1):
                pad = 100 if (b, i) == (1, 1) else 1
                setattr(self, f"conv{b}_{i}", nn.Conv2d(c_in, c_out, 3, padding=pad))
                setattr(self, f"bn{b}_{i}", nn.BatchNorm2d(c_out))
                c_in = c_out
        c_fc = scaled(FC_CHANNELS, width)
        self.fc6 = nn.Conv2d(c_in, c_fc, 7)  # no padding: plays the 7x7 -> 1x1 Linear
        self.bn6 = nn.BatchNorm2d(c_fc)
        self.fc7 = nn.Conv2d(c_fc, c_fc, 1)
        self.bn7 = nn.BatchNorm2d(c_fc)
        self.drop = nn.Dropout2d(0.5)  # no parameters; shared by fc6 and fc7
        self.out_channels = {"pool3": scaled(256, width), "pool4": scaled(512, width), "fc7": c_fc}

    def conv_bn_relu(self, x, name):
        return F.relu(getattr(self, f"bn{name}")(getattr(self, f"conv{name}")(x)))

    def forward(self, x):
        pools = {}
        for b, (n, _) in enumerate(VGG16_BLOCKS, 1):
            for i in range(1, n + 1):
                x = self.conv_bn_relu(x, f"{b}_{i}")
            x = F.max_pool2d(x, 2, stride=2, ceil_mode=True)  # ceil: never drop an edge row
            pools[b] = x
        x = self.drop(F.relu(self.bn6(self.fc6(x))))  # (N, 4096w, ceil(P/32)-6, ...)
        x = self.drop(F.relu(self.bn7(self.fc7(x))))
        return pools[3], pools[4], x
