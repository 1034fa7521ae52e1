"""Stage 1 (the CCSR ControlNet). Same as ``ccsr train stage1``; e.g. on 4 GPUs:

accelerate launch --num_processes 4 train/stage1.py --config configs/train/stage1.yaml --set train.output_dir=runs/s1
"""

import sys

from ccsr.commands.train import main_for_stage

if __name__ == "__main__":
    sys.exit(main_for_stage("stage1"))
