"""S5: a MIMO diagonal state space layer with GLU mixing, the block of the S5 language model
(``lm.RecurrentLM`` with LayerNorm).

References:
    [1] Smith, Warrington & Linderman, "Simplified State Space Layers for Sequence Modeling", ICLR 2023
        (S5), and its official JAX code (github.com/lindermanlab/S5).
    [2] Gu, Johnson, Timalsina, Rudra & Ré, "How to Train Your HiPPO", ICLR 2023 (HiPPO-LegS, its normal
        part HiPPO-N, and the timescale interpretation of Δ).
    [3] Gu, Gupta, Goel & Ré, "On the Parameterization and Initialization of Diagonal State Space Models"
        (S4D), 2022 (the S4D-Lin initialisation Λ_n = -1/2 + iπn).

Glossary (code letter -> symbol in [1]):
    b   batch                l   sequence length           d   d_model = H, the residual width
    P   d_state, the number of complex latent states of the full system; we keep n = P/2 of them
    n   P/2, the complex states actually stored (one per conjugate pair)
    Λ   (n,) the diagonal continuous-time state matrix (eigenvalues of HiPPO-N), Re Λ < 0
    Δ   (n,) the timescales, exp(log_step)
    B̃   (n, d) complex input matrix (B in the eigenbasis, V⁻¹B)
    C̃   (d, n) complex output matrix (C V)
    D   (d,) real feed-through

The S5 layer [1], written in the eigenbasis of A = V Λ V⁻¹:

    continuous:  x'(t) = Λ x(t) + B̃ u(t),     y(t) = C̃ x(t) + D u(t)                                  (1)
    ZOH:         Λ̄ = exp(Λ Δ),                B̄ = Λ⁻¹ (Λ̄ − I) B̃                                        (2)
    recurrence:  x_k = Λ̄ x_{k-1} + B̄ u_k                                                               (3)
    output:      y_k = 2 Re(C̃ x_k) + D u_k                                                             (4)

Conjugate symmetry [1]: a real A has eigenvalues (and eigenvectors) in conjugate pairs, so the full
P-state system with parameters [Λ, Λ*], [B̃; B̃*], [C̃, C̃*] has the real output C̃x + (C̃x)* = 2 Re(C̃x);
keeping one state per pair (n = P/2), Eq. (4), gives the same output at half the cost.
Eq. (3) is a diagonal linear recurrence, run by ``ops.s5_scan`` with a parallel scan over the elements (Λ̄, B̄u_k).

Block (pre-norm; the mixing is the official code's "full GLU": GELU, then a sigmoid-gated linear map):

    z = S5(LayerNorm(u)) ;  z = dropout(GELU(z)) ;  z = W₁z ⊙ σ(W₂z) (one Linear(d, 2d) + GLU) ;
    u ← u + dropout(z)

(the residual and the LayerNorm are the shell's; ``S5Mixer`` is everything inside ``u + ...``).

Initialisation: Λ from the HiPPO-N matrix [1, 2] — the normal part of HiPPO-LegS,
    A_N[i, j] = −(i+½)^½ (j+½)^½ for i > j,   −½ for i = j,   +(i+½)^½ (j+½)^½ for i < j,
i.e. −½ I plus a skew-symmetric matrix, diagonalised exactly by the Hermitian eigendecomposition of its
skew part: Λ = −½ + iω, V unitary. Of every conjugate pair (±ω) we keep ω < 0 (as the official code, which
keeps the first half of ``eigh``'s ascending spectrum). With ``blocks = J > 1``, A is block-diagonal with J
copies of a (P/J)-sized HiPPO-N, as in [1]'s block-diagonal initialisation. ``init="s4d_lin"`` [3] uses
Λ_n = −½ + iπn and V = the first n unit vectors instead.
B̃ = V⁻¹B with B ~ N(0, 1/d) (LeCun normal); C̃ = C V with C ~ N(0, 1/P) complex; D ~ N(0, 1);
log Δ ~ U[log dt_min, log dt_max] per state.

Where we differ from the official code:
- Re Λ is stored as log(−Re Λ) (like Mamba's A_log), so Re Λ < 0 and |Λ̄| < 1 throughout training without
  the official code's optional clipping; the initial values are identical.
- We fix pre-norm LayerNorm (the official code also offers batch norm, which would couple the rows of a
  batch and break exact chunked evaluation).

State: ``"layers.{i}.ssm"`` = ``view_as_real`` of the n complex states, (b, n, 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import UserError
from ..ops.dispatch import ScanImpl
from ..ops.s5_scan import diag_scan_fast, diag_scan_ref

__all__ = ["S5SSM", "S5Mixer", "hippo_n", "init_lambda_v"]


def hippo_n(size: int) -> Tensor:
    """HiPPO-N, the normal part of HiPPO-LegS [1, 2]: (size, size) float64, = −½ I + skew."""
    q = torch.sqrt(torch.arange(size, dtype=torch.float64) + 0.5)
    outer = q[:, None] * q[None, :]
    return torch.tril(-outer, -1) + torch.triu(outer, 1) - 0.5 * torch.eye(size, dtype=torch.float64)


def init_lambda_v(n_states: int, blocks: int = 1, init: str = "hippo_n") -> tuple[Tensor, Tensor]:
    """Eigenvalues Λ (n,) and eigenvectors V (P, n) (complex128) of the block HiPPO-N matrix, one per pair.

    Args:
        n_states: P, the state size of the full (real) system; must be even and divisible by 2·blocks.
        blocks: J, the number of diagonal HiPPO-N blocks of size P/J.
        init: "hippo_n" (eigendecomposition of HiPPO-N) or "s4d_lin" (Λ_k = −½ + iπk, V = identity columns).
    Returns:
        lam (n,) with n = P/2, and V (P, n) with orthonormal columns; A V = V diag(Λ) for the kept half.
    """
    if init == "s4d_lin":
        n = n_states // 2
        k = torch.arange(n, dtype=torch.float64)
        lam = torch.complex(torch.full_like(k, -0.5), math.pi * k)
        return lam, torch.eye(n_states, n, dtype=torch.complex128)
    if init != "hippo_n":
        raise ValueError(f"unknown S5 init {init!r} (hippo_n or s4d_lin)")
    size = n_states // blocks
    a = hippo_n(size)
    skew = a + 0.5 * torch.eye(size, dtype=torch.float64)
    omega, v = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # skew = V diag(iω) V^H, ω ascending
    keep = size // 2  # ω < 0: one eigenvalue of each conjugate pair
    lam = torch.complex(torch.full((keep,), -0.5, dtype=torch.float64), omega[:keep])
    lam = lam.repeat(blocks)
    v_full = torch.block_diag(*[v[:, :keep]] * blocks)  # (P, n)
    return lam, v_full


class S5SSM(nn.Module):
    """One S5 SSM (Eqs. 1-4): (b, l, d) real -> (b, l, d) real, with state (b, n) complex.

    Parameters: ``Lambda_re_log`` (n,) = log(−Re Λ); ``Lambda_im`` (n,); ``B`` (n, d, 2) = view_as_real(B̃);
    ``C`` (d, n, 2) = view_as_real(C̃); ``D`` (d,); ``log_step`` (n,) = log Δ.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        blocks: int = 1,
        init: str = "hippo_n",
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        if d_state % (2 * blocks):
            raise UserError(f"model.d_state (P = {d_state}) must be even for S5 (conjugate pairs)")
        self.d_model, self.d_state, self.n = d_model, d_state, d_state // 2
        self.chunk_size = chunk_size
        lam, v = init_lambda_v(d_state, blocks, init)
        b_real = torch.randn(d_state, d_model, dtype=torch.float64) / math.sqrt(d_model)
        c_full = torch.randn(d_model, d_state, dtype=torch.complex128) / math.sqrt(d_state)
        b_tilde = v.conj().T @ b_real.to(torch.complex128)  # V⁻¹ B, (n, d)
        c_tilde = c_full @ v  # C V, (d, n)
        log_step = torch.empty(self.n).uniform_(math.log(dt_min), math.log(dt_max))
        self.Lambda_re_log = nn.Parameter(torch.log(-lam.real).float())
        self.Lambda_im = nn.Parameter(lam.imag.float())
        self.B = nn.Parameter(torch.view_as_real(b_tilde).float())
        self.C = nn.Parameter(torch.view_as_real(c_tilde).float())
        self.D = nn.Parameter(torch.randn(d_model))
        self.log_step = nn.Parameter(log_step)

    def discretize(self) -> tuple[Tensor, Tensor]:
        """ZOH, Eq. (2). Returns Λ̄ (n,) and B̄ (n, d), complex."""
        lam = torch.complex(-torch.exp(self.Lambda_re_log), self.Lambda_im)
        lam_dt = lam * torch.exp(self.log_step)
        lambda_bar = torch.exp(lam_dt)
        b_bar = ((lambda_bar - 1) / lam)[:, None] * torch.view_as_complex(self.B)
        return lambda_bar, b_bar

    def forward(self, u: Tensor, state: Tensor | None = None, impl: str = "chunked") -> tuple[Tensor, Tensor]:
        """Eqs. (2)-(4). u: (b, l, d) real; state: x_{-1} (b, n) complex or None (zeros); ``impl``: the scan of
        Eq. (3), "chunked" (parallel, ``diag_scan_fast``) or "reference" (the sequential loop).

        Returns y (b, l, d) real and the final state x_{l-1} (b, n) complex.
        """
        lambda_bar, b_bar = self.discretize()
        # B̄u as one real matmul with [Re B̄; Im B̄] (2n, d); the scan never runs in half precision.
        bu = F.linear(u, torch.cat([b_bar.real, b_bar.imag])).to(b_bar.real.dtype)
        bu = torch.complex(bu[..., : self.n], bu[..., self.n :])  # (b, l, n)
        if impl == "chunked":
            xs, state = diag_scan_fast(lambda_bar, bu, state, self.chunk_size)
        elif impl == "reference":
            xs, state = diag_scan_ref(lambda_bar, bu, state)
        else:
            raise ValueError(f"impl must be 'chunked' or 'reference'; got {impl!r}")
        # Eq. (4): 2 Re(C̃x) = 2 (Re C̃ Re x − Im C̃ Im x): one real matmul over x's interleaved (re, im).
        c = self.C * self.C.new_tensor([2.0, -2.0])  # (d, n, 2): (2 Re C̃, −2 Im C̃)
        y = F.linear(torch.view_as_real(xs).flatten(-2), c.flatten(-2)) + self.D * u
        return y, state


class S5Mixer(nn.Module):
    """The S5 block inside the residual: dropout(GLU(W dropout(GELU(S5(u))))). (b, l, d) -> (b, l, d).

    Eq. (3) runs ``scan_impl`` (``chunked`` or ``reference``; S5 has no GPU kernel), which ``build_model`` chooses.
    """

    scan_impl: ScanImpl

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        d = config.d_model
        self.ssm = S5SSM(d, config.d_state, config.dt_min, config.dt_max, chunk_size=config.chunk_size)
        self.mix = nn.Linear(d, 2 * d)
        self.dropout = nn.Dropout(config.dropout)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """ssm: ``view_as_real`` of the n = P/2 complex states, (n, 2)."""
        return {"ssm": (self.ssm.n, 2)}

    def forward(self, u: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """u (b, l, d), state {ssm (b, n, 2)} -> out (b, l, d), the new state."""
        x0 = torch.view_as_complex(state["ssm"].to(u.dtype).contiguous())
        z, x = self.ssm(u, x0, impl=self.scan_impl)
        z = self.dropout(F.gelu(z))
        z = F.glu(self.mix(z), dim=-1)
        return self.dropout(z), {"ssm": torch.view_as_real(x).contiguous()}
