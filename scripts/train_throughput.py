"""See scripts/train_throughput.sh. Builds the random models with transformers, measures
transformers' training step, then runs uniattn-train on the same model and data.

Each uniattn-train mode is set against the transformers step that does the same work:
  none_bf16_weights (bf16 weights, gradients, AdamW state)  <->  transformers_sdpa
      (model.to(bfloat16), fused AdamW on the bf16 parameters)
  none (the default: bf16 autocast over fp32 master weights)  <->  transformers_sdpa_amp
      (fp32 model under torch.autocast(bfloat16), fused AdamW on fp32 parameters: what the HF
      Trainer does with bf16=True)
Both transformers steps clip the gradient norm to 1.0 (foreach), as the HF Trainer does by default
and as uniattn-train does with grad_clip 1.0.

--profile-hf DIR runs a few transformers steps on the saved model DIR and exits (for ncu)."""
import argparse
import json
import os
import subprocess
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "smollm2": dict(cfg=dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                             num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                             tie_word_embeddings=True), batch=8),
    "llama8b-4layers": dict(cfg=dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                     num_hidden_layers=4, num_attention_heads=32,
                                     num_key_value_heads=8, tie_word_embeddings=False), batch=4),
}
SEQ, STEPS, WARM = 1024, 12, 3
PEAK_TFLOPS = 800e12  # the bf16 matmul rate measured on the H100 (KINDS.md), not the datasheet's


def flops_per_token(m):
    n = sum(p.numel() for n_, p in m.named_parameters() if "embed_tokens" not in n_)
    c = m.config
    attn = 2 * c.num_hidden_layers * SEQ * c.hidden_size  # QK^T and PV per token (causal ~1/2, x2 fwd)
    return 6 * n + 6 * attn


def hf_step_times(m, ids, steps, amp):
    """Seconds per training step of transformers: fp32 weights under bf16 autocast when amp, else
    the weights' own dtype; fused AdamW; clipping to 1.0."""
    opt = torch.optim.AdamW(m.parameters(), lr=1e-5, fused=True)
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def median_after_warmup(xs):
    xs = sorted(xs[WARM:])
    return xs[len(xs) // 2]


def uniattn_cmd(build, model_dir, data, batch, steps, run_dir):
    return [os.path.join(build, "uniattn-train"), "-c", "configs/compare/one-stage.yaml", "--fresh",
            "--set", f"model.path={model_dir}", "--set", "data.format=tokens",
            "--set", "training.progress=false", "--set", f"data.train={data}",
            "--set", f"data.eval={data}", "--set", f"data.max_length={SEQ}",
            "--set", "training.device=cuda", "--set", "training.precision=bf16",
            "--set", f"training.global_batch={batch}", "--set", f"training.micro_batch={batch}",
            "--set", "checkpoint.every_steps=0", "--set", "eval.every_steps=0",
            "--set", f"stages=[{{params: all, steps: {steps}, lr: 1.0e-5}}]",
            "--set", f"output_dir={run_dir}"]


def write_tokens(path, vocab, batch, steps):
    with open(path, "w") as f:
        g = torch.Generator().manual_seed(1)
        for _ in range(batch * steps):
            t = torch.randint(0, vocab, (SEQ,), generator=g).tolist()
            f.write(json.dumps({"ids": t, "loss_mask": [1] * SEQ}) + "\n")


def row(case, variant, metric, value, unit):
    return {"case": case, "variant": variant, "metric": metric, "value": value, "unit": unit}


def measure(a):
    rows = []
    for name, s in SHAPES.items():
        if a.shapes and name not in a.shapes.split(","):
            continue
        torch.manual_seed(0)
        cfg = LlamaConfig(**s["cfg"], max_position_embeddings=4096, attn_implementation="sdpa")
        with torch.device("cuda"):
            m = LlamaForCausalLM(cfg).to(torch.bfloat16)
        d = os.path.join(a.out, name)
        m.save_pretrained(d)
        fpt = flops_per_token(m)
        B = s["batch"]
        case = f"{name}/train/S={SEQ}/B={B}"
        ids = torch.randint(0, cfg.vocab_size, (B, SEQ), device="cuda")
        for variant, amp in (("transformers_sdpa", False), ("transformers_sdpa_amp", True)):
            if amp:
                m = m.float()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            tps = B * SEQ / median_after_warmup(hf_step_times(m, ids, STEPS, amp))
            rows += [row(case, variant, "tokens_per_s", tps, "tokens/s"),
                     row(case, variant, "mfu", tps * fpt / PEAK_TFLOPS, "fraction"),
                     row(case, variant, "peak_memory_gib",
                         torch.cuda.max_memory_allocated() / 2**30, "GiB")]
            print(name, variant, f"{tps:.0f} tokens/s", flush=True)
        del m
        torch.cuda.empty_cache()
        data = os.path.join(a.out, name + ".jsonl")
        write_tokens(data, cfg.vocab_size, B, STEPS)
        # uniattn-train as configured by default (bf16 autocast over fp32 master weights, full
        # logits), with activation checkpointing, with bf16 weights/gradients/AdamW state (the
        # later --set wins over the command's training.precision=bf16), and both precisions with
        # the chunked LM head + cross-entropy (training.fused_linear_cross_entropy=true), so that
        # its effect is a ratio measured in the same run.
        # The *_aten_ce variants take ATen's loss (fp32 logits) instead of the cross_entropy kernel;
        # the *_aten_ops ones also ATen's fused AdamW and the ATen chains of RMSNorm, RoPE and the
        # gated activation instead of the kernels' autograd functions.
        chunked = ["--set", "training.fused_linear_cross_entropy=true"]
        bf16_weights = ["--set", "training.precision=bf16_weights"]
        aten_ce = dict(os.environ, UNIATTN_DISABLE_KERNELS="cross_entropy")
        aten_ops = dict(os.environ,
                        UNIATTN_DISABLE_KERNELS="cross_entropy,adamw,rms_norm,rotary,gated_activation")
        for variant, extra, env in (
                ("none", [], None),
                ("none_checkpointing", ["--set", "training.activation_checkpointing=true"], None),
                ("none_bf16_weights", bf16_weights, None),
                ("none_chunked_ce", chunked, None),
                ("none_bf16_weights_chunked_ce", bf16_weights + chunked, None),
                ("none_aten_ce", [], aten_ce),
                ("none_bf16_weights_aten_ce", bf16_weights, aten_ce),
                ("none_aten_ops", [], aten_ops),
                ("none_bf16_weights_aten_ops", bf16_weights, aten_ops)):
            if a.variants and variant not in a.variants.split(","):
                continue
            run_dir = f"{a.out}/{name}-{variant}"
            r = subprocess.run(uniattn_cmd(a.build, d, data, B, STEPS, run_dir) + extra,
                               capture_output=True, text=True, env=env)
            print(r.stderr[-800:])
            mets = [json.loads(l) for l in open(f"{run_dir}/metrics.jsonl") if l.strip()]
            tps_u = median_after_warmup([x["tokens_per_s"] for x in mets])
            rows += [row(case, variant, "tokens_per_s", tps_u, "tokens/s"),
                     row(case, variant, "mfu", tps_u * fpt / PEAK_TFLOPS, "fraction"),
                     row(case, variant, "peak_memory_gib",
                         max(x.get("peak_memory_gib", 0) for x in mets), "GiB")]
            print(name, "uniattn-train", variant, f"{tps_u:.0f} tokens/s", flush=True)
    command = "python3 scripts/train_throughput.py --build %s --out OUT" % a.build
    command += "".join(f" --{k} {getattr(a, k)}" for k in ("shapes", "variants") if getattr(a, k))
    json.dump({"gpu": torch.cuda.get_device_name(), "commit": os.environ.get("UNIATTN_COMMIT", "?"),
               "command": command, "rows": rows},
              open(os.path.join(a.out, "train-throughput.json"), "w"), indent=1)


def profile_hf(a):
    m = LlamaForCausalLM.from_pretrained(a.profile_hf, dtype=torch.bfloat16,
                                         attn_implementation="sdpa").cuda()
    if a.amp:
        m = m.float()
    ids = torch.randint(0, m.config.vocab_size, (a.batch, SEQ), device="cuda")
    hf_step_times(m, ids, a.steps, a.amp)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--build")
    ap.add_argument("--profile-hf", metavar="MODEL_DIR")
    ap.add_argument("--amp", action="store_true", help="with --profile-hf: fp32 under autocast")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--shapes", help="comma list of " + ",".join(SHAPES) + " (default: all)")
    ap.add_argument("--variants", help="comma list of uniattn-train variants (default: all; "
                    "the transformers steps always run)")
    a = ap.parse_args()
    if a.profile_hf:
        profile_hf(a)
    else:
        if not (a.out and a.build):
            ap.error("--out and --build are required")
        measure(a)


if __name__ == "__main__":
    main()
