"""The offline annotator: a small expression CNN run in numpy, the default backend.

Training (``train.py``) needs torch from the ``train`` extra; nothing imported
here touches torch, so the annotator runs with numpy and Pillow alone.
"""

from seke_app.engine.offline.model import (
    OfflineModel,
    OfflinePrediction,
    OfflineWeightsError,
)

__all__ = ["OfflineModel", "OfflinePrediction", "OfflineWeightsError"]
