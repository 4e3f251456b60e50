"""Writes workflows/*.json (ComfyUI's UI format, for drag-and-drop) from the compact graphs below.

Widget order, defaults and output types come from a live host's /object_info, so the files match
what the frontend itself would save. Run after changing a node's inputs:

    .venv/bin/python -m scripts.make_workflows
"""

from __future__ import annotations

import json

from devkit.comfy_host import ROOT, fresh_object_info, is_widget, node_inputs

OUT = ROOT / "workflows"


def N(id, type, pos, widgets=None, links=None, title=None, mode=0):
    """A node; ``mode`` 4 is bypassed (Ctrl+B in the frontend: purple, its outputs pass its inputs through)."""
    return {
        "id": id,
        "type": type,
        "pos": pos,
        "widgets": widgets or {},
        "links": links or {},
        "title": title,
        "mode": mode,
    }


def note(id, pos, text, size=(420, 260)):
    return {"id": id, "type": "Note", "pos": pos, "text": text, "size": list(size)}


# The shapes model's editing settings, chosen on validation edits by `python -m bench quality` (docs/quality.md);
# the nodes' defaults stay the paper's (fuse_start 0.5) and Prompt-to-Prompt's (threshold 0.3) for SD models.
SHAPES_FUSE_START = 0.9
SHAPES_BLEND_THRESHOLD = 0.5

WORKFLOWS = {
    "digits_contextdiff": [
        note(
            1,
            [0, 0],
            "ContextDiff demo: class-conditional digits.\n\n1. Train: python -m trainer.train --config "
            "trainer/configs/digits_joint.yaml (or run bash scripts/run.sh, which does it all).\n2. Copy "
            "runs/digits/digits-contextdiff.safetensors into ComfyUI/models/contextdiff/ and pick it in the loader.\n"
            "3. Queue. Left: the trained adapter's bias on (strength 1). Right: the same model with the bias off "
            "(strength 0). Rows are the classes 0-9.\n\nTip: class tokens are weak at cfg 1; cfg 3-5 brings the "
            "digits out.",
        ),
        N(2, "ContextDiffJointLoader", [450, 0], {"ckpt_name": "digits-contextdiff.safetensors"}),
        N(
            3,
            "ContextDiffClassConditioning",
            [800, 0],
            {"labels": "0-9", "repeat": 6},
            {"classes": (2, 2)},
            title="positive: classes 0-9",
        ),
        N(
            4,
            "ContextDiffClassConditioning",
            [800, 200],
            {"labels": "-1", "repeat": 60},
            {"classes": (2, 2)},
            title="negative: null class",
        ),
        N(5, "EmptyLatentImage", [800, 400], {"width": 64, "height": 64, "batch_size": 60}),
        N(
            6,
            "ContextDiffKSampler",
            [1150, 0],
            {"seed": 0, "steps": 30, "cfg": 4.0, "scheduler": "simple", "method": "ddim", "adapter_strength": 1.0},
            {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0), "adapter": (2, 1)},
            title="ContextDiff (bias on)",
        ),
        N(
            7,
            "ContextDiffKSampler",
            [1150, 450],
            {"seed": 0, "steps": 30, "cfg": 4.0, "scheduler": "simple", "method": "ddim", "adapter_strength": 0.0},
            {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0), "adapter": (2, 1)},
            title="same model, bias off",
        ),
        N(8, "ContextDiffPixelsToImage", [1500, 0], {"scale": 8, "grid_columns": 6}, {"samples": (6, 0)}),
        N(9, "ContextDiffPixelsToImage", [1500, 450], {"scale": 8, "grid_columns": 6}, {"samples": (7, 0)}),
        N(10, "SaveImage", [1800, 0], {"filename_prefix": "contextdiff/digits_bias_on"}, {"images": (8, 0)}),
        N(11, "SaveImage", [1800, 450], {"filename_prefix": "contextdiff/digits_bias_off"}, {"images": (9, 0)}),
    ],
    "text_to_image": [
        note(
            1,
            [0, 0],
            "ContextDiff text-to-image.\n\nSet: your SD1.x/SD2.x/SDXL checkpoint, and an adapter "
            "trained for it (models/contextdiff/, from python -m trainer.train --mode adapter). The adapter's "
            "context dim must match the model (768 SD1.x, 1024 SD2.x, 2048 SDXL): a mismatch stops with a clear "
            "message.\n\nadapter_strength scales the context bias; 0 is exactly the base DDIM sampler. "
            "method ddpm gives ancestral sampling with the contextualized posterior.",
        ),
        N(2, "CheckpointLoaderSimple", [450, 0], {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}),
        N(
            3,
            "CLIPTextEncode",
            [800, 0],
            {"text": "a photograph of an astronaut riding a horse"},
            {"clip": (2, 1)},
            title="positive",
        ),
        N(4, "CLIPTextEncode", [800, 250], {"text": "blurry, low quality"}, {"clip": (2, 1)}, title="negative"),
        N(5, "EmptyLatentImage", [800, 500], {"width": 512, "height": 512, "batch_size": 1}),
        N(6, "ContextDiffAdapterLoader", [800, 700], {"adapter_name": "my-adapter.safetensors"}),
        N(
            7,
            "ContextDiffKSampler",
            [1150, 0],
            {"seed": 0, "steps": 30, "cfg": 7.5, "scheduler": "normal", "method": "ddim", "adapter_strength": 1.0},
            {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0), "adapter": (6, 0)},
        ),
        N(8, "VAEDecode", [1500, 0], {}, {"samples": (7, 0), "vae": (2, 2)}),
        N(9, "SaveImage", [1750, 0], {"filename_prefix": "contextdiff/t2i"}, {"images": (8, 0)}),
    ],
    "sampler_custom": [
        note(
            1,
            [0, 0],
            "ContextDiff as a SAMPLER for the core SamplerCustom: any scheduler node gives the sigmas "
            "(the equations are exact for skipped-step schedules), any guider works. The bias uses the guider's "
            "positive conditioning.\n\nSet the checkpoint and the adapter.",
        ),
        N(2, "CheckpointLoaderSimple", [450, 0], {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}),
        N(
            3,
            "CLIPTextEncode",
            [800, 0],
            {"text": "a red fox in the snow, detailed fur"},
            {"clip": (2, 1)},
            title="positive",
        ),
        N(4, "CLIPTextEncode", [800, 250], {"text": "blurry"}, {"clip": (2, 1)}, title="negative"),
        N(5, "EmptyLatentImage", [800, 500], {"width": 512, "height": 512, "batch_size": 1}),
        N(6, "ContextDiffAdapterLoader", [800, 700], {"adapter_name": "my-adapter.safetensors"}),
        N(
            7,
            "ContextDiffSampler",
            [1150, 600],
            {"method": "ddim", "eta": 0.0, "adapter_strength": 1.0},
            {"adapter": (6, 0)},
        ),
        N(8, "BasicScheduler", [1150, 400], {"scheduler": "karras", "steps": 25, "denoise": 1.0}, {"model": (2, 0)}),
        N(
            9,
            "SamplerCustom",
            [1500, 0],
            {"add_noise": True, "noise_seed": 0, "cfg": 7.0},
            {
                "model": (2, 0),
                "positive": (3, 0),
                "negative": (4, 0),
                "sampler": (7, 0),
                "sigmas": (8, 0),
                "latent_image": (5, 0),
            },
        ),
        N(10, "VAEDecode", [1850, 0], {}, {"samples": (9, 0), "vae": (2, 2)}),
        N(11, "SaveImage", [2100, 0], {"filename_prefix": "contextdiff/sampler_custom"}, {"images": (10, 0)}),
    ],
    "image_edit": [
        note(
            1,
            [0, 0],
            "Invert an image, then edit it with a new prompt (paper §4.2, FateZero-style fusion).\n\n"
            "Set: the checkpoint, the image, the source prompt (what the image shows) and the target prompt, the "
            "same text in the CLIP encoders and in the edit sampler's prompt fields (they align shared words).\n"
            "blend_words: the words being replaced (e.g. 'cat, dog'); their attention masks the edit, the rest "
            "stays on the source trajectory.\n\nInversion cfg stays 1.0: guidance makes DDIM inversion drift. "
            "Set fuse_attention off with equal prompts to check the reconstruction.",
        ),
        N(2, "CheckpointLoaderSimple", [450, 0], {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}),
        N(3, "LoadImage", [450, 250], {"image": "example.png"}),
        N(4, "VAEEncode", [800, 250], {}, {"pixels": (3, 0), "vae": (2, 2)}),
        N(5, "CLIPTextEncode", [800, 0], {"text": "a cat sitting on the grass"}, {"clip": (2, 1)}, title="source"),
        N(6, "CLIPTextEncode", [800, 450], {"text": "a dog sitting on the grass"}, {"clip": (2, 1)}, title="target"),
        N(7, "CLIPTextEncode", [800, 700], {"text": ""}, {"clip": (2, 1)}, title="negative"),
        N(
            8,
            "ContextDiffDDIMInversion",
            [1150, 0],
            {"steps": 20, "scheduler": "ddim_uniform", "cfg": 1.0},
            {"model": (2, 0), "latent": (4, 0), "positive": (5, 0)},
        ),
        N(
            9,
            "ContextDiffEditSampler",
            [1500, 0],
            {
                "cfg": 7.5,
                "source_prompt": "a cat sitting on the grass",
                "target_prompt": "a dog sitting on the grass",
                "blend_words": "cat, dog",
                "blend_threshold": 0.3,
            },
            {
                "model": (2, 0),
                "edit_source": (8, 1),
                "positive": (6, 0),
                "negative": (7, 0),
                "clip": (2, 1),
                "vae": (2, 2),
            },
        ),
        N(10, "VAEDecode", [1850, 0], {}, {"samples": (9, 0), "vae": (2, 2)}),
        N(11, "SaveImage", [2100, 0], {"filename_prefix": "contextdiff/edit"}, {"images": (10, 0)}),
        N(12, "MaskToImage", [1850, 300], {}, {"mask": (9, 1)}),
        N(13, "PreviewImage", [2100, 300], {}, {"images": (12, 0)}),
    ],
    "video_edit": [
        note(
            1,
            [0, 0],
            "Text-guided video editing (paper §4.2).\n\nSet: the checkpoint; a video file in ComfyUI's "
            "input folder (or connect frames from VideoHelperSuite's Load Video to 'images'); the prompts; "
            "optionally an adapter tuned on this video with python -m trainer.train --mode video.\n\nMemory: the "
            "node estimates the attention store before it starts and refuses a job that would not fit, saying how "
            "many frames per chunk fit. Long videos run in overlapping chunks.",
        ),
        N(2, "CheckpointLoaderSimple", [450, 0], {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}),
        N(3, "ContextDiffAdapterLoader", [450, 250], {"adapter_name": "my-video-adapter.safetensors"}),
        N(
            4,
            "ContextDiffVideoEdit",
            [800, 0],
            {
                "source_prompt": "a man riding a bike",
                "target_prompt": "a robot riding a bike",
                "blend_words": "man, robot",
                "video": "example.mp4",
                "save_mp4": True,
                "max_frames": 16,
                "size": 512,
            },
            {"model": (2, 0), "vae": (2, 2), "clip": (2, 1), "adapter": (3, 0)},
        ),
        N(5, "PreviewImage", [1200, 0], {}, {"images": (4, 0)}),
    ],
    "sdxl_text_to_image": [
        note(
            1,
            [0, 0],
            "ContextDiff text-to-image on SDXL (and SSD-1B, Vega, KOALA: any SDXL-family checkpoint).\n\n"
            "Set: your SDXL checkpoint and an adapter trained for SDXL (context dim 2048): python -m trainer.train "
            "--mode adapter --checkpoint sd_xl_base_1.0.safetensors ... An SD1.x/SD2.x adapter stops with a clear "
            "message.\n\nCLIPTextEncode gives SDXL's pooled output; the size embeddings follow the latent (1024).\n"
            "v-prediction / zero-terminal-SNR fine-tunes: put ComfyUI's ModelSamplingDiscrete (v_prediction, zsnr) "
            "between the loader and the sampler if the checkpoint does not say so itself.",
        ),
        N(2, "CheckpointLoaderSimple", [450, 0], {"ckpt_name": "sd_xl_base_1.0.safetensors"}),
        N(
            3,
            "CLIPTextEncode",
            [800, 0],
            {"text": "a photograph of an astronaut riding a horse"},
            {"clip": (2, 1)},
            title="positive",
        ),
        N(4, "CLIPTextEncode", [800, 250], {"text": "blurry, low quality"}, {"clip": (2, 1)}, title="negative"),
        N(5, "EmptyLatentImage", [800, 500], {"width": 1024, "height": 1024, "batch_size": 1}),
        N(6, "ContextDiffAdapterLoader", [800, 700], {"adapter_name": "my-sdxl-adapter.safetensors"}),
        N(
            7,
            "ContextDiffKSampler",
            [1150, 0],
            {"seed": 0, "steps": 30, "cfg": 7.0, "scheduler": "normal", "method": "ddim", "adapter_strength": 1.0},
            {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0), "adapter": (6, 0)},
        ),
        N(8, "VAEDecode", [1500, 0], {}, {"samples": (7, 0), "vae": (2, 2)}),
        N(9, "SaveImage", [1750, 0], {"filename_prefix": "contextdiff/sdxl_t2i"}, {"images": (8, 0)}),
    ],
    "sdxl_image_edit": [
        note(
            1,
            [0, 0],
            "Invert an image, then edit it with a new prompt, on SDXL (paper §4.2, FateZero-style fusion "
            "over SDXL's 70 attention blocks).\n\nSet: the SDXL checkpoint, the image (1024 px is SDXL's size; the "
            "attention store of 20 steps needs about 6 GiB of CPU memory there), the source and target prompts, "
            "typed in the CLIP encoders and in the edit sampler's fields.\nblend_words: the replaced words (e.g. "
            "'cat, dog'), found in the tokens of either SDXL text encoder.\nInversion cfg stays 1.0.",
        ),
        N(2, "CheckpointLoaderSimple", [450, 0], {"ckpt_name": "sd_xl_base_1.0.safetensors"}),
        N(3, "LoadImage", [450, 250], {"image": "example.png"}),
        N(4, "VAEEncode", [800, 250], {}, {"pixels": (3, 0), "vae": (2, 2)}),
        N(5, "CLIPTextEncode", [800, 0], {"text": "a cat sitting on the grass"}, {"clip": (2, 1)}, title="source"),
        N(6, "CLIPTextEncode", [800, 450], {"text": "a dog sitting on the grass"}, {"clip": (2, 1)}, title="target"),
        N(7, "CLIPTextEncode", [800, 700], {"text": ""}, {"clip": (2, 1)}, title="negative"),
        N(
            8,
            "ContextDiffDDIMInversion",
            [1150, 0],
            {"steps": 20, "scheduler": "ddim_uniform", "cfg": 1.0},
            {"model": (2, 0), "latent": (4, 0), "positive": (5, 0)},
        ),
        N(
            9,
            "ContextDiffEditSampler",
            [1500, 0],
            {
                "cfg": 7.0,
                "source_prompt": "a cat sitting on the grass",
                "target_prompt": "a dog sitting on the grass",
                "blend_words": "cat, dog",
                "blend_threshold": 0.3,
            },
            {
                "model": (2, 0),
                "edit_source": (8, 1),
                "positive": (6, 0),
                "negative": (7, 0),
                "clip": (2, 1),
                "vae": (2, 2),
            },
        ),
        N(10, "VAEDecode", [1850, 0], {}, {"samples": (9, 0), "vae": (2, 2)}),
        N(11, "SaveImage", [2100, 0], {"filename_prefix": "contextdiff/sdxl_edit"}, {"images": (10, 0)}),
        N(12, "MaskToImage", [1850, 300], {}, {"mask": (9, 1)}),
        N(13, "PreviewImage", [2100, 300], {}, {"images": (12, 0)}),
    ],
    "shapes_text_to_image": [
        note(
            1,
            [0, 0],
            "ContextDiff text-to-image on the shapes world: a 32x32 model trained from scratch on the CPU "
            "with its adapter and a CLIP text encoder (bash scripts/run.sh trains it, or python -m trainer.train "
            "--config trainer/configs/shapes.yaml; copy runs/shapes/shapes-contextdiff.safetensors into "
            "ComfyUI/models/contextdiff/).\n\nWrite captions in the world's grammar: 'a small red circle on the "
            "left and a large blue square at the top' (colours red green blue yellow magenta cyan; shapes circle "
            "square triangle cross; sizes small large; on the left / on the right / at the top / at the bottom / "
            "in the centre). Other words still encode (CLIP's BPE), the model just never saw them.\n\nLeft: "
            "the adapter's bias on. Right: the same model, bias off (strength 0).",
        ),
        N(2, "ContextDiffShapesLoader", [450, 0], {"ckpt_name": "shapes-contextdiff.safetensors"}),
        N(
            3,
            "CLIPTextEncode",
            [800, 0],
            {"text": "a large red circle in the centre"},
            {"clip": (2, 1)},
            title="positive",
        ),
        N(4, "CLIPTextEncode", [800, 250], {"text": ""}, {"clip": (2, 1)}, title="negative (empty caption)"),
        N(
            5,
            "EmptyChromaRadianceLatentImage",
            [800, 450],
            {"width": 32, "height": 32, "batch_size": 8},
            title="empty pixel-space latent",
        ),
        N(
            6,
            "ContextDiffKSampler",
            [1150, 0],
            {"seed": 0, "steps": 20, "cfg": 3.0, "scheduler": "normal", "method": "ddim", "adapter_strength": 1.0},
            {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0), "adapter": (2, 3)},
            title="ContextDiff (bias on)",
        ),
        N(
            7,
            "ContextDiffKSampler",
            [1150, 450],
            {"seed": 0, "steps": 20, "cfg": 3.0, "scheduler": "normal", "method": "ddim", "adapter_strength": 0.0},
            {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0), "adapter": (2, 3)},
            title="same model, bias off",
        ),
        N(8, "VAEDecode", [1500, 0], {}, {"samples": (6, 0), "vae": (2, 2)}),
        N(9, "VAEDecode", [1500, 450], {}, {"samples": (7, 0), "vae": (2, 2)}),
        N(10, "ImageScaleBy", [1750, 0], {"upscale_method": "nearest-exact", "scale_by": 4.0}, {"image": (8, 0)}),
        N(11, "ImageScaleBy", [1750, 450], {"upscale_method": "nearest-exact", "scale_by": 4.0}, {"image": (9, 0)}),
        N(12, "SaveImage", [2050, 0], {"filename_prefix": "contextdiff/shapes_bias_on"}, {"images": (10, 0)}),
        N(13, "SaveImage", [2050, 450], {"filename_prefix": "contextdiff/shapes_bias_off"}, {"images": (11, 0)}),
    ],
    "shapes_image_edit": [
        note(
            1,
            [0, 0],
            "Text-guided image editing on the shapes world: invert a rendered scene with its caption, "
            "then sample with an edited caption while fusing the source attention (paper §4.2). Two edits of one "
            "inversion: a colour (red -> green) and a shape (circle -> square).\n\nSet the checkpoint (see "
            "shapes_text_to_image) and put shapes_source.png in ComfyUI's input folder (scripts/demo.py writes it "
            "with devkit/shapes_inputs.py). The prompts are typed twice: in the CLIP encoders and in the edit "
            "sampler's fields, which align the shared words; blend_words name the replaced ones.\n\nfuse_start 0.9 and "
            "blend_threshold 0.5 were chosen for this model on validation edits (docs/quality.md); the nodes' "
            "defaults (0.5, 0.3) are the paper's and Prompt-to-Prompt's, for SD checkpoints.",
        ),
        N(2, "ContextDiffShapesLoader", [450, 0], {"ckpt_name": "shapes-contextdiff.safetensors"}),
        N(3, "LoadImage", [450, 300], {"image": "shapes_source.png"}),
        N(4, "VAEEncode", [800, 300], {}, {"pixels": (3, 0), "vae": (2, 2)}),
        N(
            5,
            "CLIPTextEncode",
            [800, 0],
            {"text": "a large red circle in the centre"},
            {"clip": (2, 1)},
            title="source",
        ),
        N(
            6,
            "CLIPTextEncode",
            [800, 500],
            {"text": "a large green circle in the centre"},
            {"clip": (2, 1)},
            title="target: colour",
        ),
        N(
            7,
            "CLIPTextEncode",
            [800, 700],
            {"text": "a large red square in the centre"},
            {"clip": (2, 1)},
            title="target: shape",
        ),
        N(8, "CLIPTextEncode", [800, 900], {"text": ""}, {"clip": (2, 1)}, title="negative"),
        N(
            9,
            "ContextDiffDDIMInversion",
            [1150, 0],
            {"steps": 20, "scheduler": "ddim_uniform", "cfg": 1.0, "fuse_start": SHAPES_FUSE_START},
            {"model": (2, 0), "latent": (4, 0), "positive": (5, 0), "adapter": (2, 3)},
        ),
        N(
            10,
            "ContextDiffEditSampler",
            [1500, 0],
            {
                "cfg": 3.0,
                "source_prompt": "a large red circle in the centre",
                "target_prompt": "a large green circle in the centre",
                "blend_words": "red, green",
                "blend_threshold": SHAPES_BLEND_THRESHOLD,
            },
            {
                "model": (2, 0),
                "edit_source": (9, 1),
                "positive": (6, 0),
                "negative": (8, 0),
                "clip": (2, 1),
                "vae": (2, 2),
                "adapter": (2, 3),
            },
            title="edit: red -> green",
        ),
        N(
            11,
            "ContextDiffEditSampler",
            [1500, 500],
            {
                "cfg": 3.0,
                "source_prompt": "a large red circle in the centre",
                "target_prompt": "a large red square in the centre",
                "blend_words": "circle, square",
                "blend_threshold": SHAPES_BLEND_THRESHOLD,
            },
            {
                "model": (2, 0),
                "edit_source": (9, 1),
                "positive": (7, 0),
                "negative": (8, 0),
                "clip": (2, 1),
                "vae": (2, 2),
                "adapter": (2, 3),
            },
            title="edit: circle -> square",
        ),
        N(12, "VAEDecode", [1850, 0], {}, {"samples": (10, 0), "vae": (2, 2)}),
        N(13, "VAEDecode", [1850, 500], {}, {"samples": (11, 0), "vae": (2, 2)}),
        N(14, "ImageBatch", [2100, 250], {}, {"image1": (12, 0), "image2": (13, 0)}),
        N(15, "ImageBatch", [2100, 450], {}, {"image1": (3, 0), "image2": (14, 0)}, title="source, colour, shape"),
        N(16, "ImageScaleBy", [2350, 450], {"upscale_method": "nearest-exact", "scale_by": 4.0}, {"image": (15, 0)}),
        N(17, "SaveImage", [2600, 450], {"filename_prefix": "contextdiff/shapes_edit"}, {"images": (16, 0)}),
    ],
    "shapes_video_edit": [
        note(
            1,
            [0, 0],
            "Text-guided video editing on the shapes world: an 8-frame clip of a moving red circle "
            "(shapes_clip.png, an animated PNG that the core Load Image node reads as a batch of frames) edited to "
            "a blue one with sparse-causal attention (paper §4.2). The model's VAE is ComfyUI's pixel-space VAE, "
            "so frames are the model's pixels.\n\nSet the checkpoint (see shapes_text_to_image) and put "
            "shapes_clip.png in ComfyUI's input folder (scripts/demo.py writes it).",
        ),
        N(2, "ContextDiffShapesLoader", [450, 0], {"ckpt_name": "shapes-contextdiff.safetensors"}),
        N(3, "LoadImage", [450, 300], {"image": "shapes_clip.png"}, title="clip (animated PNG)"),
        N(
            4,
            "ContextDiffVideoEdit",
            [800, 0],
            {
                "source_prompt": "a large red circle moving to the right",
                "target_prompt": "a large blue circle moving to the right",
                "blend_words": "red, blue",
                "cfg": 3.0,
                "fuse_start": SHAPES_FUSE_START,
                "blend_threshold": SHAPES_BLEND_THRESHOLD,
                "max_frames": 8,
                "chunk_size": 8,
            },
            {"model": (2, 0), "vae": (2, 2), "clip": (2, 1), "images": (3, 0), "adapter": (2, 3)},
        ),
        N(5, "ImageBatch", [1200, 0], {}, {"image1": (3, 0), "image2": (4, 0)}, title="source frames, edited frames"),
        N(6, "ImageScaleBy", [1450, 0], {"upscale_method": "nearest-exact", "scale_by": 4.0}, {"image": (5, 0)}),
        N(7, "SaveImage", [1700, 0], {"filename_prefix": "contextdiff/shapes_video_edit"}, {"images": (6, 0)}),
    ],
}


def flow_adapter_loader(id, pos, family: str, adapter: str):
    """The adapter loader of a flow workflow, bypassed: without an adapter the ContextDiff KSampler is exactly
    ComfyUI's euler (strength 0 or no adapter is the base sampler)."""
    return N(
        id,
        "ContextDiffAdapterLoader",
        pos,
        {"adapter_name": adapter},
        title=f"adapter for {family} (bypassed: Ctrl+B to use one)",
        mode=4,
    )


FLOW_ADAPTER_NOTE = (
    "The adapter loader is bypassed (purple): with no adapter the ContextDiff KSampler (method ddim, eta 0) is "
    "exactly ComfyUI's euler sampler, so the workflow runs as it is. With an adapter trained for {family} in "
    "models/contextdiff/ (python -m trainer.train --mode adapter trains one on your model: README, the trainer), "
    "pick it in the loader and press Ctrl+B on it: adapter_strength scales the context bias. "
    "An adapter of another family stops with a message naming both. ddpm and eta > 0 are refused on flow models "
    "(the DDPM posterior has no flow counterpart)."
)

WORKFLOWS["sd3_text_to_image"] = [
    note(
        1,
        [0, 0],
        "ContextDiff text-to-image on SD3.5 (and SD3), a flow-matching model.\n\nFiles:\n"
        "- models/checkpoints/sd3.5_large.safetensors (or sd3.5_medium, sd3_medium): the MMDiT and its VAE\n"
        "- models/text_encoders/clip_l.safetensors, clip_g.safetensors, t5xxl_fp16.safetensors "
        "(or t5xxl_fp8_e4m3fn.safetensors), read by the Triple CLIP Loader\n\n"
        "ModelSamplingSD3 sets SD3's shift 3 (the checkpoint's own). SD3.5's usual settings: 28 steps, "
        "cfg 4.5, sgm_uniform.\n\n" + FLOW_ADAPTER_NOTE.format(family="SD3/SD3.5"),
        size=(440, 380),
    ),
    N(2, "CheckpointLoaderSimple", [480, 0], {"ckpt_name": "sd3.5_large.safetensors"}),
    N(
        3,
        "TripleCLIPLoader",
        [480, 200],
        {
            "clip_name1": "clip_l.safetensors",
            "clip_name2": "clip_g.safetensors",
            "clip_name3": "t5xxl_fp16.safetensors",
        },
    ),
    N(4, "ModelSamplingSD3", [830, -150], {"shift": 3.0}, {"model": (2, 0)}),
    N(
        5,
        "CLIPTextEncode",
        [830, 0],
        {"text": "a photograph of an astronaut riding a horse"},
        {"clip": (3, 0)},
        title="positive",
    ),
    N(6, "CLIPTextEncode", [830, 250], {"text": "blurry, low quality"}, {"clip": (3, 0)}, title="negative"),
    N(7, "EmptySD3LatentImage", [830, 500], {"width": 1024, "height": 1024, "batch_size": 1}),
    flow_adapter_loader(8, [830, 700], "SD3/SD3.5", "my-sd3-adapter.safetensors"),
    N(
        9,
        "ContextDiffKSampler",
        [1180, 0],
        {"seed": 0, "steps": 28, "cfg": 4.5, "scheduler": "sgm_uniform", "method": "ddim", "adapter_strength": 1.0},
        {"model": (4, 0), "positive": (5, 0), "negative": (6, 0), "latent_image": (7, 0), "adapter": (8, 0)},
    ),
    N(10, "VAEDecode", [1530, 0], {}, {"samples": (9, 0), "vae": (2, 2)}),
    N(11, "SaveImage", [1780, 0], {"filename_prefix": "contextdiff/sd3_t2i"}, {"images": (10, 0)}),
]

WORKFLOWS["flux_text_to_image"] = [
    note(
        1,
        [0, 0],
        "ContextDiff text-to-image on Flux dev (or schnell), a flow-matching model.\n\nFiles:\n"
        "- models/diffusion_models/flux1-dev.safetensors (or flux1-schnell.safetensors), read by Load Diffusion "
        "Model\n- models/text_encoders/clip_l.safetensors and t5xxl_fp16.safetensors (or t5xxl_fp8_e4m3fn), read "
        "by the Dual CLIP Loader (type flux)\n- models/vae/ae.safetensors\n\n"
        "Flux dev is guidance-distilled: FluxGuidance sets its guidance (3.5) and cfg stays 1.0 (the negative is "
        "then not used). ModelSamplingFlux shifts the schedule for the image size (keep its width and height "
        "equal to the latent's). Schnell: 4 steps, FluxGuidance has no effect.\n\n"
        + FLOW_ADAPTER_NOTE.format(family="Flux"),
        size=(440, 420),
    ),
    N(2, "UNETLoader", [480, 0], {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}),
    N(
        3,
        "DualCLIPLoader",
        [480, 200],
        {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"},
    ),
    N(4, "VAELoader", [480, 450], {"vae_name": "ae.safetensors"}),
    N(
        5,
        "ModelSamplingFlux",
        [830, -250],
        {"max_shift": 1.15, "base_shift": 0.5, "width": 1024, "height": 1024},
        {"model": (2, 0)},
    ),
    N(
        6,
        "CLIPTextEncode",
        [830, 0],
        {"text": "a photograph of an astronaut riding a horse"},
        {"clip": (3, 0)},
        title="positive",
    ),
    N(7, "FluxGuidance", [1180, -150], {"guidance": 3.5}, {"conditioning": (6, 0)}),
    N(8, "CLIPTextEncode", [830, 250], {"text": ""}, {"clip": (3, 0)}, title="negative (unused at cfg 1)"),
    N(9, "EmptySD3LatentImage", [830, 500], {"width": 1024, "height": 1024, "batch_size": 1}),
    flow_adapter_loader(10, [830, 700], "Flux", "my-flux-adapter.safetensors"),
    N(
        11,
        "ContextDiffKSampler",
        [1180, 0],
        {"seed": 0, "steps": 20, "cfg": 1.0, "scheduler": "simple", "method": "ddim", "adapter_strength": 1.0},
        {"model": (5, 0), "positive": (7, 0), "negative": (8, 0), "latent_image": (9, 0), "adapter": (10, 0)},
    ),
    N(12, "VAEDecode", [1530, 0], {}, {"samples": (11, 0), "vae": (4, 0)}),
    N(13, "SaveImage", [1780, 0], {"filename_prefix": "contextdiff/flux_t2i"}, {"images": (12, 0)}),
]

WORKFLOWS["wan_text_to_video"] = [
    note(
        1,
        [0, 0],
        "ContextDiff text-to-video on Wan 2.1 / 2.2 (t2v), a flow-matching video model.\n\nFiles:\n"
        "- models/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors (or the 14B t2v; Wan 2.2's 14B t2v files "
        "load the same way), read by Load Diffusion Model\n"
        "- models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors (or umt5_xxl_fp16), "
        "read by Load CLIP (type wan)\n"
        "- models/vae/wan_2.1_vae.safetensors\n\n"
        "ModelSamplingSD3 shift 8 is Wan's schedule. EmptyHunyuanLatentVideo makes the 16-channel video latent: "
        "length 33 frames at 832x480 (4 frames per latent frame, plus the first). The adapter reads each clip's "
        "frames in order. The frames are saved as an animated WEBP at 16 fps.\n\n"
        + FLOW_ADAPTER_NOTE.format(family="Wan 2.x"),
        size=(440, 420),
    ),
    N(2, "UNETLoader", [480, 0], {"unet_name": "wan2.1_t2v_1.3B_fp16.safetensors", "weight_dtype": "default"}),
    N(3, "CLIPLoader", [480, 200], {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan"}),
    N(4, "VAELoader", [480, 450], {"vae_name": "wan_2.1_vae.safetensors"}),
    N(5, "ModelSamplingSD3", [830, -150], {"shift": 8.0}, {"model": (2, 0)}),
    N(
        6,
        "CLIPTextEncode",
        [830, 0],
        {"text": "a red fox running through fresh snow, the camera following it, golden hour light"},
        {"clip": (3, 0)},
        title="positive",
    ),
    N(
        7,
        "CLIPTextEncode",
        [830, 250],
        {"text": "blurry, low quality, static, distorted, watermark, text"},
        {"clip": (3, 0)},
        title="negative",
    ),
    N(8, "EmptyHunyuanLatentVideo", [830, 500], {"width": 832, "height": 480, "length": 33, "batch_size": 1}),
    flow_adapter_loader(9, [830, 750], "Wan 2.x", "my-wan-adapter.safetensors"),
    N(
        10,
        "ContextDiffKSampler",
        [1180, 0],
        {"seed": 0, "steps": 30, "cfg": 6.0, "scheduler": "simple", "method": "ddim", "adapter_strength": 1.0},
        {"model": (5, 0), "positive": (6, 0), "negative": (7, 0), "latent_image": (8, 0), "adapter": (9, 0)},
    ),
    N(11, "VAEDecode", [1530, 0], {}, {"samples": (10, 0), "vae": (4, 0)}),
    N(
        12,
        "SaveAnimatedWEBP",
        [1780, 0],
        {"filename_prefix": "contextdiff/wan_t2v", "fps": 16.0, "lossless": False, "quality": 90},
        {"images": (11, 0)},
    ),
]


FLOW_EDIT_NOTE = (
    "Inversion runs to sigma 1 (the noise end of a flow schedule) and refine_steps solves each step exactly, so "
    "equal prompts with fuse_attention off give the image back. The Edit Sampler then fuses the source's joint "
    "attention ({blocks}): the image tokens' attention and, for the words both prompts share, their text attention; "
    "blend_words (the replaced words, found in the T5{clip} tokens) mask the edit, the rest stays on the source.\n\n"
    "Memory: the inversion counts the attention store from the model's blocks before its first step and refuses a "
    "job that would not fit, naming how many fused steps fit (10 fused steps at 1024x1024, fp16: {native}); raise "
    "fuse_start or lower the size to fit."
)


def flow_edit_nodes(first: int, x: int, model: tuple, clip: tuple, vae: tuple, conds: dict, settings: dict) -> list:
    """The inversion, the Edit Sampler and their outputs of the SD3 and Flux image-edit workflows (ids from
    ``first``, placed from ``x``): ``conds`` the source, target and negative conditionings' links."""
    inv, edit = first, first + 1
    return [
        N(
            inv,
            "ContextDiffDDIMInversion",
            [x, 0],
            {"steps": settings["steps"], "scheduler": settings["scheduler"], "cfg": 1.0, "refine_steps": 10},
            {"model": model, "latent": conds["latent"], "positive": conds["source"]},
        ),
        N(
            edit,
            "ContextDiffEditSampler",
            [x + 350, 0],
            {
                "cfg": settings["cfg"],
                "source_prompt": "a cat sitting on the grass",
                "target_prompt": "a dog sitting on the grass",
                "blend_words": "cat, dog",
                "blend_threshold": 0.3,
            },
            {
                "model": model,
                "edit_source": (inv, 1),
                "positive": conds["target"],
                "negative": conds["negative"],
                "clip": clip,
                "vae": vae,
            },
        ),
        N(edit + 1, "VAEDecode", [x + 700, 0], {}, {"samples": (edit, 0), "vae": vae}),
        N(edit + 2, "SaveImage", [x + 950, 0], {"filename_prefix": settings["prefix"]}, {"images": (edit + 1, 0)}),
        N(edit + 3, "MaskToImage", [x + 700, 300], {}, {"mask": (edit, 1)}),
        N(edit + 4, "PreviewImage", [x + 950, 300], {}, {"images": (edit + 3, 0)}),
    ]


WORKFLOWS["sd3_image_edit"] = [
    note(
        1,
        [0, 0],
        "Invert an image, then edit it with a new prompt, on SD3.5 (and SD3): FateZero-style fusion on the MMDiT's "
        "joint attention.\n\nFiles:\n"
        "- models/checkpoints/sd3.5_large.safetensors (or sd3.5_medium, sd3_medium): the MMDiT and its VAE\n"
        "- models/text_encoders/clip_l.safetensors, clip_g.safetensors, t5xxl_fp16.safetensors, read by the "
        "Triple CLIP Loader\n- input/example.png: the image\n\n"
        "Type the source and target prompts in the CLIP encoders and in the Edit Sampler's fields (they align the "
        "shared words). "
        + FLOW_EDIT_NOTE.format(
            blocks="SD3's joint blocks", clip=" and CLIP-L/G", native="SD3.5-large 14.4 GiB, SD3-medium 5.7 GiB"
        )
        + " SD3.5-medium's second, image-only attention in its first blocks runs unfused.",
        size=(460, 520),
    ),
    N(2, "CheckpointLoaderSimple", [500, 0], {"ckpt_name": "sd3.5_large.safetensors"}),
    N(
        3,
        "TripleCLIPLoader",
        [500, 200],
        {
            "clip_name1": "clip_l.safetensors",
            "clip_name2": "clip_g.safetensors",
            "clip_name3": "t5xxl_fp16.safetensors",
        },
    ),
    N(4, "ModelSamplingSD3", [850, -150], {"shift": 3.0}, {"model": (2, 0)}),
    N(5, "LoadImage", [500, 450], {"image": "example.png"}),
    N(6, "VAEEncode", [850, 700], {}, {"pixels": (5, 0), "vae": (2, 2)}),
    N(7, "CLIPTextEncode", [850, 0], {"text": "a cat sitting on the grass"}, {"clip": (3, 0)}, title="source"),
    N(8, "CLIPTextEncode", [850, 250], {"text": "a dog sitting on the grass"}, {"clip": (3, 0)}, title="target"),
    N(9, "CLIPTextEncode", [850, 500], {"text": ""}, {"clip": (3, 0)}, title="negative"),
    *flow_edit_nodes(
        10,
        1200,
        (4, 0),
        (3, 0),
        (2, 2),
        {"latent": (6, 0), "source": (7, 0), "target": (8, 0), "negative": (9, 0)},
        {"steps": 28, "scheduler": "simple", "cfg": 4.5, "prefix": "contextdiff/sd3_edit"},
    ),
]

WORKFLOWS["flux_image_edit"] = [
    note(
        1,
        [0, 0],
        "Invert an image, then edit it with a new prompt, on Flux dev: FateZero-style fusion on Flux's joint "
        "attention.\n\nFiles:\n"
        "- models/diffusion_models/flux1-dev.safetensors, read by Load Diffusion Model\n"
        "- models/text_encoders/clip_l.safetensors and t5xxl_fp16.safetensors, read by the Dual CLIP Loader (type "
        "flux)\n- models/vae/ae.safetensors\n- input/example.png: the image\n\n"
        "Flux dev is guidance-distilled: FluxGuidance sets its guidance on both prompts and cfg stays 1.0 (the "
        "negative is then not used). Keep ModelSamplingFlux's width and height at the image's size. Type the "
        "source and target prompts in the CLIP encoders and in the Edit Sampler's fields. "
        + FLOW_EDIT_NOTE.format(blocks="Flux's double and single blocks", clip="", native="Flux.1-dev 27.6 GiB"),
        size=(460, 540),
    ),
    N(2, "UNETLoader", [500, 0], {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}),
    N(
        3,
        "DualCLIPLoader",
        [500, 200],
        {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"},
    ),
    N(4, "VAELoader", [500, 450], {"vae_name": "ae.safetensors"}),
    N(5, "LoadImage", [500, 600], {"image": "example.png"}),
    N(6, "VAEEncode", [850, 750], {}, {"pixels": (5, 0), "vae": (4, 0)}),
    N(
        7,
        "ModelSamplingFlux",
        [850, -300],
        {"max_shift": 1.15, "base_shift": 0.5, "width": 1024, "height": 1024},
        {"model": (2, 0)},
    ),
    N(8, "CLIPTextEncode", [850, -50], {"text": "a cat sitting on the grass"}, {"clip": (3, 0)}, title="source"),
    N(9, "CLIPTextEncode", [850, 200], {"text": "a dog sitting on the grass"}, {"clip": (3, 0)}, title="target"),
    N(10, "CLIPTextEncode", [850, 450], {"text": ""}, {"clip": (3, 0)}, title="negative (unused at cfg 1)"),
    N(11, "FluxGuidance", [1200, -300], {"guidance": 3.5}, {"conditioning": (8, 0)}, title="source guidance"),
    N(12, "FluxGuidance", [1200, -150], {"guidance": 3.5}, {"conditioning": (9, 0)}, title="target guidance"),
    *flow_edit_nodes(
        13,
        1200,
        (7, 0),
        (3, 0),
        (4, 0),
        {"latent": (6, 0), "source": (11, 0), "target": (12, 0), "negative": (10, 0)},
        {"steps": 20, "scheduler": "simple", "cfg": 1.0, "prefix": "contextdiff/flux_edit"},
    ),
]

WORKFLOWS["wan_video_edit"] = [
    note(
        1,
        [0, 0],
        "Text-guided video editing on Wan 2.1 / 2.2 t2v, a native video model: each chunk of frames is one video "
        "latent from the Wan VAE, its self-attention over all video tokens and its cross-attention to umT5 "
        "recorded at inversion and fused in the edit (no sparse-causal rewiring).\n\nFiles:\n"
        "- models/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors (or a 14B t2v), read by Load Diffusion Model\n"
        "- models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors, read by Load CLIP (type wan)\n"
        "- models/vae/wan_2.1_vae.safetensors\n- input/example.mp4: the video (or connect frames to 'images')\n\n"
        "chunk_size must be 1 + 4k frames (5, 9, 17, ... 81), and every chunk full: choose max_frames and overlap "
        "so. Memory: the node counts the attention store from Wan's blocks before any model call and refuses a job "
        "that would not fit, naming the fused steps that fit. The store grows with the tokens: 14B at 832x480, 81 "
        "frames is 37.7 GiB per fused step, refused at native size until source-branch recomputation lands; this "
        "workflow's 17 frames at 320x576 and 4 fused steps (fp16): 1.3B 3.9 GiB, 14B 17.3 GiB.",
        size=(460, 520),
    ),
    N(2, "UNETLoader", [500, 0], {"unet_name": "wan2.1_t2v_1.3B_fp16.safetensors", "weight_dtype": "default"}),
    N(3, "CLIPLoader", [500, 200], {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan"}),
    N(4, "VAELoader", [500, 450], {"vae_name": "wan_2.1_vae.safetensors"}),
    N(5, "ModelSamplingSD3", [850, -150], {"shift": 8.0}, {"model": (2, 0)}),
    N(
        6,
        "ContextDiffVideoEdit",
        [850, 0],
        {
            "source_prompt": "a man riding a bike",
            "target_prompt": "a robot riding a bike",
            "blend_words": "man, robot",
            "steps": 20,
            "cfg": 5.0,
            "fuse_start": 0.8,
            "video": "example.mp4",
            "max_frames": 17,
            "size": 320,
            "chunk_size": 17,
            "overlap": 0,
            "save_mp4": True,
            "filename_prefix": "contextdiff/wan_edit",
        },
        {"model": (5, 0), "vae": (4, 0), "clip": (3, 0)},
    ),
    N(7, "PreviewImage", [1250, 0], {}, {"images": (6, 0)}),
]


def build(graph: list, info: dict) -> dict:
    nodes, links = [], []
    by_id = {n["id"]: n for n in graph}
    out_links: dict[tuple[int, int], list[int]] = {}
    for n in graph:
        for name, (src, slot) in n.get("links", {}).items():
            link_id = len(links) + 1
            links.append([link_id, src, slot, n["id"], name, info[by_id[src]["type"]]["output"][slot]])
            out_links.setdefault((src, slot), []).append(link_id)
    for order, n in enumerate(graph):
        if n["type"] == "Note":
            nodes.append(
                {
                    "id": n["id"],
                    "type": "Note",
                    "pos": n["pos"],
                    "size": n["size"],
                    "flags": {},
                    "order": order,
                    "mode": 0,
                    "properties": {},
                    "widgets_values": [n["text"]],
                    "color": "#432",
                    "bgcolor": "#653",
                }
            )
            continue
        spec = info[n["type"]]
        inputs, widgets = [], []
        for name, s in node_inputs(spec):
            if is_widget(s):
                opts = s[1] if len(s) > 1 else {}
                if name in n["widgets"]:
                    widgets.append(n["widgets"][name])
                else:
                    choices = s[0] if isinstance(s[0], list) else opts.get("options") or [None]
                    widgets.append(opts.get("default", choices[0] if choices else None))
                if opts.get("control_after_generate"):
                    widgets.append("fixed")
            else:
                link = next((lk for lk in links if lk[3] == n["id"] and lk[4] == name), None)
                inputs.append({"name": name, "type": s[0], "link": link[0] if link else None})
        outputs = [
            {"name": spec["output_name"][i], "type": t, "links": out_links.get((n["id"], i), []), "slot_index": i}
            for i, t in enumerate(spec["output"])
        ]
        node = {
            "id": n["id"],
            "type": n["type"],
            "pos": n["pos"],
            "size": [320, 120 + 26 * len(widgets)],
            "flags": {},
            "order": order,
            "mode": n["mode"],
            "inputs": inputs,
            "outputs": outputs,
            "properties": {"Node name for S&R": n["type"]},
            "widgets_values": widgets,
        }
        if n.get("title"):
            node["title"] = n["title"]
        nodes.append(node)
    # UI links name the target slot by index
    for link in links:
        target = next(x for x in nodes if x["id"] == link[3])
        link[4] = next(i for i, inp in enumerate(target["inputs"]) if inp["name"] == link[4])
    return {
        "last_node_id": max(n["id"] for n in graph),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"contextdiff": "generated by scripts/make_workflows.py"},
        "version": 0.4,
    }


def main():
    info = fresh_object_info()
    OUT.mkdir(exist_ok=True)
    for name, graph in WORKFLOWS.items():
        (OUT / f"{name}.json").write_text(json.dumps(build(graph, info), indent=2) + "\n")
        print(f"wrote workflows/{name}.json")


if __name__ == "__main__":
    main()
