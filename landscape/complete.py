"""``landscape certify --complete``: every sample decided exactly (verified, falsified or timeout).

Order per sample (cheapest first): a clean misclassification is falsified by ``x`` itself; an
attack's adversarial example (checked by a forward pass: inside the clipped ball, misclassified)
falsifies it; a bound method whose every margin lower bound is > 0 verifies it; the rest go to the
exact program of :mod:`bounds.milp` (big-M constants from CROWN with ``optimized`` slopes), one
process per ``jobs``, with a time limit per sample. ``margins=True`` also solves the samples a
bound or an attack decided, for their exact minimum margin (the tightness measures need it).

The program's results are appended sample by sample to ``<out>.progress.h5``; a rerun with the
same settings continues from there, and the finished file replaces it (layout in ``docs/schema.md``).

For sound bounds and a sound program, per sample ``bound margin <= exact minimum margin <= attack
margin``, and over the samples ``attack_err <= exact_err <= exact_err + timeouts / n <=
verified_err <= verified_err_<m>``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bounds import milp
from common import store

__all__ = ["CompleteResult", "run_complete", "tightness_rows", "OPTIMIZED_BOUND", "progress_path"]

#: the bound whose pre-activation bounds set the big-M constants; always reported beside the methods.
OPTIMIZED_BOUND = "crown:optimized"
#: how far outside the ball a counterexample may lie (float rounding of ``x +- eps``).
BALL_TOL = 1e-6


@dataclass
class CompleteResult:
    """Per-sample columns (``samples``), the totals (``totals``: ``n``, ``clean_err``,
    ``pgd_err``, ``attack_err``, ``exact_err``, ``timeouts``, ``verified_err_<m>``,
    ``verified_err``, ...) and the bounds reported (``bounds``: method names)."""

    samples: dict[str, np.ndarray]
    totals: dict[str, Any]
    bounds: list[str]
    tightness: dict[str, list] = field(default_factory=dict)


def progress_path(out: str | Path) -> Path:
    """Where the per-sample results of an unfinished run of ``out`` are kept."""
    return Path(str(out) + ".progress.h5")


def _margin(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``min_{j != y} f_y - f_j`` per sample ``[B]``."""
    with torch.no_grad():
        logits = model(x)
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(
        torch.nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf")
    )
    return true - others.max(1).values


def _bound_margins(
    model64: torch.nn.Module,
    x64: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    name: str,
    domain: Sequence[float],
    batch_size: int,
) -> np.ndarray:
    """Per sample the smallest margin lower bound ``[N]`` of verification method ``name``."""
    import bounds
    from train.evaluate import verifier

    method, slope = verifier(name)
    out = []
    for s in range(0, len(x64), batch_size):
        xb, yb = x64[s : s + batch_size], y[s : s + batch_size]
        with torch.no_grad():
            spec = bounds.margin_spec(yb, int(model64(xb[:1]).shape[1])).to(torch.float64)
            res = bounds.compute_bounds(
                model64,
                xb,
                eps,
                method=method,
                slope=slope,
                C=spec,
                y=yb,
                domain=tuple(domain),
                need_upper=False,
            )
        out.append(res.lower.detach().min(1).values.numpy())
    return np.concatenate(out)


def _check_counterexample(
    model: torch.nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    domain: Sequence[float],
) -> torch.Tensor:
    """``[B]`` bool: ``x_adv`` lies in the clipped ball around ``x`` and ``model`` misclassifies it."""
    with torch.no_grad():
        wrong = model(x_adv.to(x.dtype)).argmax(1) != y
    d = (x_adv.double() - x.double()).reshape(len(x), -1)
    inside = d.abs().max(1).values <= eps + BALL_TOL
    flat = x_adv.double().reshape(len(x), -1)
    inside &= (flat.min(1).values >= domain[0] - BALL_TOL) & (
        flat.max(1).values <= domain[1] + BALL_TOL
    )
    return wrong & inside


def _open_progress(path: Path, settings: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The rows of an unfinished run with the same ``settings`` (ValueError for other settings)."""
    if not path.exists():
        store.write_attrs(str(path), {"kind": "certify-progress", "settings": settings})
        return {}
    data = store.read(str(path))
    old = data["attrs"].get("settings")
    if old != settings:
        diff = sorted(
            k for k in set(old or {}) | set(settings) if (old or {}).get(k) != settings.get(k)
        )
        raise ValueError(
            f"{path} holds a run with other settings ({', '.join(diff)}); delete it to start over"
        )
    rows = data.get("samples", {})
    done = {}
    for r, i in enumerate(rows.get("index", [])):
        done[int(i)] = {k: v[r] for k, v in rows.items() if k != "attrs"}
    return done


@dataclass
class _Screen:
    """What the attacks found before any bound or program ran, per sample ``[N]``: clean
    misclassifications, samples broken by PGD and by the reported attack, the counterexample kept
    (the program's start) and the smallest margin an attack reached."""

    clean_wrong: torch.Tensor
    pgd_broken: torch.Tensor
    attack_broken: torch.Tensor
    x_adv: torch.Tensor
    attack_margin: np.ndarray


def _screen_attacks(
    model: torch.nn.Module,
    model64: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    domain: Sequence[float],
    attack: Callable | None,
    pgd: tuple[int, int, int],
    batch_size: int,
) -> _Screen:
    """Clean predictions, the toolkit's PGD (``pgd``: steps, restarts, seed) and ``attack``
    beside it, every counterexample checked by a forward pass (:func:`_check_counterexample`)."""
    from train.attacks import pgd_attack

    pgd_steps, pgd_restarts, seed = pgd
    N = len(x)
    with torch.no_grad():
        clean_wrong = torch.cat(
            [
                model(x[s : s + batch_size]).argmax(1) != y[s : s + batch_size]
                for s in range(0, N, batch_size)
            ]
        )
    gen = torch.Generator().manual_seed(seed)
    advs = []
    for s in range(0, N, batch_size):
        xb, yb = x[s : s + batch_size], y[s : s + batch_size]
        adv, _ = (
            pgd_attack(
                model,
                xb,
                yb,
                eps,
                steps=pgd_steps,
                restarts=pgd_restarts,
                domain=tuple(domain),
                generator=gen,
            )
            if pgd_steps > 0 and eps > 0
            else (xb.clone(), None)
        )
        advs.append(adv)
    pgd_adv = torch.cat(advs)
    pgd_broken = _check_counterexample(model, x, pgd_adv, y, eps, domain) | clean_wrong
    x_adv, attack_broken = pgd_adv, pgd_broken
    if attack is not None:
        other = attack(model, x, y).to(x.dtype)
        other_broken = _check_counterexample(model, x, other, y, eps, domain) | clean_wrong
        attack_broken = other_broken
        # the start of the program, and the counterexample kept: whichever attack broke the sample
        x_adv = torch.where(
            (other_broken & ~pgd_broken).view(-1, *[1] * (x.dim() - 1)), other, pgd_adv
        )
        pgd_or_other = _margin(model64, other.double(), y).numpy()
    pgd_margin = _margin(model64, pgd_adv.double(), y).numpy()
    attack_margin = pgd_margin if attack is None else np.minimum(pgd_margin, pgd_or_other)
    return _Screen(clean_wrong, pgd_broken, attack_broken, x_adv, attack_margin)


def _bound_all(
    model64: torch.nn.Module,
    x64: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    names: list[str],
    domain: Sequence[float],
    batch_size: int,
) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, np.ndarray, list, np.ndarray]]:
    """Each method's margin lower bounds per sample, and the program's inputs from CROWN with
    ``optimized`` slopes (input box, pre-activation bounds, margin lower bounds: the margins of
    :data:`OPTIMIZED_BOUND`)."""
    bound_margin = {
        m: _bound_margins(model64, x64, y, eps, m, domain, batch_size)
        for m in names
        if m != OPTIMIZED_BOUND
    }
    lo, hi, pre, lower = [], [], [], []
    for s in range(0, len(x64), batch_size):
        a, b, c, d = milp.milp_inputs(
            model64, x64[s : s + batch_size], y[s : s + batch_size], eps, domain
        )
        lo.append(a), hi.append(b), pre.extend(c), lower.append(d)
    lo, hi, lower = np.concatenate(lo), np.concatenate(hi), np.concatenate(lower)
    bound_margin[OPTIMIZED_BOUND] = lower.min(1)
    return bound_margin, (lo, hi, pre, lower)


#: the program's per-sample columns, as the progress file keeps them
_PROGRAM_COLUMNS = ("status", "exact_margin", "exact_margin_lower", "optimal", "milps", "seconds")


class _Ledger:
    """Every sample's status and counterexample and the program's columns, with each program
    result checked against what attacks and bounds decided and appended to the progress file."""

    def __init__(self, status: np.ndarray, cex: np.ndarray, resume: Path | None) -> None:
        N = len(status)
        self.status, self.cex, self.resume = status, cex, resume
        self.cols = {
            "exact_margin": np.full(N, np.nan),
            "exact_margin_lower": np.full(N, np.nan),
            "optimal": np.zeros(N, dtype=np.int8),
            "milps": np.zeros(N, dtype=np.int32),
            "seconds": np.zeros(N),
        }

    def record(self, i: int, row: dict[str, Any], write: bool) -> None:
        """Take sample ``i``'s program row (``write``: also append it to the progress file)."""
        status = self.status
        st = int(row["status"])
        if st in (milp.VERIFIED, milp.FALSIFIED):
            if status[i] and status[i] != st:
                raise RuntimeError(
                    f"sample {i}: the exact program says {milp.STATUS_NAMES[st]}, but it was "
                    f"{milp.STATUS_NAMES[int(status[i])]} before: a bound or the program is unsound"
                )
            status[i] = st
        elif status[i] == 0:
            status[i] = milp.TIMEOUT
        if st == milp.FALSIFIED:
            self.cex[i] = row["point"]
        for k in self.cols:
            self.cols[k][i] = row[k]
        if write:
            store.append_rows(
                str(self.resume),
                "samples",
                {
                    "index": np.array([i]),
                    **{k: np.array([row[k]]) for k in _PROGRAM_COLUMNS},
                    "point": np.asarray(row["point"], np.float32)[None],
                },
            )


def _start_ledger(
    screen: _Screen, verified_by: dict[str, np.ndarray], x: torch.Tensor, resume: Path | None
) -> _Ledger:
    """The ledger before the program: samples a bound verified, samples an attack broke (their
    counterexample kept; a clean misclassification's is ``x`` itself); a sample both verified and
    broken means an unsound bound (RuntimeError)."""
    N = len(x)
    cw = screen.clean_wrong.numpy()
    broken = (screen.attack_broken | screen.pgd_broken).numpy()
    any_verified = np.any(np.stack(list(verified_by.values())), 0)
    status = np.zeros(N, dtype=np.int8)
    status[any_verified] = milp.VERIFIED
    status[broken] = milp.FALSIFIED
    n_in = int(np.prod(x.shape[1:]))
    cex = np.full((N, n_in), np.nan, dtype=np.float32)
    cex[broken] = screen.x_adv.reshape(N, -1).detach().numpy()[broken]
    cex[cw] = x.reshape(N, -1).detach().numpy()[cw]
    if bool((any_verified & broken).any()):
        raise RuntimeError(
            "a sample is both verified by a bound and broken by the attack: a bound is unsound"
        )
    return _Ledger(status, cex, resume)


def _program_row(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    domain: Sequence[float],
    i: int,
    r: milp.MarginResult,
) -> dict[str, Any]:
    """Sample ``i``'s row from the program's result; a counterexample the real model's forward
    pass does not confirm (a tie within rounding) is left undecided."""
    n_in = int(np.prod(x.shape[1:]))
    point = r.point if r.point is not None else np.full(n_in, np.nan)
    if r.status == milp.FALSIFIED:  # the forward pass of the real model must agree
        p = torch.as_tensor(point, dtype=x.dtype).reshape(1, *x.shape[1:])
        if not bool(_check_counterexample(model, x[i : i + 1], p, y[i : i + 1], eps, domain)[0]):
            r.status = milp.TIMEOUT  # a tie within rounding: left undecided
    return {
        "status": r.status,
        "exact_margin": r.margin if r.optimal else np.nan,
        "exact_margin_lower": r.margin_lower,
        "optimal": int(r.optimal),
        "milps": r.milps,
        "seconds": r.seconds,
        "point": point,
    }


def _solve_tasks(
    tasks: list[tuple],
    net: Any,
    jobs: int,
    progress: bool,
    finish: Callable[[int, milp.MarginResult], None],
) -> None:
    """Run the program on every task, here or in ``jobs`` spawned processes, handing each
    result to ``finish`` as it comes (a progress bar counts them)."""
    bar = None
    if progress and tasks:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), desc="complete", unit="sample", leave=False)

    def done(i: int, r: milp.MarginResult) -> None:
        finish(i, r)
        if bar is not None:
            bar.update(1)

    try:
        if jobs <= 1 or len(tasks) <= 1:
            milp.init_worker(net)
            for t in tasks:
                done(*milp.solve_task(t))
        else:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(jobs, initializer=milp.init_worker, initargs=(net,)) as pool:
                for i, r in pool.imap_unordered(milp.solve_task, tasks):
                    done(i, r)
    finally:
        if bar is not None:
            bar.close()


def run_complete(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    methods: Sequence[str],
    domain: Sequence[float] = (0.0, 1.0),
    attack: Callable | None = None,
    attack_name: str = "pgd",
    pgd_steps: int = 20,
    pgd_restarts: int = 1,
    seed: int = 0,
    time_limit: float = 10.0,
    jobs: int = 1,
    batch_size: int = 256,
    margins: bool = False,
    progress: bool = True,
    resume: Path | None = None,
    settings: dict[str, Any] | None = None,
    exact: bool = True,
) -> CompleteResult:
    """Decide every sample of ``(x, y)`` ``[N, *shape]``, ``[N]`` at radius ``eps`` (module docstring).

    ``methods``: the verification methods reported (``crown:optimized`` is added); ``attack``:
    ``f(model, x, y) -> x_adv`` run beside the toolkit's PGD (``attack_name`` names it; None: PGD
    alone); ``resume``: the progress file (None: nothing kept); ``settings``: what must match to
    resume; ``exact=False`` runs no program (attacks and bounds only; undecided samples stay
    ``status`` 0). Raises :class:`bounds.milp.UnsupportedLayerError` for a model the program cannot hold.

    The parts: :func:`_screen_attacks`, :func:`_bound_all`, the program through
    :func:`_solve_tasks` into a :class:`_Ledger`, and :func:`_summarise`.
    """
    t_start = time.perf_counter()
    eps = float(eps)
    model.eval()
    net = milp.affine_net(model, tuple(x.shape[1:]))
    model64 = copy.deepcopy(model).double().eval()
    x64 = x.double()
    N = len(x)
    screen = _screen_attacks(
        model, model64, x, y, eps, domain, attack, (pgd_steps, pgd_restarts, seed), batch_size
    )
    names = list(dict.fromkeys([*methods, OPTIMIZED_BOUND]))
    bound_margin, (lo, hi, pre, lower) = _bound_all(model64, x64, y, eps, names, domain, batch_size)
    cw = screen.clean_wrong.numpy()
    verified_by = {m: (bound_margin[m] > 0) & ~cw for m in names}
    ledger = _start_ledger(screen, verified_by, x, resume)
    status = ledger.status
    todo = [i for i in range(N) if exact and not cw[i] and (margins or status[i] == 0)]
    done = _open_progress(resume, settings or {}) if resume is not None else {}
    tasks = []
    for i in todo:
        if i in done:
            ledger.record(i, done[i], False)
        else:
            tasks.append(
                (
                    i,
                    lo[i],
                    hi[i],
                    int(y[i]),
                    pre[i],
                    lower[i],
                    screen.x_adv[i].reshape(-1).double().numpy(),
                    float(time_limit),
                )
            )

    def finish(i: int, r: milp.MarginResult) -> None:
        ledger.record(i, _program_row(model, x, y, eps, domain, i, r), resume is not None)

    _solve_tasks(tasks, net, jobs, progress, finish)
    totals = {"n": N, "eps": eps, "attack": attack_name, "time_limit": float(time_limit)}
    return _summarise(
        ledger, screen, y, bound_margin, verified_by, totals, t_start, len(todo), exact
    )


def _summarise(
    ledger: _Ledger,
    screen: _Screen,
    y: torch.Tensor,
    bound_margin: dict[str, np.ndarray],
    verified_by: dict[str, np.ndarray],
    head: dict[str, Any],
    t_start: float,
    n_todo: int,
    exact: bool,
) -> CompleteResult:
    """The per-sample columns and the totals (``head``: n, eps, attack and time limit) of a
    finished run; without the program (``exact=False``) no total claims an exact decision."""
    status, cw, names = ledger.status, screen.clean_wrong.numpy(), list(verified_by)
    N = head["n"]
    samples = {
        "index": np.arange(N),
        "label": y.numpy().astype(np.int64),
        "status": status,
        "clean_wrong": cw.astype(np.int8),
        "pgd_broken": screen.pgd_broken.numpy().astype(np.int8),
        "attack_broken": screen.attack_broken.numpy().astype(np.int8),
        "attack_margin": screen.attack_margin,
        **ledger.cols,
        **{f"bound_margin_{_key(m)}": bound_margin[m] for m in names},
        "counterexample": ledger.cex,
    }
    n_timeouts = int((status == milp.TIMEOUT).sum())
    union = np.any(np.stack([verified_by[m] for m in names]), 0) | (status == milp.VERIFIED)
    totals: dict[str, Any] = {
        "n": N,
        "eps": head["eps"],
        "attack": head["attack"],
        "clean_err": float(cw.mean()),
        "pgd_err": float(screen.pgd_broken.double().mean()),
        "attack_err": float(screen.attack_broken.double().mean()),
        "exact_err": float((status == milp.FALSIFIED).mean()),
        "timeouts": n_timeouts,
        "exact_verified": float((status == milp.VERIFIED).mean()),
        "decided": float((status != milp.TIMEOUT).mean()),
        "seconds": time.perf_counter() - t_start,
        "time_limit": head["time_limit"],
        "milp_samples": n_todo,
    }
    for m in names:
        totals["verified_err_" + _key(m)] = float((~verified_by[m]).mean())
    totals["verified_err"] = float((~np.any(np.stack([verified_by[m] for m in names]), 0)).mean())
    totals["exact_upper_err"] = float((~union).mean())
    result = CompleteResult(samples, totals, names)
    if exact:
        result.tightness = tightness_rows(result)
    else:  # no program ran: nothing was decided exactly
        for k in (
            "exact_err",
            "timeouts",
            "exact_verified",
            "decided",
            "exact_upper_err",
            "time_limit",
            "milp_samples",
        ):
            del totals[k]
    return result


def _key(name: str) -> str:
    return name.replace("-", "_").replace(":", "_")


def tightness_rows(result: CompleteResult) -> dict[str, list]:
    """Per bound: ``gap_mean`` / ``gap_max`` of ``exact minimum margin - bound margin`` over the
    ``n_optimal`` correctly classified samples solved to optimality, its verified error, and
    ``fault_share = (verified_err_m - exact_err) / (verified_err_m - attack_err)``: the part of the
    gap between the bound's verified error and the attack's error that the bound causes (the rest
    is the attack's); NaN where the denominator is 0."""
    s, t = result.samples, result.totals
    ok = (s["optimal"] == 1) & (s["clean_wrong"] == 0) & np.isfinite(s["exact_margin"])
    rows: dict[str, list] = {
        "bound": [],
        "gap_mean": [],
        "gap_max": [],
        "n_optimal": [],
        "verified_err": [],
        "fault_share": [],
    }
    for m in result.bounds:
        gap = s["exact_margin"][ok] - s[f"bound_margin_{_key(m)}"][ok]
        v = t["verified_err_" + _key(m)]
        denom = v - t["attack_err"]
        rows["bound"].append(m)
        rows["gap_mean"].append(float(gap.mean()) if gap.size else np.nan)
        rows["gap_max"].append(float(gap.max()) if gap.size else np.nan)
        rows["n_optimal"].append(int(ok.sum()))
        rows["verified_err"].append(v)
        rows["fault_share"].append(float((v - t["exact_err"]) / denom) if denom > 0 else np.nan)
    return rows


def options_problem(
    complete: bool,
    time_limit: float,
    jobs: int,
    margins: bool,
    attack: str,
    eps_list: list[float] | None,
    out: str | None,
) -> str | None:
    """What is wrong with ``certify``'s ``--complete`` / ``--attack`` options (None: nothing)."""
    from common.names import ATTACKS

    if not time_limit > 0 or jobs < 1:
        return "--time-limit must be > 0 and --jobs >= 1"
    if (margins or jobs != 1) and not complete:
        return "--margins and --jobs need --complete"
    if (complete or attack != "pgd") and eps_list is not None and len(eps_list) != 1:
        return "--complete and --attack run at one eps; give one --eps"
    if attack not in ATTACKS:
        return f"--attack: unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}"
    if out is not None and Path(out).is_dir():
        return f"--out: {out} is a directory"
    return None
