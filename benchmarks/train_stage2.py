"""Stage-2 training speed: the real loop and :class:`ccsr.training.stage2.Stage2Step`, random weights.

    python benchmarks/train_stage2.py --model tiny --resolution 64 --batch-size 2 --steps 8        # this CPU
    python benchmarks/train_stage2.py --model full --device cuda --mixed-precision fp16 \\
        --resolution 512 --batch-size 2 --steps 8                                                  # a GPU

Step time: median of the loop's own ``time/step_s`` over the steps after the first two (warm-up) and
before the last (which also writes a checkpoint). ``begin_disc`` is 0, so every timed step includes the
generator's GAN term (one extra discriminator pass). Models have random weights, written to a temporary
folder and loaded back as a run would: tiny (ccsr.models.tiny, 4-block 32 px DINO, 2-block DINOv2,
LPIPS-Alex) or full (SD-2.1-base + CCSR ControlNet architecture, ViT-S/16 and ViT-S/14 at their real
sizes, LPIPS-VGG). Speed and memory are real, losses are not. Data: real photographs (scikit-image).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_stage1 import write_photos  # noqa: E402  (same photographs as the stage-1 benchmark)


def write_models(model: str, root: Path) -> dict[str, Path]:
    """Random stage-1 model, discriminator backbones and LPIPS trunk on disk."""
    import torchvision
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    from ccsr.models.discriminator import save_tiny_backbones
    from ccsr.models.tiny import build_tiny_components, save_release_layout

    torch.manual_seed(0)
    if model == "tiny":
        comps = build_tiny_components(tokenizer_dir=root / "tok")
        feats, cond = save_tiny_backbones(root / "dino")
        net, trunk = "alex", torchvision.models.alexnet()
    else:
        from ccsr.bench.full_size import build_full_size_pipeline

        p = build_full_size_pipeline(root / "tok")
        comps = (p.unet, p.controlnet, p.vae, p.text_encoder, p.tokenizer, p.scheduler)
        # The configurations of facebook/dino-vits16 and facebook/dinov2-small.
        vit = ViTModel(
            ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
            add_pooling_layer=False,
        )
        dino2 = Dinov2Model(
            Dinov2Config(
                hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518, patch_size=14
            )
        )
        feats, cond = root / "dino-vits16", root / "dinov2-small"
        vit.save_pretrained(feats)
        dino2.save_pretrained(cond)
        net, trunk = "vgg", torchvision.models.vgg16()
    model_dir = save_release_layout(comps, root / "model")
    trunk_file = root / f"{net}-random.pth"
    torch.save({f"features.{k}": v for k, v in trunk.features.state_dict().items()}, trunk_file)
    return {"model": model_dir, "feats": feats, "cond": cond, "net": net, "trunk": trunk_file}


def train_speed(args) -> dict:
    from ccsr.config import load_config
    from ccsr.data.datasets import HQImageDataset
    from ccsr.training.loop import train
    from ccsr.training.stage2 import Stage2Step
    from ccsr.training.stage2_config import Stage2Config

    root = Path(tempfile.mkdtemp())
    paths = write_models(args.model, root)
    m = paths["model"]
    overrides = [
        f"model.pretrained={m}",
        f"model.controlnet={m}/controlnet",
        f"model.vae={m}/vae",
        f"data.train=[{write_photos(root / 'photos', args.resolution)}]",
        f"data.resolution={args.resolution}",
        f"train.output_dir={root / 'out'}",
        f"train.max_train_steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        "train.gradient_accumulation_steps=1",
        f"train.mixed_precision={args.mixed_precision}",
        f"train.gradient_checkpointing={args.gradient_checkpointing}",
        "train.checkpointing_steps=1000000",
        "train.log_with=none",
        f"train.cpu={args.device == 'cpu'}",
        f"discriminator.feature_network={paths['feats']}",
        f"discriminator.condition_network={paths['cond']}",
        f"lpips.net={paths['net']}",
        f"lpips.backbone_weights={paths['trunk']}",
        "objective.begin_disc=0",
    ]
    if args.model == "tiny":
        overrides.append("discriminator.cmap_dim=4")
    config = Path(__file__).resolve().parents[1] / "configs" / "train" / "stage2.yaml"
    cfg = load_config(Stage2Config, config, overrides)
    step = Stage2Step(cfg)
    data = HQImageDataset(cfg.data.train, cfg.data.resolution)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    train(step, data, cfg.train, cfg.optimizer, num_workers=args.num_workers)
    lines = (root / "out" / "logs" / "metrics.jsonl").read_text().splitlines()
    times = [json.loads(line)["time/step_s"] for line in lines]
    timed = times[2:-1] or times
    groups = step.optimizer_groups()
    out = {
        "model": args.model,
        "trainable_params_M": {k: sum(p.numel() for p in v) / 1e6 for k, v in groups.items()},
        "step_s_median": statistics.median(timed),
        "step_s_all": [round(t, 3) for t in times],
        "images_per_s": args.batch_size / statistics.median(timed),
    }
    if args.device.startswith("cuda"):
        out["peak_gpu_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()
    info = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    info["args"] = vars(args)
    print(json.dumps({**info, **train_speed(args)}, indent=1))


if __name__ == "__main__":
    main()
