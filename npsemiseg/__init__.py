"""NP-SemiSeg: semi-supervised semantic segmentation with a neural-process head, plus Ray sweeps around it."""
from __future__ import annotations

__version__ = "0.1.0"
