"""Demo: fill in the missing weeks of the Mauna Loa CO2 record with a Gaussian process.

Loads the weekly CO2 series that ships with statsmodels (March 1958 to December 2001, 59 of 2284
weeks missing), fits a GP in state-space form (smooth trend + quasi-periodic yearly cycle +
short-term anomalies + noise) by maximum likelihood, imputes the missing weeks with 95% bands,
prints the fitted hyperparameters and the log-likelihood, and writes a plot to demo.png (or the
path given as the first argument). notebooks/imputation.ipynb does the same, and checks the bands
on held-out weeks.
"""

import os
import sys

# Works around a deadlock in XLA's CPU scheduler (jax 0.10.2); see README, "Known issues".
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_enable_concurrency_optimized_scheduler=false")

import jax  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import statsmodels.api as sm  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import bayesssm as bs  # noqa: E402

jax.config.update("jax_enable_x64", True)  # the demo's choice; the library never sets it


def co2_model() -> bs.GPStateSpace:
    """The starting model, on the standardised scale with times in years."""
    kernel = (
        # Trend: the slope is a random walk; vague priors on the level and slope in 1958.
        bs.kernels.IntegratedWiener(variance=0.01, initial_variance=1.0, initial_slope_variance=1.0)
        # Yearly cycle whose shape drifts: Periodic x Matern-3/2 envelope, 4 harmonics.
        + bs.kernels.QuasiPeriodic(
            variance=0.03, lengthscale=1.0, period=1.0, matern_lengthscale=10.0, order=4
        )
        # Short-lived (weather) anomalies: weekly residuals are correlated.
        + bs.kernels.Matern32(variance=1e-3, lengthscale=0.1)
    )
    return bs.GPStateSpace(kernel, noise_variance=1e-3)


def fitted_leaves(m: bs.GPStateSpace):
    trend, seasonal, short = m.kernel.kernels
    return (
        trend.variance,
        seasonal.variance,
        seasonal.lengthscale,
        seasonal.period,
        seasonal.matern_lengthscale,
        short.variance,
        short.lengthscale,
        m.noise_variance,
    )


def main(out: str = "demo.png") -> None:
    co2 = sm.datasets.co2.load_pandas().data["co2"]  # weekly, NaN = missing week
    mu, sd = co2.mean(), co2.std()
    # Standardised values (mean 0, sd 1); times in years (365.25 days) since the first week.
    series = bs.TimeSeries.from_pandas((co2 - mu) / sd, unit="Y")
    missing = co2.index[co2.isna()]
    print(f"Mauna Loa CO2: {len(co2)} weeks, {len(missing)} missing")

    start = co2_model()
    fitted, history = bs.fit_mle(
        start, series, where=fitted_leaves, tol=1e-8, gtol=1e-3, progress=False
    )
    print(
        f"log-likelihood: {float(bs.log_marginal(start, series)):.1f} at the start, "
        f"{float(bs.log_marginal(fitted, series)):.1f} fitted "
        f"({history.num_steps} L-BFGS steps, converged: {history.converged})"
    )
    trend, seasonal, short = bs.unwrap(fitted.kernel).kernels
    noise = bs.unwrap(fitted).noise_variance
    print("fitted hyperparameters (standardised scale, years; in ppm and days):")
    for name, value, natural in [
        (
            "trend variance",
            trend.variance,
            f"slope change in a year: sd {np.sqrt(trend.variance) * sd:.3f} ppm/yr",
        ),
        ("seasonal variance", seasonal.variance, f"sqrt {np.sqrt(seasonal.variance) * sd:.3f} ppm"),
        ("seasonal lengthscale", seasonal.lengthscale, ""),
        ("seasonal period", seasonal.period, f"{seasonal.period * 365.25:.2f} days"),
        ("seasonal matern_lengthscale", seasonal.matern_lengthscale, "years"),
        ("short-term variance", short.variance, f"sd {np.sqrt(short.variance) * sd:.3f} ppm"),
        ("short-term lengthscale", short.lengthscale, f"{short.lengthscale * 365.25:.1f} days"),
        ("noise variance", noise, f"sd {np.sqrt(noise) * sd:.3f} ppm"),
    ]:
        print(f"  {name:28s} {float(value):10.4g}  {natural}")

    # The missing weeks, and a daily grid over 1963-1965 (the 18-week gap of 1964) for the zoom.
    window = pd.date_range("1963-01-01", "1966-01-01", freq="D")
    query = missing.union(window)
    p = bs.impute(fitted, series, at=query, quantiles=(0.025, 0.975))
    mean = pd.Series(np.asarray(p.mean[:, 0]) * sd + mu, index=query)
    low = pd.Series(np.asarray(p.quantiles[0, :, 0]) * sd + mu, index=query)
    high = pd.Series(np.asarray(p.quantiles[1, :, 0]) * sd + mu, index=query)
    half = (high - low)[missing] / 2
    print(f"imputed {len(missing)} weeks; 95% half-width {half.min():.2f} to {half.max():.2f} ppm")

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7))
    top.plot(co2.index, co2, lw=0.6, color="k", label="observed")
    top.plot(missing, mean[missing], ".", color="C3", ms=4, label="imputed (missing weeks)")
    top.set_ylabel("CO$_2$ (ppm)")
    top.set_title("Mauna Loa weekly CO$_2$: GP imputation of the missing weeks")
    top.legend(loc="upper left")
    observed = co2[window[0] : window[-1]].dropna()
    gaps = missing[(missing >= window[0]) & (missing <= window[-1])]
    bottom.fill_between(window, low[window], high[window], color="C0", alpha=0.25, label="95% band")
    bottom.plot(window, mean[window], color="C0", lw=1, label="posterior mean")
    bottom.plot(observed.index, observed, ".", color="k", ms=4, label="observed")
    bottom.errorbar(
        gaps,
        mean[gaps],
        yerr=[mean[gaps] - low[gaps], high[gaps] - mean[gaps]],
        fmt="o",
        color="C3",
        ms=3,
        lw=1,
        label="imputed week, 95% band",
    )
    bottom.set_ylabel("CO$_2$ (ppm)")
    bottom.set_title("1963-1965, with the 18-week gap of 1964")
    bottom.legend(loc="upper left", ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
