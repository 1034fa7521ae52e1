"""``ccsr app``: a local web app (Gradio) over the upscale runner, the consistency tools and the report.

:mod:`ccsr.app.engine` holds the model and does the work (no web framework); :mod:`ccsr.app.ui` is
the page. Install with ``pip install "ccsr[app]"``; start with ``ccsr app``.
"""
