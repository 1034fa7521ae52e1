"""Stage 2 (GAN fine-tuning of the VAE decoder). Same as ``ccsr train stage2``; e.g. on 4 GPUs:

accelerate launch --num_processes 4 train/stage2.py --config configs/train/stage2.yaml --set model.controlnet=runs/s1
"""

import sys

from ccsr.commands.train import main_for_stage

if __name__ == "__main__":
    sys.exit(main_for_stage("stage2"))
