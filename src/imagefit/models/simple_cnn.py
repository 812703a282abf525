"""SimpleCNN: the LeNet-style network of the CIFAR-10 MLflow/ONNX project (62,006 parameters
for 10 classes at 32x32)."""

from __future__ import annotations

import torch
from torch import nn


class SimpleCNN(nn.Module):
    """conv5(3->6) - pool - conv5(6->16) - pool - fc 400-120-84-classes, ReLU throughout.

    Any input size works: an adaptive pool brings the features to 5x5, which is the identity at
    the native 32x32 input, so the parameter count never depends on the image size.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.AdaptiveAvgPool2d(5),
        )
        self.hidden = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
        )
        self.fc = nn.Linear(84, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.features(x)))

    # The timm model interface that imagefit relies on for heads and stages.
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.fc.in_features, num_classes)
        self.num_classes = num_classes

    def group_matcher(self, coarse: bool = False) -> dict[str, object]:
        # Stages in timm's format: stem = first conv, then second conv, then the hidden MLP;
        # the head (fc) falls into the last group.
        return {
            "stem": r"^features\.0\.",
            "blocks": [(r"^features\.3\.", (1,)), (r"^hidden\.", (2,))],
        }
