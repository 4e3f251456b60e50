"""How much of the image the context bias carries into ``x_t``, for each bias variant of issue 20.

Eq. 6 trains the UNet on ``x_t = sqrt(abar) x0 + k_t r_phi(x0, c, t) + sqrt(1 - abar) eps``: ``r_phi`` sees
``x0``, so ``b_t`` can carry the image, and the UNet learns to read it there; at sampling (Eq. 7) the bias
comes from ``x0hat``. For each variant (:data:`VARIANTS`: the trainer options of
:mod:`contextdiff.bias_variants`, the paper's Eq. 6, ``--bias_l2`` and the model without the bias) this
trains the shapes recipe for ``--steps`` steps with ``python -m trainer.train``, loads the exported file
with the loader the nodes use, and measures on training-split scenes of its own seed (no test prompt):

- ``loss_bias_x0``: the x0 error (Eq. 6, uniform t) with ``b_t = k_t r_phi(x0)``, what training sees;
  ``loss_no_bias``: the same ``x_t`` without the bias; ``loss_bias_self``: with ``b_t = k_t r_phi(x0hat)``,
  ``x0hat`` the model's prediction from the unbiased ``x_t`` (what sampling can give it);
- ``readback``: the share of the x0 error that the bias alone removes: the UNet's x0 prediction from
  ``b_t + sqrt(1 - abar) eps`` (no signal term) against its prediction from the noise alone, at several t;
- ``decoder_r2``: R^2 of a small conv decoder trained to read ``x0`` from ``b_t + sqrt(1 - abar_t) eps`` at
  t = 500 (the bias of the frozen adapter and the noise of ``x_t``, without the signal term): 0 for no bias;
- ``C_t``: Lemma 4's Lipschitz constant, the local Jacobian spectral norm of ``r_phi`` at ``x0``
  (:func:`contextdiff.bias_variants.local_lipschitz`) and the difference quotient between ``x0`` and ``x0hat``;
- ``gap``: ``rms(r_phi(x0hat) - r_phi(x0)) / rms(r_phi(x0))`` on data, and along a 20-step sampling
  trajectory against the trajectory's own final image; the judge's accuracy of those samples.

    .venv/bin/python -m analysis.bias_leak [--steps 250] [--seed 0] [--jobs 2] [--only NAME ...]
    .venv/bin/python -m analysis.bias_leak --checkpoints "no bias=FILE" "Eq. 6 (paper)=FILE" ... --out OUT.json

The second form trains nothing: it probes files trained elsewhere (e.g. bench quality's 3,000-step models),
reading their training loss from the ``log.jsonl`` beside each file.

Writes ``docs/bias_leak.json`` and prints the tables of docs/bias_leak.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "trainer" / "configs" / "shapes.yaml"
PROBE_SEED = 9_001  # training-split scenes; bench quality's test seeds are 101..606
DECODER_SEED = 9_002
T_GRID = (300, 500, 700)

# name -> (directory, trainer options beyond the recipe)
VARIANTS = {
    "no bias": ("nobias", ["--use_bias", "false"]),
    "Eq. 6 (paper)": ("eq6", []),
    "Eq. 6 + bias_l2 1": ("bias_l2", ["--bias_l2", "1.0"]),
    "Eq. 5 (unsimplified)": ("eq5", ["--objective", "eq5"]),
    "Lipschitz hinge C<=1": ("lipschitz", ["--lipschitz_weight", "1.0", "--lipschitz_bound", "1.0"]),
    "self-consistent bias": ("self", ["--self_bias", "1.0"]),
    "self/x0 mix 0.5": ("selfmix", ["--self_bias", "0.5"]),
    "input blur 2 px": ("blur", ["--input_blur", "2.0"]),
    "input noise 0.5": ("noise", ["--input_noise", "0.5"]),
    "text-only bias": ("text", ["--bias_input", "none"]),
}


def final_train_loss(log: Path) -> float:
    """The objective as trained: the mean of the last five logged losses (the trainer logs every 10 steps)."""
    losses = [r["loss"] for r in map(json.loads, log.read_text().splitlines()) if "loss" in r]
    return sum(losses[-5:]) / len(losses[-5:])


def train(name: str, steps: int, seed: int, runs: Path, threads: int) -> dict:
    """Train one variant (reused when its directory holds a finished run of the same options)."""
    slug, options = VARIANTS[name]
    out = runs / f"{slug}-seed{seed}"
    command = [
        sys.executable,
        "-m",
        "trainer.train",
        "--config",
        str(RECIPE),
        "--steps",
        str(steps),
        "--seed",
        str(seed),
        "--name",
        slug,
        "--output_dir",
        str(out),
        "--preview_count",
        "0",
        "--save_every",
        str(steps),
        *options,
    ]
    stamp = out / "leak_run.json"
    if stamp.exists() and json.loads(stamp.read_text())["command"] == command[1:]:
        return json.loads(stamp.read_text())
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.time()
    subprocess.run(["nice", "-n", "19", *command], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    info = {
        "command": command[1:],
        "seconds": round(time.time() - start, 1),
        "final_train_loss": final_train_loss(out / "log.jsonl"),
        "file": str(out / f"{slug}.safetensors"),
    }
    stamp.write_text(json.dumps(info, indent=2))
    return info


def rms(x) -> float:
    return float(x.float().pow(2).mean().sqrt())


def probe(path: str, n: int = 32, decoder_steps: int = 100) -> dict:
    """Every leak measurement of one exported model (module docstring)."""
    import torch

    from trainer.comfy_env import ensure_comfy_importable

    ensure_comfy_importable(cpu=True)
    from contextdiff import process, sampling
    from contextdiff.bias import adapter_bias
    from contextdiff.bias_variants import lipschitz_quotient, local_lipschitz
    from contextdiff.schedule import k_coefficient
    from hostside.joint_checkpoints import load_text_joint
    from hostside.text_encoder import encode_batch
    from shapesworld import judge, world
    from trainer.diffusion import prior_noise, relational, spaced_sigmas, training_schedule, x0_predictor
    from trainer.shapes_mode import to_pixels

    m = load_text_joint(path, recipe="shapes")  # the nodes' loader: every variant's file must load
    model, adapter, clip = m.model, m.adapter, m.clip
    sigmas, abar = training_schedule(model, "cpu")
    abar_T = abar[-1]
    images, captions, scenes = world.sample_batch(PROBE_SEED, n, "train", 32)
    x0 = to_pixels(images)
    gen = torch.Generator().manual_seed(0)
    out: dict = {}
    with torch.no_grad():
        ctx, pooled = encode_batch(clip, captions)
        cond = {"c_crossattn": ctx, "y": pooled}
        r = relational(adapter, ctx)

        def fs(ab, eps, b=None):
            return process.forward_sample(x0, ab.reshape(-1, 1, 1, 1).float(), eps, b)

        def kk(t):
            return k_coefficient(abar[t], abar_T).float().reshape(-1, 1, 1, 1)

        def mse(a, b):
            return (a - b).pow(2).flatten(1).mean(1)

        # Losses at uniform random t (one fixed draw, the same for every model).
        t = torch.randint(len(sigmas), (n,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        denoise = x0_predictor(model, sigmas[t], cond)
        r0 = r(x0, t)
        pred_plain = denoise(fs(abar[t], eps), t)
        out["loss_bias_x0"] = float(mse(denoise(fs(abar[t], eps, kk(t) * r0), t), x0).mean())
        out["loss_no_bias"] = float(mse(pred_plain, x0).mean())
        out["loss_bias_self"] = float(mse(denoise(fs(abar[t], eps, kk(t) * r(pred_plain, t)), t), x0).mean())

        per_t = {}
        for step in T_GRID:
            t = torch.full((n,), step)
            eps = torch.randn(x0.shape, generator=gen)
            denoise = x0_predictor(model, sigmas[t], cond)
            noise = (1 - abar[t]).sqrt().float().reshape(-1, 1, 1, 1) * eps
            r0 = r(x0, t)
            b = kk(t) * r0
            null = mse(denoise(noise, t), x0).mean()
            read = mse(denoise(b + noise, t), x0).mean()
            pred_plain = denoise(fs(abar[t], eps), t)
            r_hat = r(pred_plain, t)
            with torch.enable_grad():
                c_local = local_lipschitz(lambda x, t=t: r(x, t[:4]), x0[:4], iters=6)
            per_t[step] = {
                "k_t": float(kk(t)[0]),
                "bias_rms": rms(b),
                "signal_rms": rms(abar[step].sqrt().float() * x0),
                "readback_mse": float(read),
                "noise_only_mse": float(null),
                "readback_share": float(1 - read / null),
                "C_local_max": float(c_local.max()),
                "C_local_mean": float(c_local.mean()),
                "C_quotient_x0hat_mean": float(lipschitz_quotient(r_hat, r0, pred_plain, x0).mean()),
                "gap_rel": rms(r_hat - r0) / max(rms(r0), 1e-12),
                "gap_bias_rms": rms(kk(t) * (r_hat - r0)),
            }
        out["per_t"] = per_t

        # Decoder probe at t = 500: read x0 back from b_t + noise (the frozen adapter's bias, no signal term).
        dimages, dcaptions, _ = world.sample_batch(DECODER_SEED, 4 * n, "train", 32)
        dx0 = torch.cat([to_pixels(dimages), x0])
        dctx = torch.cat([encode_batch(clip, dcaptions)[0], ctx])
        t500 = torch.full((len(dx0),), 500)
        seen_b = kk(t500) * adapter(dx0, dctx, t500.float())
        seen_b = seen_b + (1 - abar[500]).sqrt().float() * torch.randn(dx0.shape, generator=gen)
    out["decoder_r2"] = decoder_r2(seen_b, dx0, n, decoder_steps)

    # A sampling trajectory: 20 DDIM steps, cfg 3, strength 1 (the nodes' shapes settings).
    with torch.no_grad():
        steps, cfg_scale = 20, 3.0
        ms = model.model_sampling
        sig = spaced_sigmas(ms.sigmas, steps)
        uctx, upooled = encode_batch(clip, [""] * n)
        both = {"c_crossattn": torch.cat([ctx, uctx]), "y": torch.cat([pooled, upooled])}

        def denoiser(x, sigma, **_):
            c_out, u_out = model.apply_model(torch.cat([x, x]), torch.cat([sigma, sigma]), **both).chunk(2)
            return u_out + cfg_scale * (c_out - u_out)

        seen = []
        bias = adapter_bias(adapter, ctx, ms.timestep, float(ms.sigma_max), 1.0)
        x = prior_noise((n, 3, 32, 32), sig[0], 0, "cpu")
        final = sampling.sample_contextdiff_ddim(
            denoiser, x, sig, None, lambda d: seen.append((d["sigma"], d["denoised"])), True, bias=bias
        )
        gaps, bias_gaps = [], []
        for sigma, x0hat in seen:
            tt = ms.timestep(sigma.reshape(1)).float().expand(n)
            a_hat, a_end = adapter(x0hat, ctx, tt), adapter(final, ctx, tt)
            k = float(k_coefficient(1.0 / (1.0 + sigma.double() ** 2), abar_T))
            gaps.append(rms(a_hat - a_end) / max(rms(a_end), 1e-12))
            bias_gaps.append(k * rms(a_hat - a_end))
        pixels = final.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()
    out["trajectory_gap_rel"] = gaps
    out["trajectory_gap_bias_rms"] = bias_gaps
    out["judge"] = judge.accuracy(scenes, [judge.read(im) for im in pixels])
    return out


def decoder_r2(r_all, x_all, n_test: int, steps: int) -> float:
    """R^2 on the last ``n_test`` samples of a small conv decoder trained (Adam) on the others to map
    ``r_all`` to ``x_all``; 0 means the input says nothing that the mean image would not."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    inp = r_all.float()
    tr_x, tr_y, te_x, te_y = inp[:-n_test], x_all[:-n_test], inp[-n_test:], x_all[-n_test:]
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(16, 3, 3, padding=1),
    )
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(tr_x), (64,), generator=g)
        loss = (net(tr_x[idx]) - tr_y[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        err = (net(te_x) - te_y).pow(2).mean()
    return float(1 - err / (te_y - tr_y.mean(0)).pow(2).mean())


def tables(result: dict) -> str:
    """The leak table of docs/bias_leak.md (training cost is bench/bias_variant_cost.py's: the wall time of
    trainings run side by side on a shared machine says nothing about it)."""
    lines = [
        "| variant | train loss (as trained) | x0 loss, b(x0) | x0 loss, no b | x0 loss, b(x0hat) | "
        "read-back t=300/500/700 | decoder R^2 | bias rms t=500 | C_t local max t=500 | gap r(x0hat) vs r(x0) "
        "t=500 | trajectory gap step 1/10/19 | caption / position / count (%) |",
        "|---|" + "---|" * 11,
    ]
    for name, v in result["variants"].items():
        p, pt = v["probe"], v["probe"]["per_t"]
        traj, j = p["trajectory_gap_rel"], p["judge"]
        lines.append(
            f"| {name} | {v['final_train_loss']:.4f} | {p['loss_bias_x0']:.4f} | {p['loss_no_bias']:.4f} | "
            f"{p['loss_bias_self']:.4f} | "
            + " / ".join(f"{pt[str(t)]['readback_share']:.2f}" for t in (300, 500, 700))
            + f" | {p['decoder_r2']:.2f} | {pt['500']['bias_rms']:.3f} | {pt['500']['C_local_max']:.2f} | "
            + f"{pt['500']['gap_rel']:.2f} | "
            + " / ".join(f"{traj[i]:.2f}" for i in (0, 9, 18))  # step 20 returns its own x0hat: gap 0
            + f" | {100 * j['caption']:.0f} / {100 * j['position']:.0f} / {100 * j['count']:.0f} |"
        )
    return "\n".join(lines)


def run_variant(name: str, args) -> dict:
    """Train ``name``, then probe its file in a fresh one-thread process (reused when already probed)."""
    info = train(name, args.steps, args.seed, args.runs, 1)
    probe = probe_file(Path(info["file"]))
    print(f"[bias_leak] {name} done", flush=True)
    return dict(info, seconds_per_step=info["seconds"] / args.steps, probe=probe)


def probe_file(file: Path) -> dict:
    """Probe one exported file in a fresh one-thread process, once (the result is kept beside it)."""
    probe_path = file.with_suffix(".probe.json")
    if not probe_path.exists():
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        command = [sys.executable, "-m", "analysis.bias_leak", "--probe", str(file)]
        subprocess.run(["nice", "-n", "19", *command], cwd=ROOT, env=env, check=True)
    return json.loads(probe_path.read_text())


def trained_elsewhere(name: str, file: Path) -> dict:
    """A file trained by another run: its training loss (mean of the last five logged steps) and its probe."""
    log = file.parent / "log.jsonl"
    steps = max(r["step"] for r in map(json.loads, log.read_text().splitlines()) if "step" in r)
    print(f"[bias_leak] probing {name}: {file}", flush=True)
    return {"file": str(file), "steps": steps, "final_train_loss": final_train_loss(log), "probe": probe_file(file)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.bias_leak", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="variants side by side (one thread each)")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "bias_leak")
    p.add_argument("--only", nargs="*", default=None, help="variant names (default: all)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "bias_leak.json")
    p.add_argument("--probe", default=None, help="(internal) probe this exported file, write FILE.probe.json")
    p.add_argument(
        "--checkpoints",
        nargs="+",
        default=None,
        metavar="NAME=FILE",
        help="probe these files trained elsewhere instead of training (names as the table should show them)",
    )
    args = p.parse_args(argv)
    if args.probe:
        import torch

        torch.set_num_threads(1)
        result = probe(args.probe)
        Path(args.probe).with_suffix(".probe.json").write_text(json.dumps(result, indent=2, default=float))
        return 0
    if args.checkpoints:
        pairs = [item.split("=", 1) for item in args.checkpoints]
        bad = [item for item, pair in zip(args.checkpoints, pairs, strict=True) if len(pair) != 2]
        if bad:
            raise SystemExit(f"--checkpoints takes NAME=FILE; got {bad}")
        with ThreadPoolExecutor(args.jobs) as pool:
            done = dict(pool.map(lambda nf: (nf[0], trained_elsewhere(nf[0], Path(nf[1]))), pairs))
        result = {"seed": args.seed, "probe_seed": PROBE_SEED, "variants": done}
        args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
        print(tables(result))
        return 0
    names = args.only or list(VARIANTS)
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    with ThreadPoolExecutor(args.jobs) as pool:
        done = dict(zip(names, pool.map(lambda nm: run_variant(nm, args), names), strict=True))
    result = {"steps": args.steps, "seed": args.seed, "probe_seed": PROBE_SEED, "variants": {}}
    if args.out.exists():
        old = json.loads(args.out.read_text())
        if old.get("steps") == args.steps and old.get("seed") == args.seed:
            result["variants"] = old["variants"]
    result["variants"].update(done)
    result["variants"] = {k: result["variants"][k] for k in VARIANTS if k in result["variants"]}
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(tables(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
