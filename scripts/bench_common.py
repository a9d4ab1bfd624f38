"""What the Python benchmarks share (scripts/bench_peer.py, scripts/bench_transformers.py): the
commit a run measured, the rows of uniattn-bench's JSON layout written after every case, and the
guard that turns one failing shape into an "oom" or "error" row instead of ending the run."""
import json
import os
import subprocess

import torch


def git_commit():
    """$UNIATTN_COMMIT, else the repository's HEAD, else "unknown" (e.g. a copy without git)."""
    env = os.environ.get("UNIATTN_COMMIT")
    if env:
        return env
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=os.path.dirname(os.path.abspath(__file__))
                              ).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


class Results:
    """doc (with a "rows" list) kept in `out`: rewritten through a temporary file on every flush,
    so a killed run leaves the rows of its finished cases. Each added row is also printed, with
    the variant column `variant_width` characters wide."""

    def __init__(self, out, doc, variant_width=14):
        self.out, self.doc, self.variant_width = out, doc, variant_width
        self.flush()

    def add(self, case, variant, metric, value, unit, note=None, stats=None):
        row = {"case": case, "variant": variant, "metric": metric, "value": value, "unit": unit}
        if note:
            row["note"] = note
        if stats:
            row.update({k: stats[k] for k in ("n", "stdev", "min", "max")})
        self.doc["rows"].append(row)
        spread = f" +- {stats['stdev']:.4f} (n={stats['n']})" if stats else ""
        print(f"{case:36s} {variant:{self.variant_width}s} {metric:20s} {value:14.4f} {unit}"
              f"{spread}" + (f"  # {note}" if note else ""), flush=True)

    def flush(self):
        d = os.path.dirname(self.out)
        if d:
            os.makedirs(d, exist_ok=True)
        tmp = self.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.doc, f, indent=2)
            f.write("\n")
        os.replace(tmp, self.out)


def guarded(res, case, variant, fn, cleanup, detail_chars):
    """fn()'s value; None after recording an out-of-memory ("oom") or any other exception
    ("error", its first `detail_chars` characters) as a row. cleanup() runs in every case."""
    try:
        return fn()
    except torch.OutOfMemoryError as e:
        res.add(case, variant, "oom", -1, "", str(e).splitlines()[0][:200])
    except Exception as e:  # record and go on: one failing shape must not lose the rest
        res.add(case, variant, "error", -1, "", f"{type(e).__name__}: {str(e)[:detail_chars]}")
    finally:
        cleanup()
    return None
