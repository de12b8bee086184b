"""The one training loop (mean teacher + NP head), evaluation, checkpoints, prediction and export.

    from npsemiseg.engine import fit, build_state, train_step, evaluate
"""
from npsemiseg.engine.checkpoint import load_checkpoint, save_checkpoint
from npsemiseg.engine.context import LocalContext, RunContext
from npsemiseg.engine.evaluate import evaluate, predict_probs
from npsemiseg.engine.loop import fit, run_evaluation
from npsemiseg.engine.step import TrainState, build_state, checkpoint_dict, restore_state, train_step

__all__ = [
    "LocalContext", "RunContext", "TrainState", "build_state", "checkpoint_dict", "evaluate", "fit",
    "load_checkpoint", "predict_probs", "restore_state", "run_evaluation", "save_checkpoint", "train_step",
]
