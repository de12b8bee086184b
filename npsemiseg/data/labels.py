"""Label conventions shared by the readers, the losses, the memory banks and the metrics (one home for each).

- ``IGNORE`` (255): VOC object boundaries and Cityscapes void; never a training target, never scored.
- ``PAD`` (254): padding of unlabelled crops after scaling/cropping; kept apart from ``IGNORE`` so padding can never
  pass as ground truth (a mask file holding 254 is rejected by ``io.read_mask``).
- ``NUM_CLASSES``: classes of the named datasets (``data.num_classes`` must be given for ``dataset=list``).

No imports: ``config.py`` reads ``NUM_CLASSES`` without pulling in the data layer.
"""
from __future__ import annotations

IGNORE = 255
PAD = 254
NUM_CLASSES = {"voc": 21, "cityscapes": 19}
