"""Test-only nodes for the model families (SD2.x, SDXL and its variants): random in-Python models with
reduced widths, conditionings with a pooled output, and a tiny dual-encoder SDXL CLIP. The full-layout
models come from single-file checkpoints through the core CheckpointLoaderSimple instead."""

from comfy_models import build_family, build_tiny_sdxl_clip, family_conditioning


class FamilyModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "config": (["SD15", "SD20", "SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B"],),
                "seed": ("INT", {"default": 0}),
                "prediction": (["eps", "v"],),
                "zsnr": ("BOOLEAN", {"default": False}),
            },
            "optional": {"attn_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0})},
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, config, seed, prediction, zsnr, attn_scale=1.0):
        return (build_family(config, seed, prediction, zsnr, attn_scale=attn_scale),)


class FamilyConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seed": ("INT", {"default": 0}),
                "context_dim": ("INT", {"default": 2048}),
                "pooled_dim": ("INT", {"default": 1280}),
                "tokens": ("INT", {"default": 77}),
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, seed, context_dim, pooled_dim, tokens):
        return (family_conditioning(seed, context_dim, pooled_dim, tokens),)


class TinySDXLClip:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, seed):
        return (build_tiny_sdxl_clip(seed),)


FAMILY_NODES = {
    "ContextDiffTest_FamilyModel": FamilyModel,
    "ContextDiffTest_FamilyConditioning": FamilyConditioning,
    "ContextDiffTest_TinySDXLClip": TinySDXLClip,
}


class Identify:
    """Reports what hostside.families makes of a MODEL (its own model_sampling patches included)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ()
    FUNCTION = "identify"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def identify(self, model):
        from hostside import families

        info = families.identify(model.model, model.get_model_object("model_sampling"))
        return {
            "ui": {
                "family": [info.family.key if info.family else ""],
                "config": [info.config],
                "prediction": [info.prediction],
                "zsnr": [info.zsnr],
                "describe": [info.describe()],
            }
        }


FAMILY_NODES["ContextDiffTest_Identify"] = Identify


class TinySDXLCheckpoint:
    """Stands in for CheckpointLoaderSimple when the tests run the shipped SDXL workflows."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, ckpt_name):
        from comfy_models import build_tiny_vae

        return build_family("SDXL", 0, attn_scale=6.0), build_tiny_sdxl_clip(0), build_tiny_vae(0)


FAMILY_NODES["ContextDiffTest_TinySDXLCheckpoint"] = TinySDXLCheckpoint


class TinyFlowClip:
    """Stands in for TripleCLIPLoader (SD3), DualCLIPLoader type flux and CLIPLoader type wan when the tests run the
    shipped flow workflows: the family's own ComfyUI text encoders, few and narrow layers, the real output widths
    (no T5-XXL can be built at test size; ``comfy_models.build_tiny_flow_clip``)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (["sd3", "flux", "wan"],), "seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, kind, seed):
        from comfy_models import build_tiny_flow_clip

        return (build_tiny_flow_clip(kind, seed),)


FAMILY_NODES["ContextDiffTest_TinyFlowClip"] = TinyFlowClip
