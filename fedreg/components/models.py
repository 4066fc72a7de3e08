"""The model kind: :class:`Model`, a factory of the network every client trains."""

from __future__ import annotations

from torch import nn

from fedreg.components.base import Component


class Model(Component):
    """A model factory."""

    kind = "model"
    hook = "fedreg_register_models"
    spec_path = ("model",)
    contract = ("check_spec", "build")

    def build(self, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        raise NotImplementedError
