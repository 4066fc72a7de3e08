"""Models: two-convolution CNNs for small (28x28) images."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from fedreg.components import Model, Params


class CNN(nn.Module):
    """conv 5x5 32 -> ReLU -> max-pool 2 -> conv 5x5 64 -> ReLU -> max-pool 2 -> fc hidden -> ReLU ->
    fc classes.

    ``padding`` pads both convolutions (0: each shrinks the image by 4; 2: sizes are kept). The classifier
    head is the module ``fc`` (personalised methods name it). ``projection_dim`` > 0 inserts MOON's
    projection head before it (the module ``proj``: fc hidden -> ReLU -> fc projection_dim, as
    ``ModelFedCon`` in the MOON authors' code), so the classifier reads the projection."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int = 28,
        hidden: int = 512,
        padding: int = 0,
        projection_dim: int = 0,
    ):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=padding), nn.ReLU(inplace=True), nn.MaxPool2d(2)
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(32, 64, 5, padding=padding), nn.ReLU(inplace=True), nn.MaxPool2d(2)
        )
        side = cnn_side(image_size, padding)
        if side < 1:
            fits = min(s for s in range(1, 64) if cnn_side(s, padding) >= 1)
            raise ValueError(
                f"two 5x5 convolutions with padding {padding} and two 2x2 max-pools need images of at "
                f"least {fits}x{fits}, got {image_size}x{image_size}"
                + (
                    "; with padding 2 (model cnn: params.padding: 2) it takes images from 4x4"
                    if padding < 2
                    else ""
                )
            )
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, hidden), nn.ReLU(inplace=True))
        self.proj = (
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, projection_dim))
            if projection_dim
            else nn.Identity()
        )
        self.fc = nn.Linear(projection_dim or hidden, num_classes)  # the classifier head, the last module

    def forward(self, x):
        return self.fc(self.proj(self.fc1(self.conv2(self.conv1(x)))))


def cnn_side(image_size: int, padding: int) -> int:
    """Side of the feature map entering the first fully connected layer (must be at least 1)."""
    shrink = 4 - 2 * padding
    return ((image_size - shrink) // 2 - shrink) // 2


def projection_field():
    # QinbinLi/MOON main.py: --use_project_head 1, --out_dim 256 (model.py ModelFedCon)
    return Field(
        default=0,
        ge=0,
        description="output width of a projection head (fc hidden -> ReLU -> fc) between the hidden layer "
        "and the classifier, as MOON's authors build their networks (256 there); 0: none",
    )


class CNNParams(Params):
    hidden: int = Field(default=512, ge=1, description="width of the hidden fully connected layer")
    padding: int = Field(default=0, ge=0, le=2, description="padding of both 5x5 convolutions")
    projection_dim: int = projection_field()


class SmallCNN(Model):
    """Two 5x5 convolutions without padding, fc 512, fc classes (582,600 parameters at 28x28x3 and
    8 classes)."""

    name = "cnn"
    default = True  # used where a spec names no component of this kind
    Params = CNNParams

    def build(self, in_channels, num_classes, image_size):
        p = self.params
        return CNN(in_channels, num_classes, image_size, p.hidden, p.padding, p.projection_dim)


class MedMNISTNetParams(Params):
    hidden: int = Field(default=512, ge=1, description="width of the hidden fully connected layer")
    projection_dim: int = projection_field()


class MedMNISTNet(Model):
    """The FedKPer authors' MedMNIST network (MedMNISTNet in their code): two 5x5 convolutions with padding
    2, fc 3136 -> 512, fc classes (1,663,944 parameters at 28x28x3 and 8 classes)."""

    name = "medmnist_net"
    Params = MedMNISTNetParams

    def build(self, in_channels, num_classes, image_size):
        p = self.params
        return CNN(in_channels, num_classes, image_size, p.hidden, 2, p.projection_dim)
