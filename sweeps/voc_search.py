"""Ray Tune + Optuna sweep of NP-SemiSeg on PASCAL VOC, one study per label split.

    python sweeps/voc_search.py                      # demo: synthetic data, CPU, 2 splits x 4 trials (~4 min)
    python sweeps/voc_search.py --smoke-test         # CI: 1 split x 2 trials, a few steps
    python sweeps/voc_search.py --data-root /data/voc --use-gpu --trials 32 --max-concurrent 8
    python sweeps/voc_search.py --help               # every flag (splits, ASHA, resources, objectives, ...)

Rerun the same command after an interruption to resume. The logic lives in npsemiseg.tune; see docs/sweeps.md.
"""
import sys

from npsemiseg.tune.cli import sweep_main

if __name__ == "__main__":
    sys.exit(sweep_main("voc"))
