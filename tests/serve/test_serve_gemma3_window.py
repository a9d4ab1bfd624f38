#!/usr/bin/env python3
"""uniattn-serve on the real Gemma-3-270M GGUF (CPU, f32): a greedy completion of a prompt of
about 1,100 tokens, past the 512-token window of the model's 15 sliding layers, equals
uniattn-generate's (which decodes over a static cache holding every position). The server keeps
the sliding layers in a block group of their own and gives back the blocks that left the window
(its startup line names that group); afterwards every block is free again. With
--disable-hybrid-kv-cache the server keeps one group, holds fewer blocks in the same memory and
serves the same completion.

Usage: test_serve_gemma3_window.py --serve build/uniattn-serve --generate build/uniattn-generate
       [--model GGUF]   (default: $UNIATTN_TEST_DATA/gemma3_270m/gemma-3-270m-q4_k_m.gguf)
"""
import argparse
import json
import os
import re
import subprocess
import sys
import urllib.request

PARAGRAPH = ("The river flows past the old mill, where the miller counts his sacks of grain and "
             "tells stories of the winters long ago. ")
PROMPT = (PARAGRAPH * 45).strip() + " In the end, the miller said that"
NEW_TOKENS = 20


def get(port, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.read().decode()


def served(exe, model, extra=()):
    """The server's completion, the prompt's token count, the startup line, blocks total/free."""
    proc = subprocess.Popen([exe, "--model", model, "--port", "0", "--kv-memory-gb", "0.25",
                             "--max-model-len", "4096", "--prefill-chunk", "256", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        m = re.match(r"listening on (\d+)", proc.stdout.readline())
        if not m:
            raise SystemExit("FAIL: the server did not start")
        port = int(m.group(1))
        r = json.loads(get(port, "/v1/completions",
                           {"prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0}))
        metrics = dict(line.rsplit(" ", 1) for line in get(port, "/metrics").splitlines()
                       if line and not line.startswith("#"))
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    startup = next((line for line in err.splitlines() if "KV blocks" in line), "")
    return (r["choices"][0]["text"], r["usage"]["prompt_tokens"], startup,
            float(metrics["uniattn_kv_blocks_total"]), float(metrics["uniattn_kv_blocks_free"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", required=True)
    ap.add_argument("--generate", required=True)
    ap.add_argument("--model")
    a = ap.parse_args()
    model = a.model or os.path.join(os.environ.get("UNIATTN_TEST_DATA", "test-data"),
                                    "gemma3_270m", "gemma-3-270m-q4_k_m.gguf")
    text, prompt_tokens, startup, total, free = served(a.serve, model)
    out = subprocess.run([a.generate, "--model", model, "--prompt", PROMPT, "--max-new-tokens",
                          str(NEW_TOKENS)], capture_output=True, text=True, check=True).stdout
    fails = []
    if prompt_tokens <= 512:
        fails.append(f"the prompt has {prompt_tokens} tokens, not more than the 512-token window")
    if not re.search(r"\(\d+ for the sliding layers\)", startup):
        fails.append(f"no block group for the sliding layers: {startup!r}")
    if free != total:
        fails.append(f"{total - free:.0f} blocks still held after the request")
    if not text or not out.rstrip("\n").endswith(text):
        fails.append(f"served {text!r}, uniattn-generate printed {out[-200:]!r}")
    one_text, _, one_startup, one_total, one_free = served(a.serve, model,
                                                           ["--disable-hybrid-kv-cache"])
    if "sliding" in one_startup or one_total >= total or one_free != one_total:
        fails.append(f"--disable-hybrid-kv-cache: {one_startup!r}, {one_free:.0f} of "
                     f"{one_total:.0f} blocks free (hybrid: {total:.0f})")
    if one_text != text:
        fails.append(f"--disable-hybrid-kv-cache served {one_text!r}, the hybrid cache {text!r}")
    print(f"prompt {prompt_tokens} tokens; served {text!r}; {startup}; one group: {one_startup}")
    for f in fails:
        print("FAIL:", f)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
