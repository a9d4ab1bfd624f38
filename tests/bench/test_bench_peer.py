#!/usr/bin/env python3
"""scripts/bench_peer.py --tiny on the CPU: it runs, writes uniattn-bench's JSON layout, and its
byte counts and roofline fractions follow from the tiny model's dimensions by hand-written
formulas; its plain LLaMA computes the same logits as transformers' LlamaForCausalLM with the
same weights (so the peer does a LLaMA's work).

Run: $UNIATTN_PYTHON tests/bench/test_bench_peer.py (CTest: py_test_bench_peer).
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("UNIATTN_SOURCE_DIR", os.path.dirname(os.path.dirname(HERE)))
SCRIPT = os.path.join(SOURCE, "scripts", "bench_peer.py")


def load_peer():
    spec = importlib.util.spec_from_file_location("bench_peer", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class TinyCpuRun(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.out = os.path.join(cls.tmp.name, "sub", "peer.json")
        env = dict(os.environ, UNIATTN_COMMIT="test-commit", UNIATTN_RUN_ID="run-7")
        cls.proc = subprocess.run(
            [sys.executable, SCRIPT, "--tiny", "--device", "cpu", "--out", cls.out, "--iters", "2",
             "--repeats", "2", "--prefill-iters", "2", "--ceiling-iters", "2",
             "--ceiling-copy-mib", "8", "--ceiling-gemm-n", "64"],
            capture_output=True, text=True, env=env, timeout=1100)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_runs_and_writes_json(self):
        self.assertEqual(self.proc.returncode, 0,
                         self.proc.stdout[-2000:] + self.proc.stderr[-4000:])
        with open(self.out) as f:
            doc = json.load(f)
        self.assertEqual(doc["gpu"], "cpu")
        self.assertEqual(doc["commit"], "test-commit")
        self.assertEqual(doc["run"], "run-7")
        self.assertIn("bench_peer.py --tiny --device cpu", doc["command"])
        self.assertEqual(doc["dtype"], "float32")
        c = doc["ceilings"]
        self.assertEqual(c["method"], "measured")
        self.assertEqual((c["copy_bytes"], c["gemm_n"], c["iters"]), (8 << 20, 64, 2))
        self.assertGreater(c["copy_gb_per_s"], 0.1)
        self.assertGreater(c["gemm_tflop_per_s"], 1e-5)
        for key in ("copy_gb_per_s_stdev", "gemm_tflop_per_s_stdev", "gemm_dtype", "warmup",
                    "timer", "description"):
            self.assertIn(key, c)

        rows = {(r["case"], r["metric"]): r for r in doc["rows"]}
        for r in doc["rows"]:
            self.assertEqual(r["variant"], "torch_compile")
            self.assertEqual(set(r) - {"note", "n", "stdev", "min", "max"},
                             {"case", "variant", "metric", "value", "unit"}, r)
            self.assertNotIn(r["metric"], ("oom", "error"), r)

        # The tiny model by hand: vocab 256, dim 64, ffn 96, 2 layers, 4 heads, 2 KV heads, D 16.
        v, d, f, L, hq, hkv, hd = 256, 64, 96, 2, 4, 2, 16
        layer = (hq + 2 * hkv) * hd * d + d * hq * hd + 2 * f * d + d * f
        params = 2 * v * d + L * (layer + 2 * d) + d
        kv = 2 * L * hkv * hd * 4
        self.assertEqual(rows[("tiny/memory", "weight_bytes")]["value"], params * 4)
        self.assertEqual(rows[("tiny/memory", "kv_bytes_per_token")]["value"], kv)
        self.assertNotIn(("tiny/memory", "max_batch_at_32k"), rows)

        dec = "tiny/decode/S=24/B=2"
        t = rows[(dec, "decode_step_ms")]
        self.assertGreater(t["value"], 0)
        self.assertEqual(t["n"], 2)
        self.assertLessEqual(t["min"], t["value"])
        self.assertGreaterEqual(t["max"], t["value"])
        self.assertAlmostEqual(rows[(dec, "tokens_per_s")]["value"], 2e3 / t["value"], delta=1e-6)
        read = (params - v * d) * 4 + kv * 2 * 24  # all but the untied input table, + KV
        want = read / (c["copy_gb_per_s"] * 1e9) * 1e3 / t["value"]
        self.assertAlmostEqual(rows[(dec, "roofline_fraction")]["value"], want, delta=1e-9 * want)
        self.assertGreater(rows[(dec, "compile_s")]["value"], 0)

        pre = "tiny/prefill/S=16/B=1"
        t = rows[(pre, "ttft_ms")]
        self.assertGreater(t["value"], 0)
        flops = 2 * (L * layer * 16 + v * d)
        want = flops / (c["gemm_tflop_per_s"] * 1e12) * 1e3 / t["value"]
        self.assertAlmostEqual(rows[(pre, "roofline_fraction")]["value"], want, delta=1e-9 * want)

    def test_bad_case_is_refused(self):
        p = subprocess.run([sys.executable, SCRIPT, "--tiny", "--device", "cpu", "--cases",
                            "decode:0:5", "--out", os.path.join(self.tmp.name, "x.json")],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(p.returncode, 2)
        self.assertIn("benchmark case 'decode:0:5'", p.stderr)


class MatchesTransformers(unittest.TestCase):
    """The peer's LLaMA (fused wqkv/w13, LLaMA-3 RoPE scaling, static cache) against
    transformers' LlamaForCausalLM with the same weights, fp32, prefill then two decode steps."""

    def test_logits(self):
        try:
            from transformers import LlamaConfig, LlamaForCausalLM
        except ImportError:
            self.skipTest("transformers not installed")
        peer = load_peer()
        c = dict(peer.MODELS["tiny"], rope_factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                 original_max_pos=16, rope_theta=500000.0)
        torch.manual_seed(0)
        model = peer.PeerLlama(c, torch.float32, torch.device("cpu")).eval()
        with torch.no_grad():  # norm weights away from 1 so that a missing one shows
            for p in model.parameters():
                if p.dim() == 1:
                    p.uniform_(0.5, 1.5)
        cfg = LlamaConfig(vocab_size=c["vocab"], hidden_size=c["dim"], intermediate_size=c["ffn"],
                          num_hidden_layers=c["layers"], num_attention_heads=c["heads"],
                          num_key_value_heads=c["kv_heads"], head_dim=c["head_dim"],
                          rms_norm_eps=c["eps"], tie_word_embeddings=False,
                          max_position_embeddings=64,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 16},
                          rope_theta=500000.0)
        cfg._attn_implementation = "eager"
        ref = LlamaForCausalLM(cfg).eval()
        q, kv = c["heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"]
        with torch.no_grad():
            ref.model.embed_tokens.weight.copy_(model.tok_embeddings)
            ref.lm_head.weight.copy_(model.output)
            ref.model.norm.weight.copy_(model.norm)
            for mine, theirs in zip(model.layers, ref.model.layers):
                a = theirs.self_attn
                a.q_proj.weight.copy_(mine.wqkv[:q])
                a.k_proj.weight.copy_(mine.wqkv[q:q + kv])
                a.v_proj.weight.copy_(mine.wqkv[q + kv:])
                a.o_proj.weight.copy_(mine.wo)
                theirs.mlp.gate_proj.weight.copy_(mine.w13[:c["ffn"]])
                theirs.mlp.up_proj.weight.copy_(mine.w13[c["ffn"]:])
                theirs.mlp.down_proj.weight.copy_(mine.w2)
                theirs.input_layernorm.weight.copy_(mine.attention_norm)
                theirs.post_attention_layernorm.weight.copy_(mine.ffn_norm)
        ids = torch.randint(c["vocab"], (2, 30))
        prompt, steps = 28, 2
        with torch.no_grad():
            want = ref(input_ids=ids).logits  # [2, 30, vocab]
            model.setup_cache(2, 32)
            got = [model(ids[:, :prompt], torch.arange(prompt), True)]
            for i in range(steps):
                model.live = prompt + i + 1
                got.append(model(ids[:, prompt + i:prompt + i + 1],
                                 torch.tensor([prompt + i]), False))
        for i, g in enumerate(got):
            w = want[:, prompt - 1 + i]
            err = (g - w).abs().max().item() / w.abs().max().item()
            self.assertLess(err, 1e-4, f"position {prompt - 1 + i}")  # fp32 rounding: ~1e-6


if __name__ == "__main__":
    unittest.main()
