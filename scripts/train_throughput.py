"""See scripts/train_throughput.sh. Builds the random models with transformers, measures
transformers' training step, then runs uniattn-train on the same model and data."""
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


def flops_per_token(m):
    n = sum(p.numel() for n_, p in m.named_parameters() if "embed_tokens" not in n_)
    c = m.config
    attn = 2 * c.num_hidden_layers * SEQ * c.hidden_size  # QK^T and PV per token (causal ~1/2, x2 fwd)
    return 6 * n + 6 * attn


def hf_step_time(m, batch, ids):
    opt = torch.optim.AdamW(m.parameters(), lr=1e-5, fused=True)
    times = []
    for i in range(STEPS):
        torch.cuda.synchronize(); t = time.perf_counter()
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(); times.append(time.perf_counter() - t)
    return sorted(times[WARM:])[len(times[WARM:]) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--build", required=True)
    a = ap.parse_args()
    rows = []
    for name, s in SHAPES.items():
        torch.manual_seed(0)
        cfg = LlamaConfig(**s["cfg"], max_position_embeddings=4096, attn_implementation="sdpa")
        with torch.device("cuda"):
            m = LlamaForCausalLM(cfg).to(torch.bfloat16)
        d = os.path.join(a.out, name)
        m.save_pretrained(d)
        fpt = flops_per_token(m)
        B = s["batch"]
        ids = torch.randint(0, cfg.vocab_size, (B, SEQ), device="cuda")
        torch.cuda.reset_peak_memory_stats()
        dt = hf_step_time(m, B, ids)
        hf_peak_gib = torch.cuda.max_memory_allocated() / 2**30
        tps = B * SEQ / dt
        rows += [{"case": f"{name}/train/S={SEQ}/B={B}", "variant": "transformers_sdpa",
                  "metric": "tokens_per_s", "value": tps, "unit": "tokens/s"},
                 {"case": f"{name}/train/S={SEQ}/B={B}", "variant": "transformers_sdpa",
                  "metric": "mfu", "value": tps * fpt / 800e12, "unit": "fraction"}]
        del m
        torch.cuda.empty_cache()
        with open(os.path.join(a.out, name + ".jsonl"), "w") as f:
            g = torch.Generator().manual_seed(1)
            for _ in range(B * STEPS):
                t = torch.randint(0, cfg.vocab_size, (SEQ,), generator=g).tolist()
                f.write(json.dumps({"ids": t, "loss_mask": [1] * SEQ}) + "\n")
        cmd = [os.path.join(a.build, "uniattn-train"), "-c", "configs/compare/one-stage.yaml", "--fresh",
               "--set", f"model.path={d}", "--set", "data.format=tokens", "--set", "training.progress=false",
               "--set", f"data.train={a.out}/{name}.jsonl", "--set", f"data.eval={a.out}/{name}.jsonl",
               "--set", f"data.max_length={SEQ}",
               "--set", "training.device=cuda", "--set", "training.precision=bf16",
               "--set", f"training.global_batch={B}", "--set", f"training.micro_batch={B}",
               "--set", "checkpoint.every_steps=0", "--set", "eval.every_steps=0",
               "--set", f"stages=[{{params: all, steps: {STEPS}, lr: 1.0e-5}}]"]
        case = f"{name}/train/S={SEQ}/B={B}"
        rows.append({"case": case, "variant": "transformers_sdpa", "metric": "peak_memory_gib",
                     "value": hf_peak_gib, "unit": "GiB"})
        # uniattn-train as configured by default (bf16 autocast over fp32 master weights), with
        # activation checkpointing, and with bf16 weights/gradients/AdamW state as transformers
        # runs above (the later --set wins over the command's training.precision=bf16).
        for variant, extra in (("none", []),
                               ("none_checkpointing", ["--set", "training.activation_checkpointing=true"]),
                               ("none_bf16_weights", ["--set", "training.precision=bf16_weights"])):
            run_dir = f"{a.out}/{name}-{variant}"
            r = subprocess.run(cmd + ["--set", f"output_dir={run_dir}"] + extra, capture_output=True,
                               text=True)
            print(r.stderr[-800:])
            mets = [json.loads(l) for l in open(f"{run_dir}/metrics.jsonl") if l.strip()]
            tps_u = sorted(x["tokens_per_s"] for x in mets[WARM:])[len(mets[WARM:]) // 2]
            rows += [{"case": case, "variant": variant, "metric": "tokens_per_s", "value": tps_u,
                      "unit": "tokens/s"},
                     {"case": case, "variant": variant, "metric": "mfu",
                      "value": tps_u * fpt / 800e12, "unit": "fraction"},
                     {"case": case, "variant": variant, "metric": "peak_memory_gib",
                      "value": max(x.get("peak_memory_gib", 0) for x in mets), "unit": "GiB"}]
            print(name, "transformers", tps, "uniattn-train", variant, tps_u)
    json.dump({"gpu": torch.cuda.get_device_name(), "commit": os.environ.get("UNIATTN_COMMIT", "?"),
               "command": "scripts/train_throughput.sh build-gpu OUT", "rows": rows},
              open(os.path.join(a.out, "train-throughput.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
