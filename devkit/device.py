"""Which device the suite runs on, and the tolerances that depend on it: declared here, once, with the reason.

``CONTEXTDIFF_DEVICE=cuda bash scripts/test.sh`` runs the host tests with ComfyUI on the GPU (no ``--cpu``, in
process and for the loopback server) and the trainer tests with ``--device cuda``. The CPU is the default, and
CI's. A tolerance that holds on the CPU holds there unchanged; only where a GPU computes differently by design
does it get its own bound, named in :data:`TOLERANCES`.
"""

from __future__ import annotations

import os

DEVICES = ("cpu", "cuda")


def device() -> str:
    """The suite's device, from ``CONTEXTDIFF_DEVICE`` (``cpu`` when unset); anything else is refused."""
    value = os.environ.get("CONTEXTDIFF_DEVICE", "cpu").strip().lower() or "cpu"
    if value not in DEVICES:
        raise SystemExit(f"CONTEXTDIFF_DEVICE is {value!r}; set it to one of {DEVICES} (unset means cpu)")
    return value


def on_cpu() -> bool:
    return device() == "cpu"


# name -> (CPU bound, CUDA bound, why the CUDA bound differs). Relative errors (helpers.rel_err).
TOLERANCES: dict[str, tuple[float, float, str]] = {
    # Two runs of the same UNet that differ only in the sampler's step arithmetic (ours in float64, core ddim in
    # float32) or in which attention kernel runs (ComfyUI's SDPA against a replace patch's explicit softmax).
    # On the CPU every matmul and convolution rounds to float32, so the difference stays near 1e-7 per step. On
    # CUDA, cuDNN convolutions run in TF32 by default (torch.backends.cudnn.allow_tf32; ComfyUI's ops ask for it
    # too), which rounds inputs to 10 mantissa bits: a 1e-7 difference in a latent can flip a rounding and come
    # out near 1e-3 after 20 steps (seen: 1.47e-4 where the CPU bound was 1e-4).
    "same_unet_other_arithmetic": (1e-5, 2e-3, "TF32 convolutions on CUDA"),
    "same_unet_other_attention_kernel": (1e-4, 2e-3, "TF32 convolutions and SDPA's fused kernels on CUDA"),
}


def tolerance(name: str) -> float:
    """The bound of ``name`` for the suite's device (:data:`TOLERANCES`)."""
    cpu, cuda, _ = TOLERANCES[name]
    return cpu if on_cpu() else cuda
