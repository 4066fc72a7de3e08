"""Models."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from fedreg.components import Model, Params


class CNN(nn.Module):
    """conv 5x5 32 -> max-pool -> conv 5x5 64 -> max-pool -> fc hidden -> fc classes (no padding)."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 28, hidden: int = 512):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, 32, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(32, 64, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        side = ((image_size - 4) // 2 - 4) // 2
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, hidden), nn.ReLU(inplace=True))
        self.fc = nn.Linear(hidden, num_classes)  # the classifier head

    def forward(self, x):
        return self.fc(self.fc1(self.conv2(self.conv1(x))))


class CNNParams(Params):
    hidden: int = Field(default=512, ge=1)


class ReferenceCNN(Model):
    """The reference CNN of FedAvg/FedKPer code (two 5x5 convs, fc 512, fc classes)."""

    name = "cnn"
    Params = CNNParams

    def build(self, in_channels, num_classes, image_size):
        return CNN(in_channels, num_classes, image_size, self.params.hidden)
