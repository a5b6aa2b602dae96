"""The paper's networks under the module name of the authors' code: `from model import
SNN_VGG9_BNTT` works as it does there. They are defined in bntt/models.py, so that
`pip install -e .` makes them importable from anywhere as `bntt.models`."""
from bntt.models import ARCHS, SNN_VGG9_BNTT, SNN_VGG11_BNTT, SpikingVGG, build_model

__all__ = ["ARCHS", "SNN_VGG9_BNTT", "SNN_VGG11_BNTT", "SpikingVGG", "build_model"]
