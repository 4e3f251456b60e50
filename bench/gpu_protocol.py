"""The paper's GPU figures, for users with real weights and a GPU (CI has neither).

1. Table 2 protocol for video editing: for each line of a JSONL file
   ``{"video": path, "source_prompt": ..., "target_prompt": ..., "blend_words": ..., "adapter": optional path}``
   edit the video with ContextDiffVideoEdit (20 DDIM steps, fuse_start 0.5) and report CLIP-text (edited
   frames vs target prompt) and CLIP-temp (consecutive and all pairs), with and without the adapter.
2. Seconds per image for text-to-image with ContextDiffKSampler, adapter on and off, side by side.

    python -m bench.gpu_protocol --checkpoint sd-v1-4.safetensors --clip-weights ViT-B-32.bin \\
        --edits edits.jsonl [--adapter my-adapter.safetensors] [--size 512] [--frames 8]

Results go to stdout and docs/bench/gpu_protocol.json. Nothing is downloaded: every weight is a path.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time
from pathlib import Path

import torch

from bench.report import load_after, quiet_machine
from devkit import ROOT, import_pack


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a ComfyUI checkpoint (the paper: Stable Diffusion v1.4)")
    ap.add_argument("--clip-weights", required=True, help="open_clip ViT-B-32 weights file (local)")
    ap.add_argument("--edits", help="JSONL of video edits (see above)")
    ap.add_argument("--adapter", default="", help="adapter for the text-to-image timing")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    out = ROOT / "docs" / "bench" / "gpu_protocol.json"
    loads = quiet_machine(out)

    pack = import_pack()
    import comfy.cli_args

    comfy.cli_args.args.cpu = not torch.cuda.is_available()
    import comfy.sd

    samplers = importlib.import_module(pack.__name__ + ".nodes.samplers")
    video_edit = importlib.import_module(pack.__name__ + ".nodes.video_edit")
    types_ = importlib.import_module(pack.__name__ + ".nodes.types")
    from analysis.clip_metrics import clip_temporal_scores, clip_text_score, image_embeddings, load_clip, text_embedding
    from contextdiff.adapter_io import load_adapter
    from media.video import read_video

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(args.checkpoint, output_vae=True, output_clip=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clip_model, tokenizer = load_clip("ViT-B-32", args.clip_weights, device)
    results = {
        "checkpoint": Path(args.checkpoint).name,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "edits": [],
        "text_to_image": {},
    }

    def adapter_of(path):
        if not path:
            return None
        module, meta = load_adapter(path)
        return types_.LoadedAdapter(module, meta, Path(path).name)

    for line in Path(args.edits).read_text().splitlines() if args.edits else []:
        job = json.loads(line)
        row = {"video": job["video"], "target_prompt": job["target_prompt"]}
        for label, adapter in (("contextdiff", adapter_of(job.get("adapter", ""))), ("no_adapter", None)):
            frames, _ = read_video(job["video"], max_frames=args.frames, stride=2, size=args.size)
            out = video_edit.ContextDiffVideoEdit.execute(
                model,
                vae,
                clip,
                job["source_prompt"],
                job["target_prompt"],
                job.get("blend_words", ""),
                20,
                7.5,
                0.5,
                0.3,
                args.frames,
                1,
                args.size,
                args.frames,
                0,
                0.0,
                False,
                "gpu_protocol",
                1.0,
                images=frames,
                adapter=adapter,
            ).args[0]
            emb = image_embeddings(clip_model, out)
            row[label] = {
                "clip_text": clip_text_score(emb, text_embedding(clip_model, tokenizer, job["target_prompt"])),
                **{f"clip_temp_{k}": v for k, v in clip_temporal_scores(emb).items()},
            }
        results["edits"].append(row)
        print(json.dumps(row))

    pos = [[*clip.encode_from_tokens(clip.tokenize("a photograph of an astronaut riding a horse"), return_pooled=True)]]
    pos = [[pos[0][0], {"pooled_output": pos[0][1]}]]
    neg = [[clip.encode_from_tokens(clip.tokenize("")), {}]]
    latent = {"samples": torch.zeros(1, 4, args.size // 8, args.size // 8)}
    adapter = adapter_of(args.adapter)
    times = {"contextdiff": [], "base": []}
    for i in range(args.repeats + 1):
        for label, ad in (("contextdiff", adapter), ("base", None)):
            t = time.perf_counter()
            samplers.ContextDiffKSampler.execute(
                model, pos, neg, latent, i, 50, 7.5, "normal", "ddim", 0.0, 1.0, 1.0, adapter=ad
            )
            if device == "cuda":
                torch.cuda.synchronize()
            if i:  # the first round warms up
                times[label].append(time.perf_counter() - t)
    results["text_to_image"] = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps(results["text_to_image"]))
    results.update(load_after(loads))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
