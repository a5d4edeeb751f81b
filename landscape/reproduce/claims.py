"""The paper's claims, each decided by a test whose error rate is controlled.

Lee et al. (2021) claim, on the methods they compare:

- C1: IBP has the loosest bound but the smoothest landscape;
- C2: CROWN-IBP and CAP are tighter than IBP but rougher;
- C3: the tightest-slope method is as tight as CROWN-IBP and smoother;
- C4: its verified error is comparable to the best method's.

Metrics (one number per run, :mod:`landscape.reproduce.summary`): tightness is
``bound_gap_common`` (the method's bound gap averaged over every model of the same setting and
seed; smaller is tighter); roughness is the **loss variation** along the gradient, averaged over
all probes of the run (``loss_variation``; larger is rougher), the paper's metric and the
declared *primary* one. The gradient cosine (``grad_cosine``; smaller is rougher), the smoothness
estimate (``smoothness``; larger is rougher) and the sign-flip rate (``sign_flip``; larger is
rougher) are *secondary*: each is tested the same way, reported beside the primary verdict, and
the summary says where one disagrees with it. Verified error is that of the union of bounds at
eps_train.

Every comparison is paired by seed: ``d_s = value_s(a) - value_s(b)``, oriented so that the claim
predicts ``d > 0``; ``n`` seeds, mean ``m``, standard deviation ``sd`` (ddof 1), standard error
``se = sd / sqrt(n)``, ``t = m / se`` with ``n - 1`` degrees of freedom.

- A **directional** part ("IBP is looser", "CROWN-IBP is rougher") is a one-sided paired t test
  of ``H0: mu <= 0`` at ``ALPHA = 0.05``: ``p = P(T_{n-1} >= t)``. It *holds* when ``p < ALPHA``,
  is *contradicted* when the opposite one-sided test rejects (``P(T_{n-1} <= t) < ALPHA``), and is
  *undecided* otherwise. Under no true difference each of "holds" and "contradicted" is said at
  most 5 % of the time.
- An **equivalence** part ("as tight as", "comparable") is two one-sided tests (TOST) against a
  margin ``delta`` fixed in the profile before the runs, ``H0: |mu| >= delta``:
  ``p = max(P(T_{n-1} >= (m + delta) / se), P(T_{n-1} <= (m - delta) / se))``. It is
  *equivalent* when ``p < ALPHA`` (the 90 % interval lies inside
  ``(-delta, delta)``), *not equivalent* when the 90 % interval lies wholly outside it, and
  *undecided* otherwise (the interval is wider than the margin allows).

``ci`` is the two-sided 90 % interval ``m +- t_{0.95, n-1} se``: each end is a one-sided 95 %
confidence bound, so the interval and every verdict above agree (a directional part holds exactly
when ``ci[0] > 0``; equivalence exactly when ``ci`` lies inside the margins). ``ci95`` is the
two-sided 95 % interval, for readers who want it. An undecided part gives the number of seeds the
observed mean and spread would need (``seeds_needed``: the smallest ``n`` with ``(t_{0.95,n-1} +
t_{0.80,n-1}) sd / sqrt(n) <= |m|`` for a directional part, ``<= delta - |m|`` with
``t_{0.90,n-1}`` in place of ``t_{0.80,n-1}`` for equivalence: 80 % power under the observed
values), or None when no number would do (the mean points the other way, or sits beyond the
margin).

A claim *holds* when every part holds (directional) or is equivalent; it is *contradicted* when
a part is contradicted or not equivalent above the margin (worse than claimed); it *differs
favourably* when the only parts that fail are not equivalent below the margin (tighter, or a
lower verified error, than claimed); else it is *undecided*. Fewer than two seeds, or runs
with fewer than :data:`MIN_FINAL_PROBES` probes at the final eps, give no verdict ("undecided",
with the reason).

Margins (:class:`Margins`) come from the setting's ``reproduce: claims:`` section: ``verified_err``
(absolute, as a fraction: 0.01 is one point of verified error) and ``gap_relative`` (a share of
CROWN-IBP's mean common-model gap in the setting).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from common.names import PAPER_METHODS

__all__ = [
    "ALPHA",
    "MIN_FINAL_PROBES",
    "Margins",
    "SECONDARY",
    "paired",
    "directional_test",
    "equivalence_test",
    "claims",
    "claims_markdown",
]

TIGHT, ROUGH, VERIFIED = "bound_gap_common", "loss_variation", "verified_err"
ALPHA = 0.05
"""Error rate of every one-sided test (and of each of TOST's two)."""
POWER = 0.80
MAX_SEEDS = 10_000
"""The largest ``seeds_needed`` reported (None beyond it)."""
MIN_FINAL_PROBES = 3
"""Probes at the final eps a run needs before its landscape statistics are judged."""

SECONDARY: tuple[tuple[str, int, str], ...] = (
    ("grad_cosine", -1, "gradient cosine"),
    ("smoothness", +1, "smoothness estimate"),
    ("sign_flip", +1, "sign-flip rate"),
)
"""Secondary roughness metrics: (summary key, sign (+1: larger is rougher, -1: smaller is
rougher), name)."""

DIRECTIONAL_VERDICTS = ("holds", "contradicted", "undecided")
EQUIVALENCE_VERDICTS = ("equivalent", "not equivalent", "undecided")


@dataclass(frozen=True)
class Margins:
    """Equivalence margins, declared in the setting before its runs.

    ``verified_err``: C4's margin on the difference of verified errors (fraction; 0.01 = one point).
    ``gap_relative``: C3's margin on the difference of common-model bound gaps, as a share of
    CROWN-IBP's mean gap in the setting.
    """

    verified_err: float = 0.01
    gap_relative: float = 0.10

    def __post_init__(self) -> None:
        for name in ("verified_err", "gap_relative"):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or v <= 0
            ):
                raise ValueError(f"claims margin {name} must be a finite number > 0, got {v!r}")
            object.__setattr__(self, name, float(v))

    @classmethod
    def from_dict(cls, data: dict | None) -> Margins:
        data = dict(data or {})
        unknown = sorted(set(data) - {"verified_err", "gap_relative"})
        if unknown:
            raise ValueError(
                f"unknown claims margin {unknown[0]!r} (known: verified_err, gap_relative)"
            )
        return cls(**data)


def paired(rows: list[dict], setting: str, a: str, b: str, key: str) -> np.ndarray:
    """The per-seed differences ``value(a) - value(b)`` of statistic ``key`` (seeds where both
    ran and both values are finite), in seed order."""
    by_seed: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["setting"] == setting and r.get(key) is not None:
            by_seed.setdefault(int(r["seed"]), {})[r["method"]] = float(r[key])
    d = np.asarray(
        [
            by_seed[s][a] - by_seed[s][b]
            for s in sorted(by_seed)
            if a in by_seed[s] and b in by_seed[s]
        ],
        dtype=float,
    )
    return d[np.isfinite(d)]


def _moments(d: np.ndarray) -> tuple[int, float, float, float]:
    n = int(d.size)
    m = float(d.mean()) if n else float("nan")
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    return n, m, sd, sd / math.sqrt(n) if n > 1 else float("nan")


def _interval(m: float, se: float, n: int, level: float) -> tuple[float, float]:
    if n < 2 or not math.isfinite(se):
        return float("nan"), float("nan")
    if se == 0.0:
        return m, m
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return m - half, m + half


def _upper_tail(x: float, df: int) -> float:
    """``P(T_df >= x)`` (``x`` may be infinite: a zero standard error); NaN stays NaN."""
    if math.isnan(x):
        return float("nan")
    return float(stats.t.sf(x, df))


def _base(d: np.ndarray) -> dict[str, Any]:
    n, m, sd, se = _moments(d)
    return {
        "mean": m,
        "sd": sd,
        "seeds": n,
        "ci": _interval(m, se, n, 0.90),
        "ci95": _interval(m, se, n, 0.95),
    }


def _seeds_needed(m: float, sd: float, room: float, power_q: float) -> int | None:
    """The smallest n in [2, 10000] with ``(t_{1-ALPHA,n-1} + t_{power_q,n-1}) sd / sqrt(n) <= room``."""
    if not (math.isfinite(room) and room > 0 and math.isfinite(sd)):
        return None
    if sd == 0.0:
        return 2
    # t quantiles exceed the normal ones, so the normal answer is a lower bound to search up from
    z = float(stats.norm.ppf(1 - ALPHA) + stats.norm.ppf(power_q))
    start = max(2, int((z * sd / room) ** 2))
    if start > MAX_SEEDS:
        return None
    for n in range(start, MAX_SEEDS + 1):
        if (stats.t.ppf(1 - ALPHA, n - 1) + stats.t.ppf(power_q, n - 1)) * sd / math.sqrt(
            n
        ) <= room:
            return n
    return None


def directional_test(diffs: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """One-sided paired t test that the mean of ``diffs`` is > 0 (see the module docstring):
    ``{"verdict", "mean", "sd", "seeds", "ci", "ci95", "p", "seeds_needed"}``."""
    d = np.asarray(diffs, dtype=float)
    out = _base(d)
    n, m, sd = out["seeds"], out["mean"], out["sd"]
    out["seeds_needed"] = None
    if n < 2:
        out.update(
            p=float("nan"), verdict="undecided", reason=f"{n} seed(s): a test needs at least 2"
        )
        return out
    se = sd / math.sqrt(n)
    t = m / se if se > 0 else math.copysign(math.inf, m) if m != 0 else 0.0
    p, p_against = _upper_tail(t, n - 1), _upper_tail(-t, n - 1)
    out["p"] = p
    if p < ALPHA:
        out["verdict"] = "holds"
    elif p_against < ALPHA:
        out["verdict"] = "contradicted"
    else:
        out["verdict"] = "undecided"
        out["seeds_needed"] = _seeds_needed(m, sd, m, POWER) if m > 0 else None
    return out


def equivalence_test(diffs: Sequence[float] | np.ndarray, delta: float) -> dict[str, Any]:
    """TOST of ``|mean(diffs)| < delta`` (see the module docstring): ``{"verdict", "mean", "sd",
    "seeds", "ci", "ci95", "p", "margin", "seeds_needed", "direction"}``; ``direction`` says on
    which side of the margins a "not equivalent" mean lies (``below``: ``diffs < -delta``)."""
    d = np.asarray(diffs, dtype=float)
    out = _base(d)
    n, m, sd = out["seeds"], out["mean"], out["sd"]
    out.update(margin=float(delta), seeds_needed=None, direction=None)
    if not (math.isfinite(delta) and delta > 0):
        out.update(p=float("nan"), verdict="undecided", reason=f"no valid margin ({delta!r})")
        return out
    if n < 2:
        out.update(
            p=float("nan"), verdict="undecided", reason=f"{n} seed(s): a test needs at least 2"
        )
        return out
    se = sd / math.sqrt(n)
    if se == 0.0:
        p = 0.0 if abs(m) < delta else 1.0
    else:
        p = max(_upper_tail((m + delta) / se, n - 1), _upper_tail((delta - m) / se, n - 1))
    out["p"] = p
    low, high = out["ci"]
    if p < ALPHA:
        out["verdict"] = "equivalent"
    elif low >= delta or high <= -delta:
        out["verdict"] = "not equivalent"
        out["direction"] = "above" if low >= delta else "below"
    else:
        out["verdict"] = "undecided"
        out["seeds_needed"] = _seeds_needed(m, sd, delta - abs(m), 0.90)
    return out


def _part(text: str, metric: str, test: dict[str, Any], kind: str) -> dict[str, Any]:
    return {"text": text, "metric": metric, "test": kind, **test}


def _direction(rows, setting, a, b, key, text) -> dict[str, Any]:
    return _part(
        text, key, directional_test(paired(rows, setting, a, b, key)), "paired one-sided t"
    )


def _rough(
    rows: list[dict], setting: str, rougher: str, smoother: str, text: str
) -> dict[str, Any]:
    """The primary roughness part (loss variation) with the secondary metrics' tests beside it."""
    part = _direction(rows, setting, rougher, smoother, ROUGH, text)
    secondary = []
    for key, sign, name in SECONDARY:
        d = paired(rows, setting, rougher, smoother, key)
        if not d.size:
            continue
        test = directional_test(sign * d)
        disagrees = (
            test["verdict"] in ("holds", "contradicted") and test["verdict"] != part["verdict"]
        )
        secondary.append({"metric": key, "name": name, "disagrees": disagrees, **test})
    part["secondary"] = secondary
    return part


def _final_probe_shortfall(rows: list[dict], setting: str) -> list[str]:
    """Runs of ``setting`` with fewer than :data:`MIN_FINAL_PROBES` probes at the final eps
    (rows that do not say how many are taken as enough)."""
    short = []
    for r in rows:
        if r["setting"] != setting or r.get("probes_final_eps") is None:
            continue
        if int(r["probes_final_eps"]) < MIN_FINAL_PROBES:
            short.append(f"{r['method']} (seed {r['seed']}): {int(r['probes_final_eps'])}")
    return short


def _claim(name: str, parts: list[dict]) -> dict[str, Any]:
    """A claim's verdict from its parts. An equivalence part that is "not equivalent" below the
    margin (tightest tighter, or with a lower verified error, beyond it) refutes the claim as
    stated but in the method's favour: the claim then "differs favourably" unless another part
    is contradicted."""
    verdicts = [p["verdict"] for p in parts]
    better = [p["verdict"] == "not equivalent" and p.get("direction") == "below" for p in parts]
    if all(v in ("holds", "equivalent") for v in verdicts):
        verdict = "holds"
    elif any(
        v == "contradicted" or (v == "not equivalent" and not b) for v, b in zip(verdicts, better)
    ):
        verdict = "contradicted"
    elif all(v in ("holds", "equivalent") or b for v, b in zip(verdicts, better)):
        verdict = "differs favourably"
    else:
        verdict = "undecided"
    return {"claim": name, "verdict": verdict, "parts": parts}


def claims(rows: list[dict], setting: str, margins: Margins | None = None) -> list[dict]:
    """C1-C4 for one setting (see the module docstring): ``[{"claim", "verdict", "parts":
    [{"text", "metric", "test", "verdict", "mean", "sd", "seeds", "ci", "ci95", "p",
    "seeds_needed", ...}]}]``; claims whose methods did not run are left out. When a run has too
    few probes at the final eps, every part is "undecided" with that ``reason``."""
    margins = margins or Margins()
    methods = {r["method"] for r in rows if r["setting"] == setting}
    out = []
    others = [m for m in PAPER_METHODS if m != "ibp" and m in methods]
    if "ibp" in methods and others:
        parts = []
        for m in others:
            parts.append(
                _direction(rows, setting, "ibp", m, TIGHT, f"gap(IBP) - gap({m}) > 0: IBP looser")
            )
            parts.append(
                _rough(
                    rows, setting, m, "ibp", f"variation({m}) - variation(IBP) > 0: IBP smoother"
                )
            )
        out.append(_claim("C1: IBP is the loosest bound but has the smoothest landscape", parts))
    linear = [m for m in ("crown-ibp", "cap") if m in methods]
    if "ibp" in methods and linear:
        parts = []
        for m in linear:
            parts.append(
                _direction(rows, setting, "ibp", m, TIGHT, f"gap(IBP) - gap({m}) > 0: {m} tighter")
            )
            parts.append(
                _rough(rows, setting, m, "ibp", f"variation({m}) - variation(IBP) > 0: {m} rougher")
            )
        out.append(_claim("C2: CROWN-IBP and CAP are tighter than IBP but rougher", parts))
    if {"tightest", "crown-ibp"} <= methods:
        delta = margins.gap_relative * _mean_of(rows, setting, "crown-ibp", TIGHT)
        test = equivalence_test(paired(rows, setting, "tightest", "crown-ibp", TIGHT), delta)
        parts = [
            _part(
                f"|gap(tightest) - gap(CROWN-IBP)| < {margins.gap_relative:g} x CROWN-IBP's gap: as tight",
                TIGHT,
                test,
                "TOST",
            )
        ]
        for m in linear:
            parts.append(
                _rough(
                    rows,
                    setting,
                    m,
                    "tightest",
                    f"variation({m}) - variation(tightest) > 0: smoother",
                )
            )
        out.append(_claim("C3: the tightest method is as tight as CROWN-IBP and smoother", parts))
    if "tightest" in methods and len(methods) > 1:
        best = _best(rows, setting, [m for m in methods if m != "tightest"])
        if best is not None:
            test = equivalence_test(
                paired(rows, setting, "tightest", best, VERIFIED), margins.verified_err
            )
            text = (
                f"|verified(tightest) - verified({best})| < {100 * margins.verified_err:g} point(s): comparable "
                f"to the best other (chosen by its mean)"
            )
            out.append(
                _claim(
                    "C4: the tightest method's verified error is comparable to the best",
                    [_part(text, VERIFIED, test, "TOST")],
                )
            )
    _undecided_without_final_probes(out, rows, setting)
    return out


def _undecided_without_final_probes(out: list[dict], rows: list[dict], setting: str) -> None:
    """Mark every claim of ``out`` and its parts "undecided", with the reason, when a run of the
    setting has too few probes at the final eps."""
    short = _final_probe_shortfall(rows, setting)
    if short:
        reason = (
            f"runs with fewer than {MIN_FINAL_PROBES} probes at the final eps ({'; '.join(short)}): "
            "no verdict"
        )
        for c in out:
            c["verdict"] = "undecided"
            for p in c["parts"]:
                both = f"{p['reason']}; {reason}" if p.get("reason") else reason
                p.update(verdict="undecided", reason=both, seeds_needed=None)
                for s in p.get("secondary", []):
                    s.update(verdict="undecided", disagrees=False)


def _mean_of(rows: list[dict], setting: str, method: str, key: str) -> float:
    v = [
        float(r[key])
        for r in rows
        if r["setting"] == setting
        and r["method"] == method
        and r.get(key) is not None
        and math.isfinite(float(r[key]))
    ]
    return float(np.mean(v)) if v else float("nan")


def _best(rows: list[dict], setting: str, methods: Sequence[str] | set[str]) -> str | None:
    """The method with the lowest mean verified error among ``methods``; a tie goes to the one
    first in :data:`PAPER_METHODS`, then by name (never to a set's hash order, which changes from
    one process to the next)."""

    def rank(m: str) -> tuple[int, str]:
        return (PAPER_METHODS.index(m) if m in PAPER_METHODS else len(PAPER_METHODS), m)

    means = {m: _mean_of(rows, setting, m, VERIFIED) for m in sorted(methods, key=rank)}
    means = {m: v for m, v in means.items() if math.isfinite(v)}
    return min(means, key=lambda m: means[m]) if means else None


def _num(v: Any) -> str:
    return f"{v:+.3g}" if isinstance(v, (int, float)) and math.isfinite(v) else "–"


def _p(v: Any) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "–"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def describe(p: dict[str, Any]) -> str:
    """One part (or secondary test) in words: mean, 90 % interval, p, seeds, verdict."""
    low, high = p.get("ci") or (float("nan"), float("nan"))
    tested = isinstance(p.get("p"), (int, float)) and math.isfinite(p["p"])
    interval = f", 90 % CI [{_num(low)}, {_num(high)}], p = {_p(p.get('p'))}" if tested else ""
    text = f"mean {_num(p.get('mean'))}{interval}, {p.get('seeds', 0)} seed(s): **{p['verdict']}**"
    if p.get("direction"):
        text += f" (the difference lies {p['direction']} the margin)"
    if p.get("verdict") == "undecided" and p.get("reason"):
        text += f" ({p['reason']})"
    elif p.get("verdict") == "undecided":
        need = p.get("seeds_needed")
        text += (
            f" (the observed mean and spread would need about {need} seeds)"
            if need
            else " (no number of seeds would decide it at the observed mean)"
        )
    return text


def claims_markdown(rows: list[dict], margins: dict[str, Margins] | None = None) -> str:
    """Every setting's claims as Markdown (``margins``: per setting; default :class:`Margins`)."""
    lines = [
        f"Claims (paired across seeds; directional parts by a one-sided paired t test, equivalence by "
        f"TOST, each at {ALPHA:g}; intervals are 90 % two-sided, each end a one-sided 95 % bound; "
        "roughness by the loss variation, the primary metric, with the gradient cosine, smoothness "
        "estimate and sign-flip rate as secondary metrics, their differences oriented so that > 0 agrees "
        "with the claim; see docs/claims.md):",
        "",
    ]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = (margins or {}).get(setting) or Margins()
        for c in claims(rows, setting, mine):
            lines.append(f"- **{setting}, {c['claim']}: {c['verdict']}**")
            for p in c["parts"]:
                lines.append(f"  - {p['text']}: {describe(p)}")
                for s in p.get("secondary", []):
                    flag = " — disagrees with the loss variation" if s["disagrees"] else ""
                    lines.append(f"    - secondary, {s['name']}: {describe(s)}{flag}")
    return "\n".join(lines) + "\n"
