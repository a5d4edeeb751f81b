"""The claims' statistics: known answers from textbook formulas, error rates by simulation.

Every number here is computed independently of landscape/reproduce/claims.py (by hand-written
t-statistics and SciPy's distributions), so a wrong ddof, tail or margin changes an answer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from landscape.reproduce.claims import (
    ALPHA,
    Margins,
    claims,
    claims_markdown,
    directional_test,
    equivalence_test,
    paired,
)


def _rows(
    values: dict[str, list[float]], key: str, setting: str = "s", **extra: float
) -> list[dict]:
    """Rows of one statistic per (method, seed)."""
    return [
        {"setting": setting, "seed": k, "method": m, key: v, **extra}
        for m, vs in values.items()
        for k, v in enumerate(vs)
    ]


def test_paired_differences_follow_seeds_and_drop_missing() -> None:
    rows = [
        {"setting": "s", "seed": 2, "method": "a", "x": 5.0},
        {"setting": "s", "seed": 2, "method": "b", "x": 1.0},
        {"setting": "s", "seed": 0, "method": "a", "x": 3.0},
        {"setting": "s", "seed": 0, "method": "b", "x": 2.5},
        {"setting": "s", "seed": 1, "method": "a", "x": 9.0},  # b missing for seed 1
        {"setting": "t", "seed": 0, "method": "b", "x": -100.0},
    ]
    assert paired(rows, "s", "a", "b", "x").tolist() == [0.5, 4.0]


def test_directional_test_known_answer() -> None:
    d = [0.3, 0.1, 0.5, 0.2]
    n, m, sd = 4, 0.275, float(np.std(d, ddof=1))  # sd = 0.17078...
    se = sd / math.sqrt(n)
    t = m / se
    res = directional_test(d)
    assert res["mean"] == pytest.approx(m) and res["sd"] == pytest.approx(0.170782512765993)
    assert res["p"] == pytest.approx(1 - stats.t.cdf(t, n - 1))
    q = stats.t.ppf(0.95, n - 1)
    assert res["ci"] == pytest.approx((m - q * se, m + q * se))
    q95 = stats.t.ppf(0.975, n - 1)
    assert res["ci95"] == pytest.approx((m - q95 * se, m + q95 * se))
    assert res["verdict"] == "holds" and res["ci"][0] > 0
    assert directional_test([-x for x in d])["verdict"] == "contradicted"


def test_directional_undecided_gives_the_seeds_it_would_need() -> None:
    d = [0.2, -0.1, 0.3]  # mean 0.133, sd 0.208: p about 0.2
    res = directional_test(d)
    assert res["verdict"] == "undecided" and 0.05 < res["p"] < 0.5
    need = res["seeds_needed"]
    m, sd = float(np.mean(d)), float(np.std(d, ddof=1))

    def enough(n: int) -> bool:
        return (stats.t.ppf(0.95, n - 1) + stats.t.ppf(0.80, n - 1)) * sd / math.sqrt(n) <= m

    assert enough(need) and not enough(need - 1)
    assert (
        directional_test([-0.2, 0.1, -0.3])["seeds_needed"] is None
    )  # the mean points the other way


def test_one_seed_or_none_is_undecided() -> None:
    assert directional_test([0.5])["verdict"] == "undecided"
    assert directional_test([])["verdict"] == "undecided"
    assert equivalence_test([0.0], 1.0)["verdict"] == "undecided"


def test_equivalence_known_answers() -> None:
    delta = 0.01
    d = [0.002, -0.001, 0.003, 0.000, 0.001]
    n, m, sd = 5, float(np.mean(d)), float(np.std(d, ddof=1))
    se = sd / math.sqrt(n)
    p = max(stats.t.sf((m + delta) / se, n - 1), stats.t.sf((delta - m) / se, n - 1))
    res = equivalence_test(d, delta)
    assert res["p"] == pytest.approx(p) and res["verdict"] == "equivalent"
    assert -delta < res["ci"][0] and res["ci"][1] < delta
    # far above the margin with a tight spread: not equivalent, and it says on which side
    far = equivalence_test([0.05, 0.06, 0.055], delta)
    assert far["verdict"] == "not equivalent" and far["direction"] == "above"
    assert equivalence_test([-0.05, -0.06, -0.055], delta)["direction"] == "below"
    # the README's modern C4 case: mean -0.5 points, a 90 % interval of -2.8 to +1.8 points
    wide = equivalence_test([-0.03, 0.02, 0.005, -0.02, 0.0], delta)
    assert (
        wide["verdict"] == "undecided"
        and wide["seeds_needed"] is not None
        and wide["seeds_needed"] > 5
    )


def test_equivalence_gets_no_easier_with_noise() -> None:
    """The old rule (|m| <= sd) called noisy runs equivalent; TOST calls them undecided."""
    rng = np.random.default_rng(0)
    noisy = rng.normal(0.0, 0.05, size=4)
    assert equivalence_test(noisy, 0.01)["verdict"] == "undecided"


@pytest.mark.parametrize("n", [3, 5])
def test_false_positive_rate_under_no_difference_stays_at_most_five_percent(n: int) -> None:
    """Under no true difference, "holds" is said at most ALPHA of the time (one-sided test)."""
    rng = np.random.default_rng(12345 + n)
    trials = 2000
    holds = sum(
        directional_test(rng.normal(0.0, 1.0, size=n))["verdict"] == "holds" for _ in range(trials)
    )
    rate = holds / trials
    # exact rate 0.05; three binomial standard errors above it still fails a rule at 11 %
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / trials), rate


def test_tost_false_equivalence_rate_at_the_margin_stays_at_most_five_percent() -> None:
    """With the true difference exactly at the margin, "equivalent" is said at most ALPHA of the time."""
    rng = np.random.default_rng(7)
    trials, delta = 2000, 0.5
    hits = sum(
        equivalence_test(rng.normal(delta, 1.0, size=6), delta)["verdict"] == "equivalent"
        for _ in range(trials)
    )
    assert hits / trials <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / trials), hits / trials


def _paper_rows(
    seeds: int, tight_gap: float, var_tight: float, verified_tight: float
) -> list[dict]:
    """Four methods over ``seeds`` seeds with per-seed noise; IBP loose and smooth."""
    rng = np.random.default_rng(3)
    rows = []
    base = {
        "ibp": (10.0, 0.01, 0.60),
        "crown-ibp": (0.5, 0.10, 0.50),
        "cap": (0.55, 0.09, 0.505),
        "tightest": (tight_gap, var_tight, verified_tight),
    }
    for k in range(seeds):
        shift = rng.normal(0, 0.01)
        for m, (gap, var, ver) in base.items():
            rows.append(
                {
                    "setting": "s",
                    "seed": k,
                    "method": m,
                    "bound_gap_common": gap + rng.normal(0, 0.005),
                    "loss_variation": var + shift + rng.normal(0, 0.002),
                    "grad_cosine": 0.9 - 5 * var + rng.normal(0, 0.01),
                    "verified_err": ver + rng.normal(0, 0.002),
                    "probes_final_eps": 10,
                }
            )
    return rows


def test_claims_known_answer_all_hold() -> None:
    rows = _paper_rows(6, tight_gap=0.5, var_tight=0.05, verified_tight=0.50)
    out = {
        c["claim"][:2]: c for c in claims(rows, "s", Margins(verified_err=0.01, gap_relative=0.1))
    }
    assert set(out) == {"C1", "C2", "C3", "C4"}
    assert all(c["verdict"] == "holds" for c in out.values()), {
        k: [p["verdict"] for p in c["parts"]] for k, c in out.items()
    }
    c3 = out["C3"]["parts"]
    assert c3[0]["test"] == "TOST" and c3[0]["margin"] == pytest.approx(
        0.1 * np.mean([r["bound_gap_common"] for r in rows if r["method"] == "crown-ibp"])
    )
    rough = c3[1]
    assert rough["metric"] == "loss_variation" and [s["metric"] for s in rough["secondary"]] == [
        "grad_cosine"
    ]
    md = claims_markdown(rows, {"s": Margins()})
    assert "90 % CI" in md and "p = " in md and "C3" in md


def test_claims_contradicted_and_undecided_parts_decide_the_claim() -> None:
    rows = _paper_rows(
        6, tight_gap=0.8, var_tight=0.12, verified_tight=0.50
    )  # looser and rougher than CROWN-IBP
    out = {c["claim"][:2]: c for c in claims(rows, "s")}
    assert out["C3"]["verdict"] == "contradicted"
    assert (
        out["C3"]["parts"][0]["verdict"] == "not equivalent"
        and out["C3"]["parts"][0]["direction"] == "above"
    )
    assert out["C3"]["parts"][1]["verdict"] == "contradicted"
    two = _paper_rows(1, tight_gap=0.5, var_tight=0.05, verified_tight=0.5)
    assert all(c["verdict"] == "undecided" for c in claims(two, "s"))


def test_a_secondary_metric_that_disagrees_is_flagged() -> None:
    rows = _paper_rows(6, tight_gap=0.5, var_tight=0.05, verified_tight=0.50)
    for r in rows:  # make the gradient cosine say tightest is rougher than CROWN-IBP
        if r["method"] == "tightest":
            r["grad_cosine"] = 0.1 + 0.001 * r["seed"]
    c3 = next(c for c in claims(rows, "s") if c["claim"].startswith("C3"))
    sec = c3["parts"][1]["secondary"][0]
    assert (
        c3["parts"][1]["verdict"] == "holds"
        and sec["verdict"] == "contradicted"
        and sec["disagrees"]
    )
    assert "disagrees with the loss variation" in claims_markdown(rows)


def test_too_few_probes_at_the_final_eps_gives_no_verdict() -> None:
    rows = _paper_rows(6, tight_gap=0.5, var_tight=0.05, verified_tight=0.50)
    for r in rows:
        r["probes_final_eps"] = 1
    out = claims(rows, "s")
    assert all(c["verdict"] == "undecided" for c in out)
    assert all(
        "fewer than 3 probes at the final eps" in p["reason"] for c in out for p in c["parts"]
    )


def test_margins_are_validated() -> None:
    assert Margins.from_dict({"verified_err": 0.02}).verified_err == 0.02
    with pytest.raises(ValueError, match="unknown claims margin 'gap'"):
        Margins.from_dict({"gap": 0.1})
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        Margins(verified_err=0.0)
    with pytest.raises(
        ValueError, match="must be a finite number > 0, got True"
    ):  # YAML `true` is no margin
        Margins.from_dict({"verified_err": True})
    with pytest.raises(ValueError, match="got 'abc'"):
        Margins.from_dict({"gap_relative": "abc"})
    assert Margins.from_dict({"verified_err": 1}).verified_err == 1.0 and isinstance(
        Margins.from_dict({"verified_err": 1}).verified_err, float
    )


def test_a_claim_refuted_in_the_methods_favour_differs_favourably() -> None:
    """Tightest tighter than CROWN-IBP beyond the margin: "as tight as" is not equivalent (below),
    and the claim, with its smoothness parts holding, differs favourably instead of being called
    contradicted; looser beyond the margin stays contradicted."""
    tighter = _paper_rows(6, tight_gap=0.3, var_tight=0.05, verified_tight=0.50)
    c3 = next(c for c in claims(tighter, "s") if c["claim"].startswith("C3"))
    assert c3["parts"][0]["verdict"] == "not equivalent" and c3["parts"][0]["direction"] == "below"
    assert all(p["verdict"] == "holds" for p in c3["parts"][1:])
    assert c3["verdict"] == "differs favourably"
    looser = _paper_rows(6, tight_gap=0.7, var_tight=0.05, verified_tight=0.50)
    assert (
        next(c for c in claims(looser, "s") if c["claim"].startswith("C3"))["verdict"]
        == "contradicted"
    )


def test_the_best_other_method_of_a_tie_does_not_depend_on_hash_order() -> None:
    """C4's "best other" is chosen by mean verified error; CROWN-IBP and CAP often tie (same
    model, same certified error), and the choice must not follow a set's iteration order, which
    changes with PYTHONHASHSEED from one process to the next."""
    import os
    import subprocess
    import sys

    code = (
        "from landscape.reproduce.claims import _best; "
        "rows = [{'setting': 's', 'method': m, 'seed': 0, 'verified_err': v} "
        "for m, v in (('tightest', 0.2), ('cap', 0.25), ('crown-ibp', 0.25), ('ibp', 0.3))]; "
        "print(_best(rows, 's', {'cap', 'crown-ibp', 'ibp'}))"
    )
    got = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONHASHSEED=str(seed)),
            check=True,
        ).stdout.strip()
        for seed in range(6)
    }
    assert got == {"crown-ibp"}
