"""Training data: HQ image datasets and the Real-ESRGAN degradation (the only user of basicsr)."""
