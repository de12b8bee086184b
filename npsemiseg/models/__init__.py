"""Models: dilated ResNet trunks, DeepLabV3+, and the plain / MC-dropout / NP heads behind one SegModel.

    from npsemiseg.models import build_model
    model = build_model(cfg.model, cfg.num_classes())
"""
from npsemiseg.models.banks import MemoryBank, gather_rows, subsample_per_class
from npsemiseg.models.build import (
    SegModel,
    SegOutput,
    build_model,
    convert_syncbn_to_bn,
    mean_probs,
)
from npsemiseg.models.np_head import NPHead, attend_mean, kl_normal
from npsemiseg.models.resize import downsample_labels, upsample_logits
from npsemiseg.models.resnet import ResNet, load_pretrained

__all__ = [
    "MemoryBank", "NPHead", "ResNet", "SegModel", "SegOutput", "attend_mean", "build_model",
    "convert_syncbn_to_bn", "downsample_labels", "gather_rows", "kl_normal", "load_pretrained", "mean_probs",
    "subsample_per_class", "upsample_logits",
]
