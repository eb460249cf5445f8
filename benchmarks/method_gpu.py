"""GPU check for the training method on a real-size shape in nf4 (QLoRA) with fp32 LoRA weights.

1. Sampler fidelity: GRPO samples from a dense bf16 copy of the policy (``factory/train/rollout.py``) while
   trl scores them with the nf4 training model. For tokens sampled from the copy: per-token |Δ log-prob|
   between copy and policy, and the full-vocabulary KL(copy || policy) per position.
2. Whether stage 4's clip acts at the real defaults (2 prompts × G=8, ε_low 0.1 / ε_high 0.2, μ = 2, LR 2e-5):
   trl's clip ratios over a few optimizer steps, with a reward that varies (a random model never writes the
   answer format, so format and accuracy give every completion 0 and no update).
3. Peak GPU memory of stage 1 and stage 4 with the adapter's trainable weights kept in fp32.

Random weights make the policy nearly uniform over the vocabulary, so (1) bounds the numerical gap between
the two weight formats rather than a trained model's; the script says so in its output.

Run on a CUDA machine (writes ``benchmarks/results/method_gpu.json``, prints a table last):
    python -m benchmarks.method_gpu --shape internvl3-1b-shape
A CPU dry run of the code path (figures meaningless):
    python -m benchmarks.method_gpu --shape tiny --sft-steps 2 --grpo-steps 2 --completion 8 --fidelity-tokens 8
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path


def varied_reward(completions, **kwargs) -> list[float]:
    """A reward with spread on a random model: the share of distinct characters in the completion."""
    from factory.rewards import completion_text

    return [len(set(completion_text(c))) / max(1, len(completion_text(c))) for c in completions]


def sampler_fidelity(ctx, prompts: int, generations: int, tokens: int, random_b: float = 0.0) -> dict:
    """Sample from the bf16 copy; compare per-token log-probs and the full distributions with the nf4 policy.

    ``random_b`` > 0 draws the LoRA B matrices from N(0, random_b): a fresh adapter has B = 0, so copy and
    policy would hold the same dequantized weights and the gap would be exactly 0, measuring nothing."""
    import torch

    from factory.data.emoset import read_split
    from factory.train.common import load_policy
    from factory.train.rollout import RolloutCopy

    policy, processor = load_policy(ctx)  # the GRPO stage's policy: nf4 base + parent adapter, dropout off
    if random_b:
        torch.manual_seed(0)
        with torch.no_grad():
            for name, param in policy.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, random_b)
    on_cuda = torch.cuda.is_available()
    copy = RolloutCopy(policy, dtype=torch.bfloat16 if on_cuda else torch.float32)
    from PIL import Image

    records = read_split(ctx.data_root, "train", task=ctx.task, check_images="none").records[:prompts]
    images = [[Image.open(r.image_path).convert("RGB")] for r in records for _ in range(generations)]
    prompt = ctx.task.render_prompt(processor, "cot")
    inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True).to(
        next(policy.parameters()).device)
    torch.manual_seed(0)
    with torch.no_grad():
        seqs = copy.model.generate(**inputs, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=tokens,
                                   min_new_tokens=tokens)
    n_prompt = inputs["input_ids"].shape[1]
    full = {**inputs, "input_ids": seqs, "attention_mask": torch.ones_like(seqs)}
    policy.train()  # trl scores in train mode; GRPO stages load the adapter without dropout
    gaps, kls, ratios = [], [], []
    with torch.no_grad():
        for i in range(seqs.shape[0]):  # one sequence at a time: full-vocabulary log-softmax is large
            one = {k: v[i:i + 1] for k, v in full.items()}
            lp_copy = torch.log_softmax(copy.model(**one).logits[0, n_prompt - 1:-1].float(), -1)
            lp_pol = torch.log_softmax(policy(**one).logits[0, n_prompt - 1:-1].float(), -1)
            new = seqs[i, n_prompt:]
            a = lp_copy.gather(-1, new[:, None])[:, 0]
            b = lp_pol.gather(-1, new[:, None])[:, 0]
            gaps.append((a - b).abs().cpu())
            ratios.append((b - a).exp().cpu())
            kls.append((lp_copy.exp() * (lp_copy - lp_pol)).sum(-1).cpu())
    gap, kl, ratio = torch.cat(gaps), torch.cat(kls), torch.cat(ratios)
    entropy = float(-(lp_copy.exp() * lp_copy).sum(-1).mean())
    del copy, policy
    if on_cuda:
        torch.cuda.empty_cache()
    q = torch.tensor([0.5, 0.99])
    return {"tokens": int(gap.numel()), "abs_dlogp_mean": float(gap.mean()),
            "abs_dlogp_p50_p99": [float(x) for x in torch.quantile(gap, q)], "abs_dlogp_max": float(gap.max()),
            "kl_mean": float(kl.mean()), "kl_p99": float(torch.quantile(kl, 0.99)),
            "ratio_outside_0.9_1.2": float(((ratio < 0.9) | (ratio > 1.2)).float().mean()),
            "copy_entropy_nats_last_sequence": entropy, "random_b": random_b}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="internvl3-1b-shape", help="model size (factory.families.MODEL_SIZES)")
    parser.add_argument("--family", default="internvl")
    parser.add_argument("--tokenizer", default="real", choices=["real", "small"])
    parser.add_argument("--sft-steps", type=int, default=6)
    parser.add_argument("--grpo-steps", type=int, default=6, help="optimizer steps of stage 4 (μ=2: half generate)")
    parser.add_argument("--completion", type=int, default=512, help="stage 4 max completion tokens (real default)")
    parser.add_argument("--fidelity-tokens", type=int, default=256, help="tokens sampled per sequence for (1)")
    parser.add_argument("--workdir", default="/tmp/svlm_method_gpu")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)

    import torch

    from factory import rewards
    from factory.cot.build import CotConfig, build
    from factory.data.synth import SynthConfig, generate
    from factory.models import ModelConfig
    from factory.train.common import StageContext
    from factory.train.grpo import run_grpo
    from factory.train.runner import LoraSettings, TrainConfig, TrainOptions, base_source
    from factory.train.sft import run_sft
    from factory.train.stages import STAGES

    on_cuda = torch.cuda.is_available()
    rewards.REWARDS["varied"] = varied_reward
    work = Path(args.workdir)
    data = work / "data"
    generate(SynthConfig(out=str(data), n=160, image_size=160), progress=False)
    build(CotConfig(data=str(data), split="train", out=str(work / "cot")), progress=False)
    quiet = {"save_steps": 10_000, "logging_steps": 1}
    real4 = STAGES["4_clgrpo"]
    cfg = TrainConfig(
        name="gpu", output_dir=str(work), data=str(data), cot=str(work / "cot"),
        model=ModelConfig(family=args.family, size=args.shape, tokenizer=args.tokenizer),
        train=TrainOptions(quantization="nf4", lora=LoraSettings(r=16, alpha=32, dropout=0.05), stages={
            "1_sft": {"max_steps": args.sft_steps, "batch_size": 8, "grad_accum": 1, **quiet},
            # stage 4 at its real defaults, continuing stage 1 (its cost does not depend on stages 2-3)
            "4_clgrpo": {"parent": "1_sft", "max_steps": args.grpo_steps, "max_completion_length": args.completion,
                         "rewards": [*real4.rewards, "varied"], **quiet}}))
    base = base_source(cfg)
    rows, fidelity = {}, None
    for name, runner in (("1_sft", run_sft), ("4_clgrpo", run_grpo)):
        stage = cfg.stage(name)
        out = cfg.run_dir / name
        for stale in (out / "adapter", out / "checkpoints"):  # a rerun measures afresh
            if stale.exists():
                import shutil

                shutil.rmtree(stale)
        out.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(name, stage, cfg, out, base, data, work / "cot", progress=False)
        if name == "4_clgrpo":
            t = time.time()
            fidelity = sampler_fidelity(ctx, stage.batch_size // stage.num_generations, stage.num_generations,
                                        args.fidelity_tokens)
            fidelity["seconds"] = round(time.time() - t, 1)
        if on_cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t = time.time()
        model, _, metrics = runner(ctx)
        history = json.loads((out / "log_history.json").read_text())
        clip = {k: [round(float(r[k]), 5) for r in history if k in r]
                for k in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")}
        dtypes = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad})
        rows[name] = {"steps": stage.max_steps, "seconds": round(time.time() - t, 1),
                      "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_cuda else None,
                      "trainable_dtypes": dtypes, "batch": stage.batch_size,
                      **({"clip": clip, "num_iterations": stage.num_iterations, "epsilon": stage.epsilon,
                          "epsilon_high": stage.epsilon_high, "learning_rate": stage.learning_rate,
                          "max_completion_length": stage.max_completion_length,
                          "clipped_any_step": any(v > 0 for v in clip["clip_ratio/region_mean"])}
                         if stage.kind == "grpo" else {})}
        del model
    result = {"command": "python -m benchmarks.method_gpu " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "device": torch.cuda.get_device_name() if on_cuda else platform.processor() or "cpu",
              "shape": args.shape, "family": args.family, "tokenizer": args.tokenizer, "quantization": "nf4",
              "sampler_fidelity": fidelity, "stages": rows,
              "note": "random weights: the policy is near-uniform, so the fidelity figures bound the numerical gap "
                      "between dense bf16 and nf4 weights, not a trained model's"}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("method_gpu.json" if on_cuda else "method_gpu_cpu_dryrun.json")
    path.write_text(json.dumps(result, indent=2))
    f = fidelity
    print(f"\n{result['device']} | {args.shape} | nf4 + fp32 LoRA r16 | {f['tokens']} sampled tokens")
    print(f"sampler fidelity: |Δlogp| mean {f['abs_dlogp_mean']:.2e} p99 {f['abs_dlogp_p50_p99'][1]:.2e} max "
          f"{f['abs_dlogp_max']:.2e}; KL(copy||policy) mean {f['kl_mean']:.2e} p99 {f['kl_p99']:.2e}; "
          f"ratio outside [0.9, 1.2]: {f['ratio_outside_0.9_1.2']:.2%}")
    print(f"{'stage':<10} {'steps':>5} {'peak GiB':>9} {'seconds':>8}  trainable dtypes / clip region per step")
    for name, r in rows.items():
        extra = r["trainable_dtypes"] if "clip" not in r else (
            f"{r['trainable_dtypes']} clip {r['clip']['clip_ratio/region_mean']}")
        peak = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(f"{name:<10} {r['steps']:>5} {peak:>9} {r['seconds']:>8.1f}  {extra}")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
