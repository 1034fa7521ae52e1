"""Time a ``CCSRPipeline`` call by stage from outside, without a second copy of the sampler.

:class:`StageTimer` puts forward hooks on the pipeline's own networks (text encoder, ControlNet, UNet),
wraps the VAE's ``encode`` / ``decode`` methods on the instance, and swaps the post-processing functions
(colour fix, resize, tensor -> image), in every ``ccsr`` module that imported them, for timed ones while
:meth:`StageTimer.patched` is active. On CUDA every stage boundary synchronises the device, so a stage's
time is its kernels' time. While ``active`` is false the hooks return at once, so they can stay in place
across ``torch.compile`` (registering hooks after compiling would make torch recompile).

With a :class:`torch.utils.flop_counter.FlopCounterMode` attached (:meth:`StageTimer.count_flops`), each
stage also records the floating-point operations its kernels did.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch.utils.flop_counter import FlopCounterMode

#: stage name -> pipeline attribute holding the network (forward hooks)
HOOKED_MODULES = {"prompt": "text_encoder", "controlnet": "controlnet", "unet": "unet"}
#: stage name -> method of ``pipe.vae`` wrapped on the instance
VAE_METHODS = {"encode": "encode", "decode": "decode"}
#: stage name -> post-processing functions (home module, name); every ``ccsr`` module that imported one
#: by name gets the timed version while :meth:`StageTimer.patched` is active, wherever the pipeline calls it
PIPELINE_FUNCTIONS = {
    "colour fix": (("ccsr.color", "apply_color_fix"),),
    "resize": (("ccsr.image", "resize_float"),),
    "to image": (("ccsr.image", "tensor_to_pil"), ("ccsr.image", "tensor_to_uint8")),
}
#: every stage a pipeline call is split into, in the order they run; ``png encode`` is timed by the caller
NETWORK_STAGES = ("prompt", "encode", "controlnet", "unet", "decode")
STAGES = NETWORK_STAGES + tuple(PIPELINE_FUNCTIONS) + ("png encode",)


class StageTimer:
    """Accumulates seconds, calls and FLOPs per stage of the pipeline calls made while it is active."""

    def __init__(self, pipe, device: torch.device) -> None:
        self.pipe = pipe
        self.cuda = torch.device(device).type == "cuda"
        self.active = False
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.flops: dict[str, int] = defaultdict(int)
        self._start: dict[str, tuple[float, int]] = {}
        self._depth: dict[str, int] = defaultdict(int)  # a stage inside itself counts once
        self._counter: FlopCounterMode | None = None
        self._handles: list = []
        self._attach()

    # ------------------------------------------------------------------ bookkeeping
    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self.flops.clear()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _flops_now(self) -> int:
        return self._counter.get_total_flops() if self._counter is not None else 0

    def begin(self, stage: str) -> None:
        if self.active:
            self._depth[stage] += 1
            if self._depth[stage] == 1:
                self.sync()
                self._start[stage] = (time.perf_counter(), self._flops_now())

    def end(self, stage: str) -> None:
        if self.active and stage in self._start:
            self._depth[stage] -= 1
            if self._depth[stage] > 0:
                return
            self.sync()
            t0, f0 = self._start.pop(stage)
            self.seconds[stage] += time.perf_counter() - t0
            self.calls[stage] += 1
            self.flops[stage] += self._flops_now() - f0

    def timed(self, stage: str, fn: Callable) -> Callable:
        """``fn`` wrapped so that its calls count towards ``stage``."""

        def wrapper(*args, **kwargs):
            self.begin(stage)
            try:
                return fn(*args, **kwargs)
            finally:
                self.end(stage)

        wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
        return wrapper

    # ------------------------------------------------------------------ hooks
    def _attach(self) -> None:
        for stage, attr in HOOKED_MODULES.items():
            module = getattr(self.pipe, attr)
            # torch.compiler.disable: under torch.compile the hooks run eagerly at the graph's edges
            pre = torch.compiler.disable(lambda _m, _a, s=stage: self.begin(s))
            post = torch.compiler.disable(lambda _m, _a, _o, s=stage: self.end(s))
            self._handles.append(module.register_forward_pre_hook(pre))
            self._handles.append(module.register_forward_hook(post))
        vae = self.pipe.vae
        for stage, name in VAE_METHODS.items():
            setattr(vae, name, self.timed(stage, getattr(vae, name)))

    def detach(self) -> None:
        """Remove the hooks and wrappers (the pipeline is as before)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for name in VAE_METHODS.values():
            self.pipe.vae.__dict__.pop(name, None)

    @contextlib.contextmanager
    def patched(self) -> Iterator[StageTimer]:
        """Active, with the pipeline module's post-processing functions timed, for the ``with`` block."""
        saved = []  # (module, attribute, original)
        for stage, functions in PIPELINE_FUNCTIONS.items():
            for home, name in functions:
                original = getattr(importlib.import_module(home), name)
                timed = self.timed(stage, original)
                for module in [m for k, m in list(sys.modules.items()) if k.split(".")[0] == "ccsr" and m]:
                    for attr, value in list(vars(module).items()):
                        if value is original:
                            saved.append((module, attr, original))
                            setattr(module, attr, timed)
        self.active = True
        try:
            yield self
        finally:
            self.active = False
            self._start.clear()
            self._depth.clear()
            for module, attr, original in reversed(saved):
                setattr(module, attr, original)

    @contextlib.contextmanager
    def count_flops(self) -> Iterator[StageTimer]:
        """Active and counting FLOPs per stage (eager modules only: run it before ``torch.compile``)."""
        from torch.utils.flop_counter import FlopCounterMode

        _register_cpu_attention()
        self._counter = FlopCounterMode(display=False)
        try:
            with self._counter, self.patched():
                yield self
        finally:
            self._counter = None


def _register_cpu_attention() -> None:
    """FlopCounterMode counts the CUDA attention kernels but not the CPU one; give it the same formula."""
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in flop_counter.flop_registry:
        return

    def formula(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    flop_counter.register_flop_formula(op)(formula)
