"""Reference formulas of the UniAttn W_c initialisation (Xiong et al., arXiv 2502.00439), in
numpy, used as an independent oracle by the C++ tests.

  reference: X, Y, Y' are [samples, L, d] (samples padded to L, pads included); per-position means
             over samples; W = V Sigma^+ U^T (mean(Y) - mean(Y')) with mean(X) = U Sigma V^T;
             singular values <= rcond * max(L, d) * eps * s_max are dropped; W_c = W^T.
  tokens:    X, D = Y - Y' are [N, d] rows of real tokens; lambda = r * trace(X^T X) / d;
             W = (X^T X + lambda I)^-1 X^T D; W_c = W^T.

CLI: calib_reference.py reference IN.safetensors OUT.safetensors  (IN holds x, y, y_prime;
OUT gets w_c), or `tokens` with IN holding x, d and metadata-free scalar tensor `ridge`.
"""
import sys

import numpy as np


def reference_wc(x, y, y_prime, rcond=1.0):
    x = np.asarray(x, dtype=np.float64)
    d = np.asarray(y, dtype=np.float64) - np.asarray(y_prime, dtype=np.float64)
    xm, dm = x.mean(axis=0), d.mean(axis=0)
    u, s, vt = np.linalg.svd(xm, full_matrices=False)
    cut = rcond * max(xm.shape) * np.finfo(np.float64).eps * (s.max() if s.size else 0.0)
    s_inv = np.where(s > cut, 1.0 / np.where(s > 0, s, 1.0), 0.0)
    w = vt.T @ (s_inv[:, None] * (u.T @ dm))
    return w.T


def tokens_wc(x, d, ridge):
    x = np.asarray(x, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    xtx = x.T @ x
    lam = ridge * np.trace(xtx) / xtx.shape[0]
    w = np.linalg.solve(xtx + lam * np.eye(xtx.shape[0]), x.T @ d)
    return w.T


def main(argv):
    from safetensors.numpy import load_file, save_file
    mode, src, dst = argv[1:4]
    t = load_file(src)
    if mode == "reference":
        w = reference_wc(t["x"], t["y"], t["y_prime"])
    elif mode == "tokens":
        w = tokens_wc(t["x"], t["d"], float(t["ridge"].reshape(-1)[0]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    save_file({"w_c": np.ascontiguousarray(w)}, dst)


if __name__ == "__main__":
    main(sys.argv)
