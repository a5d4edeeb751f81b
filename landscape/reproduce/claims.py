"""The paper's claims, each stated with its paired difference across seeds and its spread.

Lee et al. (2021) claim, on the methods they compare:

- C1: IBP has the loosest bound but the smoothest landscape;
- C2: CROWN-IBP and CAP are tighter than IBP but rougher;
- C3: the tightest-slope method is as tight as CROWN-IBP and smoother;
- C4: its verified error is comparable to the best method's.

Tightness is ``bound_gap_common`` (the method's bound gap on every model of the same seed:
smaller is tighter), roughness the loss variation along the gradient over training (``loss
variation``: larger is rougher), and the verified error that of the union of bounds at eps_train.

Every comparison is paired: for each seed the difference ``d_s`` between the two methods' values
(in the direction the claim predicts is positive), then its mean ``m`` and standard deviation
``sd`` across seeds (ddof 1). A directional claim *holds* when ``m - sd > 0`` (the difference
exceeds its spread), is *contradicted* when ``m + sd < 0``, and is *within the spread*
otherwise. "As tight as" and "comparable" hold when ``|m| <= sd`` or the difference favours the
method (``m <= 0`` for "no worse"). With one seed there is no spread: the sign is reported, and
no claim is said to hold.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from bounds.names import PAPER_METHODS

__all__ = ["paired", "claims", "claims_markdown"]

TIGHT, ROUGH, VERIFIED = "bound_gap_common", "loss_variation", "verified_err"


def paired(rows: list[dict], setting: str, a: str, b: str, key: str) -> tuple[float, float, int]:
    """``(mean, sd, n)`` over seeds of ``value(a) - value(b)`` for statistic ``key`` (seeds where
    both ran and both values are finite)."""
    by_seed: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["setting"] == setting and r.get(key) is not None:
            by_seed.setdefault(r["seed"], {})[r["method"]] = float(r[key])
    d = np.asarray([v[a] - v[b] for v in by_seed.values() if a in v and b in v], dtype=float)
    d = d[np.isfinite(d)]
    if not d.size:
        return float("nan"), float("nan"), 0
    return float(d.mean()), float(d.std(ddof=1)) if d.size > 1 else float("nan"), int(d.size)


def _verdict(m: float, sd: float, n: int, equivalence: bool = False) -> str:
    if n == 0 or not math.isfinite(m):
        return "not measured"
    if n == 1 or not math.isfinite(sd):
        favours = m <= 0 if equivalence else m > 0
        return "single seed, no spread: " + ("favours the claim" if favours else "against the claim")
    if equivalence:
        if abs(m) <= sd:
            return "holds (no difference beyond the spread)"
        return "holds (better beyond the spread)" if m < 0 else "does not hold (worse beyond the spread)"
    if m - sd > 0:
        return "holds (exceeds the spread)"
    if m + sd < 0:
        return "contradicted (beyond the spread)"
    return "within the spread (undecided)"


def _line(rows: list[dict], setting: str, a: str, b: str, key: str, text: str, equivalence: bool = False) -> dict:
    m, sd, n = paired(rows, setting, a, b, key)
    return {"text": text, "difference": m, "spread": sd, "seeds": n, "verdict": _verdict(m, sd, n, equivalence)}


def claims(rows: list[dict], setting: str) -> list[dict]:
    """C1-C4 for one setting: ``{"claim", "parts": [{"text", "difference", "spread", "seeds",
    "verdict"}]}``; claims whose methods did not run are left out."""
    methods = {r["method"] for r in rows if r["setting"] == setting}
    out = []
    others = [m for m in PAPER_METHODS if m != "ibp" and m in methods]
    if "ibp" in methods and others:
        parts = []
        for m in others:
            parts.append(_line(rows, setting, "ibp", m, TIGHT, f"gap(IBP) - gap({m}): IBP looser"))
            parts.append(_line(rows, setting, m, "ibp", ROUGH, f"variation({m}) - variation(IBP): IBP smoother"))
        out.append({"claim": "C1: IBP is the loosest bound but has the smoothest landscape", "parts": parts})
    linear = [m for m in ("crown-ibp", "cap") if m in methods]
    if "ibp" in methods and linear:
        parts = []
        for m in linear:
            parts.append(_line(rows, setting, "ibp", m, TIGHT, f"gap(IBP) - gap({m}): {m} tighter"))
            parts.append(_line(rows, setting, m, "ibp", ROUGH, f"variation({m}) - variation(IBP): {m} rougher"))
        out.append({"claim": "C2: CROWN-IBP and CAP are tighter than IBP but rougher", "parts": parts})
    if {"tightest", "crown-ibp"} <= methods:
        parts = [_line(rows, setting, "tightest", "crown-ibp", TIGHT,
                       "gap(tightest) - gap(CROWN-IBP): as tight (no worse beyond the spread)", equivalence=True)]
        for m in linear:
            parts.append(_line(rows, setting, m, "tightest", ROUGH, f"variation({m}) - variation(tightest): smoother"))
        out.append({"claim": "C3: the tightest method is as tight as CROWN-IBP and smoother", "parts": parts})
    if "tightest" in methods and len(methods) > 1:
        best = _best(rows, setting, [m for m in methods if m != "tightest"])
        if best is not None:
            out.append({"claim": "C4: the tightest method's verified error is comparable to the best",
                        "parts": [_line(rows, setting, "tightest", best, VERIFIED,
                                        f"verified(tightest) - verified({best}, the best other): comparable",
                                        equivalence=True)]})
    return out


def _best(rows: list[dict], setting: str, methods: Sequence[str]) -> str | None:
    """The method with the lowest mean verified error among ``methods``."""
    means = {}
    for m in methods:
        v = [float(r[VERIFIED]) for r in rows if r["setting"] == setting and r["method"] == m
             and r.get(VERIFIED) is not None and math.isfinite(float(r[VERIFIED]))]
        if v:
            means[m] = float(np.mean(v))
    return min(means, key=means.get) if means else None


def claims_markdown(rows: list[dict]) -> str:
    """Every setting's claims as Markdown (differences as mean ± sd over the seeds)."""
    lines = ["Claims (paired differences across seeds, mean ± standard deviation; see "
             "landscape/reproduce/claims.py):", ""]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        for c in claims(rows, setting):
            lines.append(f"- **{setting}, {c['claim']}**")
            for p in c["parts"]:
                sd = f" ± {p['spread']:.3g}" if math.isfinite(p["spread"]) else ""
                diff = f"{p['difference']:+.3g}{sd}" if math.isfinite(p["difference"]) else "–"
                lines.append(f"  - {p['text']}: {diff} over {p['seeds']} seed(s): {p['verdict']}")
    return "\n".join(lines) + "\n"
