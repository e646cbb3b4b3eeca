"""Time-series statistics for correlated samples: integrated autocorrelation time, ESS, errors.

The integrated autocorrelation time tau = 1 + 2 sum_{t>=1} rho(t) is estimated with Sokal's
automatic window (the sum stops at the smallest M with M >= c * tau(M), c = 5 by default), its
statistical error with Sokal's large-N formula var(tau) ~ 2 (2M + 1) / N * tau^2. The effective
sample size is N / tau and the standard error of the mean sqrt(var * tau / N). Times are in frames
(multiply by the save interval for ps). ``moltune.flow.metrics.integrated_autocorr_time`` uses
the same estimator (same c) and returns only tau; this module also gives the window and errors.

A series whose values never change carries no information on its correlations: ``estimable`` is
then False and tau / ESS are NaN (never the misleading ESS = N of a constant series).

The windowed estimate needs many independent events in the series. The indicator of a rare
state (a basin holding 1% of the frames) visited a handful of times in a run gets a window cut
short by noise, and its tau comes out several times too small (ESS too large; a two-state chain
with 2-3 visits per series: 2.5x in the median, 5x in the mean). :func:`batch_means` pools
several independent runs and estimates the variance of the mean from the scatter of batch
averages, which stays unbiased as long as a batch is much longer than tau.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "BatchMeansEstimate",
    "TauEstimate",
    "autocorrelation",
    "batch_means",
    "integrated_autocorrelation",
    "n_transitions",
]


def autocorrelation(x: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation rho(t), t = 0..N-1, of a 1-D series (FFT, biased estimator)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    x = x - x.mean()
    var = float(np.dot(x, x)) / max(n, 1)
    if n == 0 or var <= 0.0:
        return np.full(n, np.nan)
    nfft = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(x, nfft)
    return np.fft.irfft(f * np.conj(f), nfft)[:n] / (n * var)


@dataclass
class TauEstimate:
    """tau (frames) with its error, the window M, N, ESS = N / tau, and the mean with its error."""

    tau: float
    tau_error: float
    window: int
    n: int
    ess: float
    ess_error: float
    mean: float
    mean_error: float
    estimable: bool

    def as_dict(self) -> dict:
        return asdict(self)


def integrated_autocorrelation(series: np.ndarray, c: float = 5.0) -> TauEstimate:
    """Sokal-window estimate of the integrated autocorrelation time of ``series`` (frames)."""
    x = np.asarray(series, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)):
        raise ValueError("series contains NaN or inf")
    n = x.size
    mean = float(x.mean()) if n else math.nan
    if n < 4 or np.ptp(x) == 0.0:
        return TauEstimate(math.nan, math.nan, 0, n, math.nan, math.nan, mean, math.nan, False)
    rho = autocorrelation(x)
    tau_m = 2.0 * np.cumsum(rho) - 1.0  # tau(M) = 1 + 2 sum_{t=1..M} rho(t)
    ok = np.nonzero((np.arange(n) >= c * tau_m) & (np.arange(n) > 0))[0]
    window = int(ok[0]) if ok.size else n - 1
    tau = float(max(1.0, tau_m[window]))
    tau_err = tau * math.sqrt(2.0 * (2 * window + 1) / n)
    ess = n / tau
    var = float(x.var())
    return TauEstimate(
        tau=tau,
        tau_error=tau_err,
        window=window,
        n=n,
        ess=ess,
        ess_error=ess * tau_err / tau,
        mean=mean,
        mean_error=math.sqrt(var * tau / n),
        estimable=True,
    )


def n_transitions(indicator: np.ndarray) -> int:
    """How often a 0/1 series switches value (a rough count of independent events it holds)."""
    s = np.asarray(indicator).astype(bool).ravel()
    return int(np.count_nonzero(s[1:] != s[:-1]))


@dataclass
class BatchMeansEstimate:
    """Mean of pooled runs with its batch-means error; ESS = var(x) / var(mean) and its error."""

    mean: float
    mean_error: float
    ess: float
    ess_error: float
    n_batches: int
    n_frames: int

    def as_dict(self) -> dict:
        return asdict(self)


def batch_means(series: list[np.ndarray], batch_frames: int | list[int]) -> BatchMeansEstimate:
    """Batch-means error and ESS of the mean of several independent runs of one observable.

    Each run is cut into whole batches of ``batch_frames`` frames (one number, or one per run so
    runs saved at different intervals get batches of the same duration); a trailing partial
    batch is dropped. The variance of the pooled mean is var(batch averages) / n_batches; the
    ESS is the variance of x (every batch weighing the same, i.e. per unit of sampled time) over
    it, with the chi-square error sqrt(2 / (n_batches - 1)).
    Batches must be much longer than the integrated autocorrelation time (compare lengths).
    """
    runs = [np.asarray(x, dtype=np.float64).ravel() for x in series]
    sizes = [batch_frames] * len(runs) if np.isscalar(batch_frames) else list(batch_frames)
    if len(sizes) != len(runs) or any(int(b) < 1 for b in sizes):
        raise ValueError("batch_frames: one positive number, or one per series")
    if any(not np.all(np.isfinite(x)) for x in runs):
        raise ValueError("series contains NaN or inf")
    avgs, second, n_frames = [], [], 0  # per batch: mean of x and x^2 (batches weigh the same)
    for x, b in zip(runs, sizes):
        nb = x.size // int(b)
        if nb:
            n_frames += nb * int(b)
            batches = x[: nb * int(b)].reshape(nb, int(b))
            avgs.append(batches.mean(axis=1))
            second.append((batches * batches).mean(axis=1))
    if sum(a.size for a in avgs) < 2:
        raise ValueError(f"fewer than two whole batches of {sizes} frames in the series")
    avgs = np.concatenate(avgs)
    n_b = avgs.size
    var_mean = float(avgs.var(ddof=1)) / n_b
    var = max(float(np.concatenate(second).mean() - avgs.mean() ** 2), 0.0)
    ess = var / var_mean if var_mean > 0 else math.nan
    return BatchMeansEstimate(
        mean=float(avgs.mean()),
        mean_error=math.sqrt(var_mean),
        ess=ess,
        ess_error=ess * math.sqrt(2.0 / (n_b - 1)),
        n_batches=n_b,
        n_frames=n_frames,
    )
