"""Training: one accelerate loop (:mod:`ccsr.training.loop`) and a step object per stage."""
