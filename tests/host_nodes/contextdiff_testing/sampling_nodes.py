"""Test-only nodes for the sampler tests: a model whose prediction is the exact Gaussian denoiser (so that
inversion can be checked for exactness in the host) and one that predicts NaN while computing in fp32.
Both wrap a clone through ComfyUI's model-function wrapper, which sees the k-space input and the sigma."""

import torch


class GaussianDenoiser:
    """The model's prediction replaced by E[x0 | x] for data x0 ~ N(mu, s^2): on VP models (k-space)
    x0hat = mu + s^2/(s^2+sigma^2)(x-mu); on flow models (CONST: x = (1 - sigma) x0 + sigma eps, a = 1 - sigma)
    x0hat = mu + s^2 a/(a^2 s^2 + sigma^2)(x - a mu). ``report``: a file that counts the calls (none: not written)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "mu": ("FLOAT", {"default": 0.0, "min": -10.0, "max": 10.0}),
                "s": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 10.0}),
            },
            "optional": {"report": ("STRING", {"default": ""})},
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, model, mu, s, report=""):
        ms = model.get_model_object("model_sampling")
        flow = "CONST" in [c.__name__ for c in type(ms).__mro__]
        calls = [0]

        def exact(apply_model, args):
            x, sigma = args["input"], args["timestep"]
            sig = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
            if report:
                calls[0] += 1
                with open(report, "w") as f:
                    f.write(str(calls[0]))
            if flow:
                a = 1 - sig
                return mu + s * s * a / (a * a * s * s + sig * sig) * (x - a * mu)
            return mu + s * s / (s * s + sig * sig) * (x - mu)

        patched = model.clone()
        patched.set_model_unet_function_wrapper(exact)
        return (patched,)


class NaNPrediction:
    """Predicts NaN at every step, as broken weights or a broken patch do, whatever the dtype."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, model):
        patched = model.clone()
        patched.set_model_unet_function_wrapper(lambda apply_model, args: torch.full_like(args["input"], float("nan")))
        return (patched,)


SAMPLING_NODES = {"ContextDiffTest_GaussianDenoiser": GaussianDenoiser, "ContextDiffTest_NaNPrediction": NaNPrediction}
