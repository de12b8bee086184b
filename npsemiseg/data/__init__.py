"""Data layer: VOC/SBD, Cityscapes and list-file readers, split protocols, transforms, synthetic data.

Entry points: ``build_datasets(cfg) -> TrainData`` (``build.py``), ``make_demo_data`` (``synthetic.py``),
``convert_trainids`` (``cityscapes.py``), ``seed_worker`` / ``loader_seed_kwargs`` (``seeding.py``).
"""
from npsemiseg.data.build import TrainData, build_datasets
from npsemiseg.data.cityscapes import convert_trainids
from npsemiseg.data.io import IGNORE, PAD
from npsemiseg.data.seeding import loader_seed_kwargs, make_generator, seed_worker
from npsemiseg.data.splits import PROTOCOLS, SplitInfo, get_protocol
from npsemiseg.data.synthetic import make_demo_data

__all__ = [
    "IGNORE", "PAD", "PROTOCOLS", "SplitInfo", "TrainData", "build_datasets", "convert_trainids", "get_protocol",
    "loader_seed_kwargs", "make_demo_data", "make_generator", "seed_worker",
]
