"""``CCSRPipeline``: CCSR-v2 inference (docs/algorithm.md §1.3-1.9) as a diffusers pipeline.

>>> pipe = CCSRPipeline.from_pretrained("preset/models", torch_dtype=torch.float16).to("cuda")
>>> out = pipe(Image.open("lr.png"), steps=1, generator=torch.Generator().manual_seed(0))
>>> out.images[0].save("sr.png"); out.timesteps, out.num_network_evals
((999,), 1)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ccsr.encoding import decode_latent, encode_image, encode_prompts, vae_scale_factor
from ccsr.image import make_canvas, pad_canvas, pil_to_tensor, plan_resize
from ccsr.models.loading import REFERENCE_DEFAULTS
from ccsr.options import check_color_fix, check_postprocess, check_tile_window, check_wavelet_levels
from ccsr.postprocess import finish_images
from ccsr.quiet import quiet_loading
from ccsr.sampling import INITIAL_PROMPTS, InitialPrompt, Prompts, Tiles, sample_clean_latent
from ccsr.schedule import DEFAULT_START_TIMESTEP, CCSRSchedule, make_schedule, preset_for_steps
from ccsr.tiling import latent_tiles, tile_counter, tile_windows

DEFAULT_PROMPT = "clean, high-resolution, 8k"
DEFAULT_NEGATIVE_PROMPT = "blurry, dotted, noise, raster lines, unclear, lowres, over-smoothed"
GeneratorArg = torch.Generator | list[torch.Generator] | None


@dataclass
class CCSRPipelineOutput(BaseOutput):
    """``images``: list of PIL images, ``(B, H, W, 3)`` float array, ``(B, 3, H, W)`` tensor in ``[0, 1]``,
    or the final latents ``(B, 4, h, w)`` for ``output_type="latent"``.
    ``timesteps``: the timesteps at which the denoiser ran; ``num_network_evals``: how many runs."""

    images: list[Image.Image] | np.ndarray | torch.Tensor
    timesteps: tuple[int, ...]
    num_network_evals: int


class CCSRPipeline(DiffusionPipeline):
    """Two-stage CCSR-v2 super-resolution: truncated diffusion with a latent ControlNet (stage 1)
    and a GAN-fine-tuned VAE decoder (stage 2)."""

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"

    def __init__(self, unet, controlnet, vae, text_encoder, tokenizer, scheduler) -> None:
        super().__init__()
        self.register_modules(
            unet=unet,
            controlnet=controlnet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
        )
        self._prompt_cache: dict[tuple, torch.Tensor] = {}
        #: what ``color_fix`` / ``postprocess`` / ``tile_window=None`` mean: the loaded folder's
        #: ``inference_defaults.json``, else the authors' behaviour (:data:`REFERENCE_DEFAULTS`)
        self.inference_defaults = dict(REFERENCE_DEFAULTS)

    @property
    def default_color_fix(self) -> str:
        """What ``color_fix=None`` means (``inference_defaults["color_fix"]``)."""
        return str(self.inference_defaults["color_fix"])

    @property
    def default_border_pad(self) -> int:
        """What ``border_pad=None`` means (``inference_defaults["border_pad"]``)."""
        return int(self.inference_defaults["border_pad"])

    @property
    def default_wavelet_levels(self) -> int:
        """What ``wavelet_levels=None`` means (``inference_defaults["wavelet_levels"]``)."""
        return int(self.inference_defaults["wavelet_levels"])

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        base: str | os.PathLike | None = None,
        controlnet: str | os.PathLike | None = None,
        vae: str | os.PathLike | None = None,
        torch_dtype: torch.dtype | None = None,
        allow_pickle: bool = False,
    ) -> CCSRPipeline:
        """Load from the official release layout, a single folder, or a Hub repo id (see
        :mod:`ccsr.models.loading`). ``base``/``controlnet``/``vae`` override single components."""
        from ccsr.models.loading import load_components, recommended_settings

        c = load_components(
            pretrained_model_name_or_path,
            base,
            controlnet,
            vae,
            torch_dtype=torch_dtype,
            allow_pickle=allow_pickle,
        )
        pipe = cls(c.unet, c.controlnet, c.vae, c.text_encoder, c.tokenizer, c.scheduler)
        pipe.component_paths = c.paths
        pipe.inference_defaults = recommended_settings(c.paths.root)
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **_: object) -> None:
        """Write the single-folder layout (``unet/ vae/ controlnet/ text_encoder/ tokenizer/ scheduler/``)."""
        from ccsr.models.controlnet import save_ccsr_controlnet
        from ccsr.models.loading import write_inference_defaults

        root = os.fspath(save_directory)
        os.makedirs(root, exist_ok=True)
        self.unet.save_pretrained(os.path.join(root, "unet"), safe_serialization=True)
        self.vae.save_pretrained(os.path.join(root, "vae"), safe_serialization=True)
        with quiet_loading():
            self.text_encoder.save_pretrained(os.path.join(root, "text_encoder"), safe_serialization=True)
        self.tokenizer.save_pretrained(os.path.join(root, "tokenizer"))
        self.scheduler.save_pretrained(os.path.join(root, "scheduler"))
        kind = self.scheduler.config.prediction_type
        save_ccsr_controlnet(self.controlnet, os.path.join(root, "controlnet"), kind)
        own = {k: v for k, v in self.inference_defaults.items() if v != REFERENCE_DEFAULTS[k]}
        if own:
            write_inference_defaults(root, **own)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ speed
    def optimize(
        self,
        *,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str | None = None,
        compile_backend: str = "inductor",
    ) -> CCSRPipeline:
        """Speed options that leave the algorithm alone; returns ``self``.

        ``channels_last``: the UNet, ControlNet and VAE keep their weights in NHWC, which cuDNN's fp16 /
        bf16 convolution kernels prefer (results equal up to float rounding). ``compile``:
        ``torch.compile`` of the UNet, the ControlNet and the VAE encoder / decoder, in place
        (``nn.Module.compile``, so ``pipe.unet`` stays a ``UNet2DConditionModel``); the first call at
        each new image size compiles (seconds to minutes), later ones run the compiled graph.
        ``compile_mode`` and ``compile_backend`` are torch's (mode ``None``, ``"reduce-overhead"``,
        ``"max-autotune"``; backend ``"inductor"``, or ``"eager"`` / ``"aot_eager"`` to debug a graph).
        """
        convolutional = (self.unet, self.controlnet, self.vae)
        if channels_last:
            for module in convolutional:
                module.to(memory_format=torch.channels_last)
        if compile:
            for module in (self.unet, self.controlnet, self.vae.encoder, self.vae.decoder):
                module.compile(mode=compile_mode, backend=compile_backend)
        return self

    # ------------------------------------------------------------------ building blocks
    @property
    def _execution_device(self) -> torch.device:
        """diffusers' property walks every module of every component at each access (7 ms on the full-size
        model on a 2-core CPU, read 3-5 times per call); here it is remembered for as long as the networks'
        weights stay where they are, and never remembered while offloading hooks are attached."""
        nets = [m for m in (self.unet, self.controlnet, self.vae, self.text_encoder) if m is not None]
        if any(hasattr(m, "_hf_hook") or hasattr(m, "_diffusers_hook") for m in nets):
            return super()._execution_device
        key = tuple(next(m.parameters()).device for m in nets)
        cached = getattr(self, "_device_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, super()._execution_device)
            self._device_cache = cached
        return cached[1]

    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.vae)

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Last hidden state of the text encoder, ``(1, 77, D)``; cached per prompt."""
        key = (prompt, str(self._execution_device), self.text_encoder.dtype)
        if key not in self._prompt_cache:
            self._prompt_cache[key] = encode_prompts(
                self.text_encoder, self.tokenizer, prompt, self._execution_device
            )
        return self._prompt_cache[key]

    def resolve_schedule(
        self,
        steps: int | None,
        num_inference_steps: int | None,
        t_max: float | None,
        t_min: float | None,
        guidance_scale: float | None,
        start_timestep: int,
    ) -> tuple[CCSRSchedule, float]:
        """User step count + expert overrides -> (schedule, guidance scale)."""
        preset = preset_for_steps(1 if steps is None else steps)
        n = preset.num_inference_steps if num_inference_steps is None else num_inference_steps
        g = preset.guidance_scale if guidance_scale is None else float(guidance_scale)
        if g < 0:
            raise ValueError(f"guidance_scale={g} must be >= 0")
        self.scheduler.set_timesteps(n)
        grid = [int(t) for t in self.scheduler.timesteps]
        sched = make_schedule(
            grid,
            preset.t_max if t_max is None else t_max,
            preset.t_min if t_min is None else t_min,
            start_timestep,
        )
        return sched, g

    def _randn(self, shape: tuple[int, ...], generator: GeneratorArg) -> torch.Tensor:
        return randn_tensor(shape, generator=generator, device=self._execution_device, dtype=torch.float32)

    def _decode(self, latents: torch.Tensor, pad: int = 0) -> torch.Tensor:
        """Latents -> images in ``[0, 1]`` (:func:`ccsr.encoding.decode_latent`), less ``pad`` pixels of
        mirrored border on each side."""
        decoded = (decode_latent(self.vae, latents) / 2 + 0.5).clamp(0, 1)
        return decoded[..., pad:-pad, pad:-pad] if pad else decoded

    # ------------------------------------------------------------------ steps of a call
    def _resolve_finish(
        self, color_fix: str | None, postprocess: str | None, tile_window: str | None
    ) -> tuple[str, str, str]:
        """``(color_fix, postprocess, tile_window)`` checked, ``None`` replaced by :attr:`inference_defaults`."""
        postprocess = check_postprocess(postprocess or str(self.inference_defaults["postprocess"]))
        tile_window = check_tile_window(tile_window or str(self.inference_defaults["tile_window"]))
        color_fix = check_color_fix(self.default_color_fix if color_fix is None else color_fix)
        return color_fix, postprocess, tile_window

    def _latent_shape(
        self, batch: int, padded: torch.Tensor, latents: torch.Tensor | None
    ) -> tuple[int, ...]:
        """``(B, C, h, w)`` of the latents of the padded canvas; given ``latents`` must have it."""
        f = self.vae_scale_factor
        shape = (batch, self.unet.config.in_channels, padded.shape[2] // f, padded.shape[3] // f)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents has shape {tuple(latents.shape)}, expected {shape} for this image")
        return shape

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image | list[Image.Image],
        steps: int | None = None,
        *,
        num_inference_steps: int | None = None,
        t_max: float | None = None,
        t_min: float | None = None,
        guidance_scale: float | None = None,
        prompt: str = DEFAULT_PROMPT,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        upscale: int = 4,
        process_size: int = 512,
        color_fix: str | None = None,
        postprocess: str | None = None,
        border_pad: int | None = None,
        wavelet_levels: int | None = None,
        start_timestep: int = DEFAULT_START_TIMESTEP,
        start_point: Literal["lr", "noise"] = "lr",
        initial_prompt: InitialPrompt = "reference",
        lr_latent: Literal["sample", "mode"] = "sample",
        conditioning_scale: float = 1.0,
        generator: GeneratorArg = None,
        latents: torch.Tensor | None = None,
        tile_size: int | None = None,
        tile_stride: int | None = None,
        tile_batch: int = 1,
        tile_window: str | None = None,
        tile_callback: Callable[[int, int], None] | None = None,
        vae_tiling: bool = False,
        output_type: Literal["pil", "np", "pt", "latent"] = "pil",
        return_dict: bool = True,
    ) -> CCSRPipelineOutput | tuple:
        """Super-resolve ``image`` (one PIL image, or a list of equally sized ones).

        Args:
            steps: denoiser evaluations: 1 = CCSR-S1 (default), 2 = CCSR-S2, k = S2 subdivided
                (:func:`ccsr.schedule.preset_for_steps`). ``num_inference_steps``, ``t_max``, ``t_min``
                and ``guidance_scale`` override the preset (the reference's knobs).
            upscale, process_size: the reference's resize plan (:func:`ccsr.image.plan_resize`).
            color_fix: ``"adain"`` (reference), ``"wavelet"`` or ``"none"``; ``None``: the model's
                recommendation (:attr:`default_color_fix`: its ``inference_defaults.json``, else adain).
            postprocess: ``"reference"``: the authors' 8-bit order (round, colour fix, truncate, resize;
                their exact files); ``"float"``: colour fix and resize in float, one rounding
                (:mod:`ccsr.postprocess`). ``None``: the model's recommendation, else ``"reference"``.
            border_pad: pixels mirrored onto each side of the canvas before the VAE encoder and cropped
                after the decoder, so the autoencoder's and UNet's zero padding darkens no image border
                (a multiple of 8; 0 = the reference). ``None``: the model's recommendation
                (:attr:`default_border_pad`, else 0). ``latents`` then cover the padded canvas.
            wavelet_levels: bands of the decoded image the wavelet colour fix keeps (1-10; the authors'
                code: 5); coarser ones come from the canvas. ``None``: the model's recommendation
                (:attr:`default_wavelet_levels`, else 5).
            start_point: ``"lr"``: start from the LR latent noised to ``start_timestep``; ``"noise"``: pure noise.
            initial_prompt: conditioning of the extraction step when ``guidance_scale > 1``:
                ``"reference"`` uses the negative prompt (as the published code and results),
                ``"positive"`` the positive prompt, ``"cfg"`` applies classifier-free guidance there too.
            lr_latent: ``"sample"`` the VAE posterior (reference) or its ``"mode"`` (deterministic).
            generator: every random draw (initial noise, posterior sample, re-noising, DDPM noise)
                comes from it; pass one generator per image for batch-independent results.
            latents: initial noise ``(B, 4, H/8, W/8)`` instead of drawing it.
            tile_size, tile_stride: latent-tiled diffusion with windows of this many *pixels*
                (reference: 512 / 256); ``None`` runs the whole latent at once.
            tile_batch: tiles per network call when tiling.
            tile_window: tile blending weight, ``"reference"`` (the authors' Gaussian, off-centre
                vertically) or ``"symmetric"`` (:func:`ccsr.tiling.gaussian_weights`). ``None``: the
                model's recommendation, else ``"reference"``.
            tile_callback: ``(done, total)`` after each tile group, counting tiles over all evaluations.
            vae_tiling: tiled VAE encode/decode (diffusers ``enable_tiling``) for large images.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` (float in [0, 1]) or ``"latent"``.
        """
        # 1. Check inputs; None means the model's recommendation.
        images = _images_of(image)
        color_fix, postprocess, tile_window = self._resolve_finish(color_fix, postprocess, tile_window)
        _check_choices(start_point, initial_prompt, lr_latent, output_type, generator, len(images))
        schedule, g = self.resolve_schedule(
            steps, num_inference_steps, t_max, t_min, guidance_scale, start_timestep
        )
        device = self._execution_device

        # 2. Pre-process: resize plan, canvas in [0, 1], mirrored border, latent shape, tile windows.
        plan = plan_resize(images[0].size, upscale, process_size)
        canvas = torch.cat([pil_to_tensor(make_canvas(im.convert("RGB"), plan)) for im in images]).to(device)
        pad = self.default_border_pad if border_pad is None else border_pad
        levels = check_wavelet_levels(
            self.default_wavelet_levels if wavelet_levels is None else wavelet_levels
        )
        padded = pad_canvas(canvas, pad)
        latent_shape = self._latent_shape(len(images), padded, latents)
        tiles = latent_tiles(tile_size, tile_stride, self.vae_scale_factor)

        # 3. Text embeddings (cached across calls).
        pos = self.encode_prompt(prompt)
        neg = self.encode_prompt(negative_prompt) if (g > 1.0 or initial_prompt == "cfg") else None

        # 4. Noise first, then the LR latent (posterior sample), both from the generator.
        noise = (
            latents.to(device, torch.float32) if latents is not None else self._randn(latent_shape, generator)
        )
        if vae_tiling:
            self.vae.enable_tiling()
        try:
            z_lr = encode_image(self.vae, padded, generator, lr_latent)
            tiling = None
            if tiles is not None:
                windows = (
                    len(tile_windows(latent_shape[2], latent_shape[3], *tiles)) * schedule.num_network_evals
                )
                tiling = Tiles(*tiles, tile_batch, tile_window, tile_counter(tile_callback, windows))

            # 5-6. Extraction step, re-noising, truncated DDPM loop (docs/algorithm.md §1.5).
            x = sample_clean_latent(
                self.unet,
                self.controlnet,
                self.scheduler,
                schedule,
                z_lr,
                noise,
                Prompts(pos, neg, g, initial_prompt),
                start_timestep=start_timestep,
                start_point=start_point,
                conditioning_scale=conditioning_scale,
                tiles=tiling,
                generator=generator,
            )
            # 7. Stage 2: decode with the fine-tuned decoder, colour fix, resize to scale x input.
            if output_type == "latent":
                result: object = x
            else:
                decoded = self._decode(x, pad)
                result = finish_images(
                    decoded, canvas, color_fix, plan.output_size, postprocess, output_type, levels
                )
        finally:
            if vae_tiling:
                self.vae.disable_tiling()
        self.maybe_free_model_hooks()
        if not return_dict:
            return result, schedule.timesteps, schedule.num_network_evals
        return CCSRPipelineOutput(result, schedule.timesteps, schedule.num_network_evals)


def _images_of(image: Image.Image | list[Image.Image]) -> list[Image.Image]:
    """The images of one call: one PIL image, or a non-empty list of them of one size."""
    images = [image] if isinstance(image, Image.Image) else list(image)
    if not images or not all(isinstance(im, Image.Image) for im in images):
        raise TypeError("image must be a PIL.Image.Image or a non-empty list of them")
    if len({im.size for im in images}) != 1:
        raise ValueError(f"images in one call must share a size, got {sorted({im.size for im in images})}")
    return images


def _check_choices(
    start_point: str, initial_prompt: str, lr_latent: str, output_type: str, generator: GeneratorArg, b: int
) -> None:
    """The arguments of a call that take a fixed set of values, and one generator per image if a list."""
    if start_point not in ("lr", "noise"):
        raise ValueError(f"start_point={start_point!r} must be 'lr' or 'noise'")
    if initial_prompt not in INITIAL_PROMPTS:
        raise ValueError(f"initial_prompt={initial_prompt!r} must be one of {INITIAL_PROMPTS}")
    if lr_latent not in ("sample", "mode"):
        raise ValueError(f"lr_latent={lr_latent!r} must be 'sample' or 'mode'")
    if output_type not in ("pil", "np", "pt", "latent"):
        raise ValueError(f"output_type={output_type!r} must be 'pil', 'np', 'pt' or 'latent'")
    if isinstance(generator, list) and len(generator) != b:
        raise ValueError(f"got {len(generator)} generators for {b} images; pass one per image")
