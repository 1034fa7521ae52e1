"""Evaluation of super-resolution runs: stability (G-STD, L-STD), image quality through pyiqa, reports.

* :mod:`ccsr.metrics.stability`: pure G-STD / L-STD (torch only).
* :mod:`ccsr.metrics.readers`: run folders (ours and the reference's ``sample00``/``sample0`` layouts) and
  ground-truth pairing.
* :mod:`ccsr.metrics.paper`: the paper's metric set and the pyiqa variant of each (no imports).
* :mod:`ccsr.metrics.iqa`: the only module that imports pyiqa (PolyForm Noncommercial licence).
* :mod:`ccsr.metrics.scores` and :mod:`ccsr.metrics.report`: scores for a run or a step sweep, and the
  CSV / JSON / Markdown / HTML report.

Nothing is imported here, so ``import ccsr.metrics.stability`` stays light.
"""
