"""The text form of a ``ccsr bench`` result (the JSON form is the dict itself)."""

from __future__ import annotations


def _ms(s: float) -> str:
    return f"{s * 1e3:9.1f}"


def render(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    params = ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in result["model"]["parameters"].items())
    where = m.get("gpu") or f"{m['cpu']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads"
    opts = [o for o in ("compile", "channels_last") if s[o]] + (
        [f"sdpa {s['sdpa']}"] if s["sdpa"] != "auto" else []
    )
    if s["compile_mode"]:
        opts.append(f"mode {s['compile_mode']}")
    peak = result["peak_memory"]
    lines = [
        f"model {s['model']} ({params}); {m['device']} {s['precision']} {' '.join(opts)}".rstrip(),
        f"machine: {where}; torch {m['torch']}; load average {m.get('load_average', '?')}",
        f"model load {result['load_s']:.2f} s; peak memory {peak['gib']:.2f} GiB ({peak['kind']})",
    ]
    for run in result["runs"]:
        lines += _render_run(run, s)
    return "\n".join(lines)


def _render_run(run: dict, s: dict) -> list[str]:
    pi, call = run["per_image_s"], run["call_s"]
    head = (
        f"\n{run['input'][0]}x{run['input'][1]} -> {run['output'][0]}x{run['output'][1]}, steps {run['steps']} "
        f"(timesteps {tuple(run['timesteps'])}{', tiled' if run['tiled'] else ''}), "
        f"{s['repeats']} repeats after {s['warmup']} warm-up"
    )
    lines = [
        head,
        f"per image {pi['median'] * 1e3:.1f} ms median (min {pi['min'] * 1e3:.1f}, max {pi['max'] * 1e3:.1f}); "
        f"pipeline call {call['median'] * 1e3:.1f} ms, PNG encode included in per image",
        f"  {'stage':12s} {'median ms':>9s} {'min ms':>9s} {'max ms':>9s} {'calls':>5s} {'share':>6s}",
    ]
    total = sum(v["median"] for v in run["stages"].values()) or 1.0
    for name, v in run["stages"].items():
        share = f"{v['median'] / total:6.1%}"
        lines.append(
            f"  {name:12s} {_ms(v['median'])} {_ms(v['min'])} {_ms(v['max'])} {v['calls']:5d} {share}"
        )
    if run.get("prompt_first_call_s") is not None:
        lines.append(
            f"  (prompt: cached after the run's first call, which took {run['prompt_first_call_s'] * 1e3:.1f} ms)"
        )
    if "flops" in run:
        tf = run["tflops_per_s"]
        per = ", ".join(f"{k} {v / 1e12:.3g}" for k, v in run["flops"]["per_stage"].items() if v)
        lines.append(
            f"FLOPs per image {run['flops']['networks_per_image'] / 1e12:.3g} TFLOP ({per}); achieved "
            f"{tf['networks'] or 0:.3g} TFLOP/s in the networks, {tf['per_image']:.3g} over the whole image"
        )
    if "folder" in run:
        f = run["folder"]
        lines.append(
            f"folder of {f['images']} images, bare loop (read, call, PNG save): {f['images_per_s']:.3f} img/s "
            f"(steady {f['steady_images_per_s']:.3f})"
        )
    if "upscale" in run:
        u = run["upscale"]
        if "error" in u:
            lines.append(f"ccsr upscale failed (exit {u['rc']}): {u['error']}")
        else:
            ratio = u.get("ratio_to_bare_loop")
            lines.append(
                f"ccsr upscale, same images: {u['images_per_s']:.3f} img/s (steady {u['steady_images_per_s'] or 0:.3f}"
                + (f", x{ratio:.2f} the bare loop" if ratio else "")
                + f"); process start {u['process_start_s']:.2f} s and model load {u['model_load_s']:.2f} s apart"
            )
            lines.append(f"  {u['command']}")
    if run.get("note"):
        lines.append(f"note: {run['note']}")
    lines.append(f"verdict: {run['verdict']}")
    return lines
