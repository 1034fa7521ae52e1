"""``ccsr upscale``, the folder run: every module here serves it, and none imports torch at module level
(the command checks its arguments, paths and sizes before any model loads).

* :mod:`~ccsr.upscale.config`: the settings of a run, one frozen, validated dataclass.
* :mod:`~ccsr.upscale.discovery`: which files a run reads and what it names their outputs.
* :mod:`~ccsr.upscale.limits` and :mod:`~ccsr.upscale.outdir`: size limits from file headers; the output
  folder's probe, lock and leftover temp files.
* :mod:`~ccsr.upscale.plan`: the work list (:mod:`~ccsr.upscale.jobs`) and each run folder's settings
  (:mod:`~ccsr.upscale.settings`: resolved once, hashed, recorded and passed to the pipeline as they are),
  before the model loads.
* :mod:`~ccsr.upscale.run`: ``run_upscale``, the entry point (plan, load, loop, record);
  :mod:`~ccsr.upscale.device`: the device and the pipeline it loads.
* :mod:`~ccsr.upscale.loop`: the per-image loop (decode, pipeline call, encode, atomic write).
* :mod:`~ccsr.upscale.frames`: multi-page TIFFs and animations, one unit per frame.
* :mod:`~ccsr.upscale.derived`: outputs made from K samples (uncertainty map, consensus pick, mean).
* :mod:`~ccsr.upscale.manifest` and :mod:`~ccsr.upscale.runlog`: ``manifest.jsonl``, ``run.json``, the
  failure lists, the console and the JSON-lines events.

Image files are read and written by :mod:`ccsr.io` and :mod:`ccsr.encode`, shared with the app and training.
"""
