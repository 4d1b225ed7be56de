"""The in-line check every notebook uses to compare the library with something independent.

``check(name, measured, predicted, ...)`` prints one readable row and raises ``AssertionError``
when the comparison fails, so that nbval fails the notebook. ``summary()`` prints the table of all
checks made since the previous summary.

Two kinds of tolerance, which may be combined (the allowed deviations add):

* ``stderr``: the standard error of the comparison (of a Monte Carlo estimate, or the two
  combined in quadrature); the check passes when ``|measured - predicted| <= nsigma * stderr``.
  The printed deviation is in units of standard errors.
* ``rtol`` / ``atol``: a deterministic tolerance (quadrature error, the known size of a neglected
  order in 1/n); passes when ``|measured - predicted| <= atol + rtol * |predicted|``.

Arrays are compared elementwise; the row reports the worst element.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["check", "summary", "CheckResult"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    measured: float
    predicted: float
    deviation: str
    passed: bool

    def row(self) -> str:
        flag = "PASS" if self.passed else "FAIL"
        return (f"{flag}  {self.name:<44.44s}  measured {_fmt(self.measured):>12s}  "
                f"predicted {_fmt(self.predicted):>12s}  {self.deviation}")


_LOG: list[CheckResult] = []


def _fmt(x: float) -> str:
    if not np.isfinite(x):
        return str(x)
    return f"{x:.6g}" if (x == 0 or 1e-3 <= abs(x) < 1e5) else f"{x:.4e}"


def check(name: str, measured, predicted, *, stderr=None, rtol=None, atol=None,
          nsigma: float = 4.0) -> bool:
    """Compare a measured number (or array) with a prediction, print one row, raise if it fails.

    Parameters
    ----------
    name : str
        What is compared, e.g. ``"V^(3)/K^2, n=64"``.
    measured, predicted : float or array_like
        Broadcastable to a common shape.
    stderr : float or array_like, optional
        Standard error of ``measured - predicted``; must be positive where given.
    rtol, atol : float or array_like, optional
        Deterministic relative / absolute tolerance (non-negative; broadcast like the values).
    nsigma : float
        Number of standard errors allowed (default 4).

    Returns ``True``; raises ``AssertionError`` with the numbers when the check fails, and
    ``ValueError`` when no tolerance is given or a tolerance is negative, or a value is not finite.
    """
    if stderr is None and rtol is None and atol is None:
        raise ValueError(f"check {name!r}: give stderr, rtol or atol (how was the tolerance derived?)")
    m = np.asarray(measured, dtype=float)
    p = np.asarray(predicted, dtype=float)
    m, p = np.broadcast_arrays(m, p)
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(p))):
        raise ValueError(f"check {name!r}: measured or predicted is not finite: {m}, {p}")
    diff = np.abs(m - p)
    allowed = np.zeros_like(diff)
    parts = []
    if stderr is not None:
        se = np.broadcast_to(np.asarray(stderr, dtype=float), diff.shape)
        if np.any(~(se > 0)):
            raise ValueError(f"check {name!r}: stderr must be positive, got {stderr}")
        allowed = allowed + nsigma * se
        z = diff / se
        parts.append(f"{z.max():.2f} se (<= {nsigma:g})")
    if rtol is not None or atol is not None:
        rt = np.broadcast_to(np.asarray(0.0 if rtol is None else rtol, dtype=float), diff.shape)
        at = np.broadcast_to(np.asarray(0.0 if atol is None else atol, dtype=float), diff.shape)
        if np.any(rt < 0) or np.any(at < 0):
            raise ValueError(f"check {name!r}: rtol and atol must be >= 0")
        allowed = allowed + at + rt * np.abs(p)
        rel = diff / np.where(np.abs(p) > 0, np.abs(p), 1.0)
        parts.append(f"rel {rel.max():.1e}" + (f" (rtol {rt.max():.0e})" if rtol is not None else "")
                     + (f" (atol {at.max():.0e})" if atol is not None else ""))
    worst = int(np.argmax(diff - allowed)) if diff.size else 0
    passed = bool(np.all(diff <= allowed))
    res = CheckResult(name, float(m.flat[worst]), float(p.flat[worst]), ", ".join(parts), passed)
    _LOG.append(res)
    print(res.row())
    if not passed:
        raise AssertionError(
            f"check failed: {name}: measured {float(m.flat[worst])!r}, predicted {float(p.flat[worst])!r}, "
            f"|diff| {diff.flat[worst]:.3e} > allowed {allowed.flat[worst]:.3e} ({res.deviation})")
    return True


def summary() -> list[CheckResult]:
    """Print a table of every check made since the previous ``summary()`` and start a new log.

    Returns the list of results (all passed, since a failed check raises)."""
    results = list(_LOG)
    _LOG.clear()
    print(f"{len(results)} checks, {sum(r.passed for r in results)} passed")
    for i, r in enumerate(results, 1):
        print(f"{i:3d}. {r.row()}")
    return results
