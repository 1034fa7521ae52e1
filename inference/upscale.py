"""Upscale image files or folders: the same code as `ccsr upscale`.

    python inference/upscale.py photos/ out/ --model /weights/ccsr-v2                # x4, 1 step (CCSR-S1)
    python inference/upscale.py photos/ out/ --model /weights/ccsr-v2 --steps 2      # CCSR-S2
    python inference/upscale.py photos/ out/ --model M --samples 10                  # out/sample00 .. sample09
    accelerate launch inference/upscale.py photos/ out/ --model M                    # sharded over GPUs

Re-running resumes; `python inference/upscale.py --help` lists every option.
"""

import sys

from ccsr.cli import main

if __name__ == "__main__":
    sys.exit(main(["upscale", *sys.argv[1:]]))
