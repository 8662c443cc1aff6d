r"""Initial eigenvalues $\Lambda$ and input vectors $B$ of diagonal SSM layers (S4D-LegS, -Lin,
-Inv).

Each returns the N eigenvalues with positive imaginary part of a real 2N-state system; the layer's
output takes $2\,\mathrm{Re}$, which adds back their complex conjugates.

References:
    Gu, A., Dao, T., Ermon, S., Rudra, A. and Ré, C. (2020). HiPPO: recurrent memory with optimal
    polynomial projections. NeurIPS.
    Gu, A., Gupta, A., Goel, K. and Ré, C. (2022). On the parameterization and initialization of
    diagonal state space models. NeurIPS.
    Smith, J. T. H., Warrington, A. and Linderman, S. W. (2023). Simplified state space layers for
    sequence modeling. ICLR.
"""

from __future__ import annotations

import numpy as np

INITS = ("legs", "lin", "inv")


def hippo_legs(n: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The HiPPO-LegS matrices (n, n) and (n,), with $\dot x = A x + B u$:

    $$A_{jk} = -\begin{cases} \sqrt{(2j+1)(2k+1)} & j > k \\ j + 1 & j = k \\ 0 & j < k
        \end{cases},\qquad B_j = \sqrt{2j+1}.$$
    """
    q = np.sqrt(2.0 * np.arange(n) + 1.0)
    A = -np.tril(np.outer(q, q), -1) - np.diag(np.arange(n) + 1.0)
    return A, q.copy()


def legs_normal(n: int) -> np.ndarray:
    r"""The normal part $A + P P^\top$ of HiPPO-LegS, $P_j = \sqrt{j + 1/2}$: it equals
    $-\tfrac12 I + S$ with $S$ skew-symmetric, so its eigenvalues are $-\tfrac12 + i\omega$."""
    A, _ = hippo_legs(n)
    p = np.sqrt(np.arange(n) + 0.5)
    return A + np.outer(p, p)


def init_legs(n: int) -> tuple[np.ndarray, np.ndarray]:
    r"""S4D-LegS: eigenvalues of the normal part of a 2n HiPPO-LegS matrix with $\omega > 0$, and
    $B$ projected onto their eigenvectors, $\tilde B = V^{H} B$ (complex, (n,) each)."""
    N2 = legs_normal(2 * n)
    S = N2 + 0.5 * np.eye(2 * n)
    # -iS is Hermitian: eigh gives real frequencies and orthonormal eigenvectors, which eig would
    # not guarantee for the (near-)repeated magnitudes of a large matrix
    omega, V = np.linalg.eigh(-1j * S)
    keep = np.argsort(omega)[n:]  # the n positive frequencies (they come in +/- pairs)
    _, B = hippo_legs(2 * n)
    lam = -0.5 + 1j * omega[keep]
    return lam, V[:, keep].conj().T @ B


def init_lin(n: int) -> tuple[np.ndarray, np.ndarray]:
    r"""S4D-Lin: $\Lambda_k = -\tfrac12 + i\pi k$, $B_k = 1$ ($k = 0, \dots, n-1$)."""
    return -0.5 + 1j * np.pi * np.arange(n), np.ones(n, dtype=complex)


def init_inv(n: int) -> tuple[np.ndarray, np.ndarray]:
    r"""S4D-Inv: $\Lambda_k = -\tfrac12 + i \frac{n}{\pi}\big(\frac{n}{2k+1} - 1\big)$,
    $B_k = 1$."""
    k = np.arange(n)
    return -0.5 + 1j * (n / np.pi) * (n / (2 * k + 1) - 1), np.ones(n, dtype=complex)


def diagonal_init(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and input vector (complex, (n,) each) of the named initialisation."""
    table = {"legs": init_legs, "lin": init_lin, "inv": init_inv}
    if name not in table:
        raise ValueError(f"unknown init {name!r}; use one of {INITS}.")
    return table[name](n)
