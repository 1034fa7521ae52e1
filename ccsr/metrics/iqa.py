"""Image-quality metrics through pyiqa, by name. The only module of ``ccsr`` that imports pyiqa.

pyiqa (chaofengc/IQA-PyTorch) is licensed PolyForm Noncommercial 1.0.0; it stays out of the inference
core and is imported lazily, inside functions.

The paper's metric set is pinned in :data:`PAPER_METRICS` (CCSR-v2 Table; papers disagree on the
variants, so each choice is written down with its reason). Any other pyiqa metric name is passed
through unchanged. Direction (higher/lower is better) and whether a ground truth is needed come from
pyiqa's own metadata table (``DEFAULT_CONFIGS``), so they are known even when weights are missing.

A metric whose weights cannot be fetched (offline machine, firewall) or whose Python dependency is
missing raises :class:`MetricUnavailable`, whose message names the weight files, pyiqa's cache folder
and how to fetch them on a connected machine; callers report it instead of a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ccsr.metrics.paper import PAPER_METRICS, MetricSpec

#: Metrics computed on whole folders rather than per image (no per-image scores, no G-STD).
FOLDER_METRICS = frozenset({"fid"})
DEFAULT_METRICS = ("psnr", "ssim")

_HUB = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
_TV = "https://download.pytorch.org/models/"
#: Files pyiqa 0.1.16 fetches for the paper's metrics: (url, cache) with cache in pyiqa | torch | clip | hf.
KNOWN_WEIGHTS: dict[str, tuple[tuple[str, str], ...]] = {
    "lpips": ((_TV + "alexnet-owt-7be5be79.pth", "torch"), (_HUB + "LPIPS_v0.1_alex-df73285e.pth", "pyiqa")),
    "dists": ((_TV + "vgg16-397923af.pth", "torch"), (_HUB + "DISTS_weights-f5e65c96.pth", "pyiqa")),
    "fid": ((_HUB + "pt_inception-2015-12-05-6726825d.pth", "pyiqa"),),
    "niqe": ((_HUB + "niqe_modelparameters.mat", "pyiqa"),),
    "clipiqa": (
        (
            "https://openaipublic.azureedge.net/clip/models/"
            "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
            "clip",
        ),
    ),
    "musiq": ((_HUB + "musiq_koniq_ckpt-e95806b9.pth", "pyiqa"),),
    "maniqa-pipal": (
        (
            "https://huggingface.co/timm/vit_base_patch8_224.augreg2_in21k_ft_in1k/resolve/main/pytorch_model.bin",
            "hf",
        ),
        (_HUB + "MANIQA_PIPAL-ae6d356b.pth", "pyiqa"),
    ),
}
#: Python modules some metrics need that pyiqa does not install, with the pip requirement providing them.
_MODULE_HINTS = {"pkg_resources": "setuptools<81", "clip": "openai-clip", "timm": "timm"}
_HF_URL = re.compile(
    r"https://huggingface\.co/(?P<repo>[^/\s]+/[^/\s]+)/resolve/[^/\s]+/(?P<file>[^\s'\":]+)"
)
_DOWNLOADING = re.compile(r'Downloading:? "(?P<url>[^"]+)" to (?P<path>\S+)')


def _require_pyiqa() -> None:
    try:
        import pyiqa  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"the metrics need pyiqa, which cannot be imported ({e}): pip install 'ccsr[metrics]' "
            "(pyiqa is PolyForm Noncommercial). L-STD alone needs no pyiqa: run without --metrics."
        ) from None


def _spec(name: str) -> MetricSpec:
    return PAPER_METRICS.get(name, MetricSpec(name, {}, "pyiqa default"))


@dataclass(frozen=True)
class MetricInfo:
    """What the report needs to know about a metric, available without loading any weights."""

    name: str
    pyiqa_name: str
    options: Mapping[str, object]
    note: str
    lower_better: bool
    mode: str  # "FR" (needs a reference) or "NR", from pyiqa's metadata
    level: str  # "image" or "folder"

    @property
    def needs_gt(self) -> bool:
        return self.mode == "FR" or self.level == "folder"

    @property
    def arrow(self) -> str:
        return "↓" if self.lower_better else "↑"


def metric_info(name: str) -> MetricInfo:
    """Metadata of one metric (ours or any pyiqa name); raises ValueError for an unknown name."""
    _require_pyiqa()
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    spec = _spec(name)
    cfg = DEFAULT_CONFIGS.get(spec.pyiqa_name)
    if cfg is None:
        raise ValueError(
            f"unknown metric {name!r}: use one of {', '.join(PAPER_METRICS)} or a name from pyiqa.list_models()"
        )
    level = "folder" if name in FOLDER_METRICS or spec.pyiqa_name in FOLDER_METRICS else "image"
    return MetricInfo(
        name,
        spec.pyiqa_name,
        dict(spec.options),
        spec.note,
        bool(cfg.get("lower_better", False)),
        cfg["metric_mode"],
        level,
    )


def pyiqa_cache_dir() -> Path:
    """pyiqa's weight cache (``$TORCH_HOME/hub/pyiqa``, by default ``~/.cache/torch/hub/pyiqa``)."""
    from pyiqa.utils.download_util import DEFAULT_CACHE_DIR

    return Path(DEFAULT_CACHE_DIR)


@dataclass(frozen=True)
class WeightFile:
    url: str
    path: str  # where it must be on this machine
    present: bool


def _weight_file(url: str, cache: str) -> WeightFile:
    fname = url.rsplit("/", 1)[-1]
    if cache == "hf":
        m = _HF_URL.match(url)
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE

        hit = try_to_load_from_cache(m["repo"], m["file"]) if m else None
        return WeightFile(
            url, f"{HF_HUB_CACHE} (Hugging Face cache, repo {m['repo'] if m else '?'})", isinstance(hit, str)
        )
    folder = {
        "pyiqa": pyiqa_cache_dir(),
        "torch": Path(torch.hub.get_dir()) / "checkpoints",
        "clip": Path(torch.hub.get_dir()) / "clip",
    }[cache]
    return WeightFile(url, str(folder / fname), (folder / fname).is_file())


class MetricUnavailable(RuntimeError):
    """A metric that cannot run here: weights not fetchable or a Python dependency missing."""

    def __init__(self, name: str, reason: str, files: Sequence[WeightFile] = (), hint: str = "") -> None:
        self.name, self.reason, self.files, self.hint = name, reason, tuple(files), hint
        lines = [f"metric {name!r} is unavailable: {reason}"]
        for f in self.files:
            lines.append(f"  {'present' if f.present else 'MISSING'}: {f.path}  <-  {f.url}")
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


def _exception_chain(e: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    link: BaseException | None = e
    while link is not None and id(link) not in seen:
        chain.append(link)
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return chain


def _is_fetch_failure(e: BaseException) -> bool:
    return any(
        isinstance(x, OSError) or type(x).__module__.split(".")[0] in ("httpx", "httpx2")
        for x in _exception_chain(e)
    )


def _unavailable(name: str, pyiqa_name: str, err: BaseException, captured: str) -> MetricUnavailable | None:
    """Turn a creation failure into :class:`MetricUnavailable`, or None when it is a genuine bug."""
    missing_mod = next((x for x in _exception_chain(err) if isinstance(x, ImportError)), None)
    if missing_mod is not None:
        mod = (getattr(missing_mod, "name", None) or "?").split(".")[0]
        req = _MODULE_HINTS.get(mod, mod)
        return MetricUnavailable(
            name,
            f"Python module {mod!r} is missing ({missing_mod})",
            hint=f"Install it with: pip install '{req}'",
        )
    if not _is_fetch_failure(err):
        return None
    files: dict[str, WeightFile] = {}
    for m in _DOWNLOADING.finditer(captured):  # pyiqa and torchvision print this line before each download
        p = m["path"]
        files[m["url"]] = WeightFile(m["url"], p, Path(p).is_file())
    for x in _exception_chain(err):
        for m in _HF_URL.finditer(str(x)):
            files.setdefault(m.group(0), _weight_file(m.group(0), "hf"))
    for url, cache in KNOWN_WEIGHTS.get(pyiqa_name, ()):
        files.setdefault(url, _weight_file(url, cache))
    cause = _exception_chain(err)[-1]
    opts = (
        ""
        if not PAPER_METRICS.get(name) or not PAPER_METRICS[name].options
        else ", " + ", ".join(f"{k}={v!r}" for k, v in PAPER_METRICS[name].options.items())
    )
    hf_repos = sorted(
        {m["repo"] for u in files for m in [_HF_URL.match(u)] if m and "IQA-PyTorch-Weights" not in u}
    )
    hint = (
        f"pyiqa's weight cache is {pyiqa_cache_dir()} (torchvision's: {Path(torch.hub.get_dir()) / 'checkpoints'}; "
        f"both move with TORCH_HOME).\n"
        f"To fetch on a connected machine: python -c \"import pyiqa; pyiqa.create_metric('{pyiqa_name}'{opts}, device='cpu')\" "
        f"(or download each URL above), then copy the files to the same paths here."
    )
    if hf_repos:
        hint += f" Hugging Face files: `hf download {' '.join(hf_repos)}` there, then copy its HF_HOME cache."
    return MetricUnavailable(
        name,
        f"its weights could not be loaded ({type(cause).__name__}: {cause})",
        sorted(files.values(), key=lambda f: f.url),
        hint,
    )


class _Tee(io.TextIOBase):
    """Writes to the real stream (the user still sees download progress) and keeps a copy to parse."""

    def __init__(self, stream) -> None:
        self.stream, self.copy = stream, io.StringIO()

    def write(self, s: str) -> int:
        self.copy.write(s)
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()


class Metric:
    """A loaded metric. Image-level metrics score ``(B, 3, H, W)`` batches; folder-level ones file lists."""

    def __init__(self, info: MetricInfo, model: torch.nn.Module, device: torch.device) -> None:
        self.info, self.model, self.device = info, model, device

    @torch.no_grad()
    def score(self, images: torch.Tensor, gt: torch.Tensor | None = None) -> torch.Tensor:
        """Per-image scores, float64 ``(B,)`` on the CPU.

        Args:
            images: ``(B, 3, H, W)`` float in ``[0, 1]``.
            gt: ``(B, 3, H, W)`` (or ``(1, 3, H, W)``, broadcast) in ``[0, 1]``; required when ``info.needs_gt``.
        """
        if self.info.level != "image":
            raise ValueError(f"{self.info.name} is a folder-level metric; use score_folders()")
        x = images.to(self.device, torch.float32)
        if self.info.mode == "FR":
            if gt is None:
                raise ValueError(f"{self.info.name} compares with a ground truth; none was given")
            ref = gt.to(self.device, torch.float32).expand_as(x)
            out = self.model(x, ref)
        else:
            out = self.model(x)
        return torch.as_tensor(out).detach().reshape(-1).to("cpu", torch.float64)

    def score_folders(self, gt_files: Sequence[Path], sr_files: Sequence[Path]) -> float:
        """Folder-level score (FID) between exactly these ground-truth and output files."""
        if len(gt_files) < 2 or len(sr_files) < 2:
            raise ValueError(
                f"{self.info.name} needs at least 2 images per folder, got {len(gt_files)} and {len(sr_files)}"
            )
        with tempfile.TemporaryDirectory(prefix="ccsr-fid-") as tmp:
            dirs = []
            for tag, files in (("gt", gt_files), ("sr", sr_files)):
                d = Path(tmp) / tag
                d.mkdir()
                for i, f in enumerate(files):  # exactly the paired files, whatever else the folders hold
                    link = d / f"{i:06d}{Path(f).suffix.lower()}"
                    try:
                        os.symlink(Path(f).resolve(), link)
                    except OSError:
                        shutil.copy2(f, link)
                dirs.append(str(d))
            with torch.no_grad():
                return float(self.model(dirs[1], dirs[0], num_workers=0, verbose=False))


def load_metric(name: str, device: str | torch.device = "cpu", timeout: float = 30.0) -> Metric:
    """Build one metric through ``pyiqa.create_metric`` with the pinned options.

    Args:
        name: one of :data:`PAPER_METRICS` or any pyiqa metric name.
        device: where the metric network runs.
        timeout: seconds a silent network connection may stall before a download counts as failed.

    Raises:
        MetricUnavailable: weights cannot be fetched, or a Python dependency is missing.
        ValueError: unknown metric name.
    """
    info = metric_info(name)
    dev = torch.device(device)
    old_timeout = socket.getdefaulttimeout()
    out, err = _Tee(sys.stdout), _Tee(sys.stderr)
    try:
        socket.setdefaulttimeout(
            timeout
        )  # pyiqa's urllib downloads set none, and a dropped packet would hang
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            import pyiqa

            model = pyiqa.create_metric(info.pyiqa_name, device=dev, **dict(info.options))
    except Exception as e:  # noqa: BLE001 - classified below; anything else is re-raised unchanged
        u = _unavailable(name, info.pyiqa_name, e, out.copy.getvalue() + err.copy.getvalue())
        if u is None:
            raise
        raise u from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    return Metric(info, model, dev)
