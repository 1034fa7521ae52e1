"""The work list of a folder run, as the plan (:mod:`ccsr.upscale.plan`) makes it and the loop
(:mod:`ccsr.upscale.loop`) works through it: run folders, inputs (or frames) and the outputs they need."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ccsr.image import ResizePlan
from ccsr.upscale.discovery import InputFile
from ccsr.upscale.limits import Header
from ccsr.upscale.manifest import ManifestWriter
from ccsr.upscale.settings import RunSettings


@dataclass
class RunDir:
    """One run folder: the output root, or ``steps{S}/`` of a sweep."""

    steps: int
    dir: Path
    settings: RunSettings | None = None  # resolved once by the plan, before the model loads
    skipped: int = 0
    writer: ManifestWriter | None = None
    assembled: set[str] = field(default_factory=set)  # multi-frame outputs put together by this process

    @property
    def resolved(self) -> RunSettings:
        """The settings the plan resolved for this folder."""
        if self.settings is None:
            raise RuntimeError(f"the settings of {self.dir} are used before the plan resolved them")
        return self.settings

    @property
    def hash(self) -> str:
        """The settings hash that this folder's manifest lines carry."""
        return self.resolved.hash


@dataclass(frozen=True)
class Task:
    """One output to make: sample ``sample`` of an image (or of one of its frames) into ``run``.

    With ``--uncertainty-map`` / ``--select`` (:mod:`ccsr.upscale.derived`) a sample may be computed
    only to derive other outputs (``rel`` None: not written), and ``kind`` names a derived output
    ("std", "consensus", "mean") made from the image's samples once they are all computed.
    """

    run: RunDir
    sample: int
    rel: str | None  # output path relative to the run folder (a frame file for a frame); None: not written
    kind: str = "sample"
    settings: str | None = None  # settings hash recorded for this output (default: the run's)
    final: str | None = None  # for a frame: the multi-frame output it is part of (ccsr.upscale.frames)


@dataclass
class Job:
    """One input image (or one frame of a multi-frame input) and the outputs it still needs."""

    file: InputFile
    tasks: list[Task]
    frame: int = 0
    header: Header | None = None  # frame sizes, durations and loop of a multi-frame input
    plan: ResizePlan | None = None  # the frame's resize plan from its header (None: known once decoded)
