"""Time one CCSR call and each network forward alone; print the pipeline's overhead ratio.

    python benchmarks/components.py --model full --input 128 --steps 1 --repeats 3          # this CPU
    python benchmarks/components.py --model full --device cuda --dtype fp16 --input 128     # a GPU
    python benchmarks/components.py --model PATH_OR_REPO                                     # real weights
    python benchmarks/components.py --model full --device cuda --dtype fp16 --channels-last --compile

Timings are medians over ``--repeats`` after one warm-up call, with the machine named. The ratio is
(total call time) / (sum of the network forwards timed alone on the same inputs): VAE encode,
ControlNet, UNet, VAE decode. Peak memory: RSS on CPU, peak allocated on CUDA. The CPU-side stages a
folder run adds around the call (colour fix, PNG decode of the input and encode of the output) are
timed too; ``ccsr upscale`` overlaps the PNG work with the networks (benchmarks/upscale_throughput.py).
"""

from __future__ import annotations

import argparse
import io
import platform
import resource
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def load(model: str, device: str, dtype: torch.dtype):
    from ccsr.pipeline import CCSRPipeline

    if model == "full":
        from ccsr.models.full_size import build_full_size_pipeline

        pipe = build_full_size_pipeline(tempfile.mkdtemp(), torch_dtype=dtype)
    elif model == "tiny-random":
        from ccsr.models.tiny import build_tiny_components

        pipe = CCSRPipeline(*build_tiny_components())
    else:
        pipe = CCSRPipeline.from_pretrained(model, torch_dtype=dtype)
    return pipe.to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default="full",
        help="'full' (random full-size), 'tiny-random', or a weights folder / repo id",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--input", type=int, default=128, help="square LR input side")
    ap.add_argument("--upscale", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--channels-last", action="store_true", help="CCSRPipeline.optimize(channels_last=True)")
    ap.add_argument("--compile", action="store_true", help="CCSRPipeline.optimize(compile=True)")
    args = ap.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.set_grad_enabled(False)
    pipe = load(args.model, args.device, dtype).optimize(
        channels_last=args.channels_last, compile=args.compile
    )
    rng = np.random.default_rng(0)
    lr = Image.fromarray(rng.integers(0, 255, (args.input, args.input, 3), dtype=np.uint8))
    gen = torch.Generator().manual_seed(0)
    kw = dict(upscale=args.upscale, process_size=0)

    total = timed(lambda: pipe(lr, args.steps, generator=gen, **kw), device, args.repeats)
    out = pipe(lr, args.steps, generator=gen, output_type="latent", **kw)
    side = args.input * args.upscale
    canvas = torch.rand(1, 3, side, side, device=device, dtype=pipe.vae.dtype) * 2 - 1
    z = out.images.to(device)
    emb = pipe.encode_prompt("clean, high-resolution, 8k")
    t = torch.tensor([999], device=device)
    cn_in = dict(encoder_hidden_states=emb, controlnet_cond=z.to(pipe.controlnet.dtype), return_dict=False)
    down, mid = pipe.controlnet(z.to(pipe.controlnet.dtype), t, **cn_in)
    parts = {
        "prompt encode (cached in runs)": timed(
            lambda: pipe.text_encoder(
                torch.zeros(1, pipe.tokenizer.model_max_length, dtype=torch.long, device=device)
            ),
            device,
            args.repeats,
        ),
        "vae encode": timed(lambda: pipe.vae.encode(canvas), device, args.repeats),
        "controlnet": timed(
            lambda: pipe.controlnet(z.to(pipe.controlnet.dtype), t, **cn_in), device, args.repeats
        ),
        "unet": timed(
            lambda: pipe.unet(
                z.to(pipe.unet.dtype),
                t,
                encoder_hidden_states=emb,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
                return_dict=False,
            ),
            device,
            args.repeats,
        ),
        "vae decode": timed(
            lambda: pipe.vae.decode(z.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor),
            device,
            args.repeats,
        ),
    }
    from ccsr.color import apply_color_fix

    sr = torch.rand(1, 3, side, side, device=device)
    image = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    png = io.BytesIO()
    image.save(png, format="PNG")
    cpu_side = {
        "colour fix (adain)": timed(
            lambda: apply_color_fix(sr, canvas.float() / 2 + 0.5, "adain"), device, args.repeats
        ),
        "colour fix (wavelet)": timed(
            lambda: apply_color_fix(sr, canvas.float() / 2 + 0.5, "wavelet"), device, args.repeats
        ),
        "PNG encode of the output": timed(
            lambda: image.save(io.BytesIO(), format="PNG"), device, args.repeats
        ),
        "PNG decode of an input": timed(
            lambda: Image.open(io.BytesIO(png.getvalue())).convert("RGB"), device, args.repeats
        ),
    }
    nets = (
        parts["vae encode"]
        + parts["vae decode"]
        + out.num_network_evals * (parts["controlnet"] + parts["unet"])
    )
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated (CUDA)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    opts = [o for o, on in (("channels_last", args.channels_last), ("compile", args.compile)) if on]
    print(f"machine: {name}; torch {torch.__version__}; model {args.model}; {args.dtype} {' '.join(opts)}")
    print(
        f"input {args.input}x{args.input} -> {side}x{side}, steps {args.steps} (timesteps {out.timesteps}), median of {args.repeats}"
    )
    for k, v in parts.items():
        print(f"  {k:32s} {v:8.3f} s")
    print(f"  {'networks (sum, per call)':32s} {nets:8.3f} s")
    print(f"  {'total pipeline call':32s} {total:8.3f} s")
    print(f"overhead ratio total/networks: {total / nets:.3f}   peak memory: {peak}")
    print(f"around the call in a folder run ({side}x{side} output):")
    for k, v in cpu_side.items():
        print(f"  {k:32s} {v:8.3f} s")


if __name__ == "__main__":
    main()
