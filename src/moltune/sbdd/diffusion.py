"""Conditional E(3) diffusion over ligand atoms given a fixed pocket (DiffSBDD ``ConditionalDDPM``).

Conventions (those of the published model): coordinates in Å divided by 1, one-hots divided by 4;
rows are ``[x, y, z, h_1..h_A]``. Time is t = t_int / T; the schedule lookup is
``gamma[round(t * T)]``, alpha_t = sqrt(sigmoid(-gamma_t)), sigma_t = sqrt(sigmoid(gamma_t)).
Whenever we centre, the per-sample ligand mean is subtracted from ligand and pocket coordinates,
so the pocket never moves relative to itself.

Every random draw goes through a ``noise`` callable ``noise(shape, like_tensor) -> Tensor`` so
tests can replay recorded noise; by default it is ``torch.randn`` (optionally with a generator).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from moltune.sbdd.dynamics import EGNNDynamics

Tensor = torch.Tensor
Film = tuple[Tensor, Tensor] | None
NoiseFn = Callable[[tuple[int, ...], Tensor], Tensor]


def gaussian_noise(generator: torch.Generator | None = None) -> NoiseFn:
    """Standard normal draws (in the dtype/device of ``like``), from ``generator`` if given."""

    def draw(shape: tuple[int, ...], like: Tensor) -> Tensor:
        if generator is None:
            return torch.randn(shape, dtype=like.dtype, device=like.device)
        out = torch.randn(shape, generator=generator, dtype=torch.float64,
                          device=generator.device)
        return out.to(dtype=like.dtype, device=like.device)

    return draw


def item_noise(generators: Sequence[np.random.Generator], sizes: Sequence[int]) -> NoiseFn:
    """Standard normal draws, sample i's ``sizes[i]`` rows (samples in order) from its own
    generator: a sample's noise does not depend on the batch or the DDP rank it is in."""
    sizes = [int(n) for n in sizes]

    def draw(shape: tuple[int, ...], like: Tensor) -> Tensor:
        if shape[0] != sum(sizes):
            raise ValueError(f"noise for {shape[0]} rows requested, the samples have {sum(sizes)}")
        rows = [g.standard_normal((n, *shape[1:])) for g, n in zip(generators, sizes)]
        return torch.from_numpy(np.concatenate(rows)).to(dtype=like.dtype, device=like.device)

    return draw


class NoiseReplay:
    """A noise callable that returns recorded tensors in order (for tests); checks shapes."""

    def __init__(self, draws: Iterable[Tensor]):
        self.draws = list(draws)
        self.used = 0

    def __call__(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        if self.used >= len(self.draws):
            raise RuntimeError(f"NoiseReplay exhausted after {self.used} draws")
        out = self.draws[self.used]
        self.used += 1
        if tuple(out.shape) != tuple(shape):
            raise ValueError(f"recorded noise draw {self.used} has shape {tuple(out.shape)}, "
                             f"requested {tuple(shape)}")
        return out.to(dtype=like.dtype, device=like.device)


def polynomial_gamma_table(timesteps: int, power: float = 2.0,
                           precision: float = 5e-4) -> np.ndarray:
    """DiffSBDD's ``polynomial_<power>`` noise table gamma[t_int], t_int = 0..T (float64).

    alpha^2(i) = (1 - (i/T)^power)^2, step ratios clipped below at 0.001, then squeezed into
    [precision, 1 - precision]; gamma = log(1 - alpha^2) - log(alpha^2).
    """
    steps = timesteps + 1
    x = np.linspace(0, steps, steps)
    alphas2 = (1 - np.power(x / steps, power)) ** 2
    alphas2 = np.concatenate([np.ones(1), alphas2])
    ratios = np.clip(alphas2[1:] / alphas2[:-1], a_min=0.001, a_max=1.0)
    alphas2 = np.cumprod(ratios)
    alphas2 = (1 - 2 * precision) * alphas2 + precision
    sigmas2 = 1 - alphas2
    return np.log(sigmas2) - np.log(alphas2)


class NoiseSchedule(nn.Module):
    """Lookup table gamma[t_int] (state-dict name ``gamma``; a fixed buffer, never trained)."""

    def __init__(self, gamma: Tensor):
        super().__init__()
        self.timesteps = gamma.shape[0] - 1
        self.register_buffer("gamma", gamma.clone())

    def forward(self, t: Tensor) -> Tensor:
        t_int = torch.round(t * self.timesteps).long()
        return self.gamma[t_int]


def sigma(gamma: Tensor) -> Tensor:
    return torch.sqrt(torch.sigmoid(gamma))


def alpha(gamma: Tensor) -> Tensor:
    return torch.sqrt(torch.sigmoid(-gamma))


def scatter_sum(x: Tensor, index: Tensor, n: int) -> Tensor:
    return x.new_zeros((n,) + x.shape[1:]).index_add_(0, index, x)


def scatter_mean(x: Tensor, index: Tensor, n: int) -> Tensor:
    count = x.new_zeros(n).index_add_(0, index, x.new_ones(index.shape[0])).clamp_min(1)
    return scatter_sum(x, index, n) / count.reshape((n,) + (1,) * (x.dim() - 1))


def cdf_standard_gaussian(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2)))


@dataclass
class LossTerms:
    """Per-sample terms of one loss evaluation (the DiffSBDD names), plus the combined loss."""

    loss: Tensor  # scalar: batch mean of nll
    nll: Tensor  # [B]
    loss_t: Tensor  # [B]
    loss_0: Tensor  # [B]
    raw: dict[str, Tensor] = field(default_factory=dict)
    info: dict[str, Tensor] = field(default_factory=dict)


class ConditionalDiffusion(nn.Module):
    """Pocket-conditioned diffusion over ligand positions and atom types (state-dict ``ddpm``).

    ``size_histogram`` is the [ligand size, pocket size] count table used for p(N_lig | N_pocket).
    """

    n_dims = 3

    def __init__(self, dynamics: EGNNDynamics, gamma: Tensor, atom_nf: int,
                 size_histogram: Tensor | None = None, norm_values=(1.0, 4.0),
                 loss_type: str = "l2"):
        super().__init__()
        self.register_buffer("buffer", torch.zeros(1))
        self.gamma = NoiseSchedule(gamma)
        self.dynamics = dynamics
        self.atom_nf = atom_nf
        self.T = self.gamma.timesteps
        self.norm_values = (float(norm_values[0]), float(norm_values[1]))
        self.loss_type = loss_type
        if size_histogram is not None:
            # Not in the state dict (DiffSBDD keeps it in the hyper-parameters).
            self.register_buffer("size_histogram", size_histogram.double(), persistent=False)
        else:
            self.size_histogram = None

    # ----------------------------------------------------------------- helpers
    def centre(self, x_lig: Tensor, x_pocket: Tensor, lig_mask: Tensor, pocket_mask: Tensor,
               n: int) -> tuple[Tensor, Tensor]:
        """Subtract the per-sample ligand mean from ligand and pocket coordinates."""
        mean = scatter_mean(x_lig, lig_mask, n)
        return x_lig - mean[lig_mask], x_pocket - mean[pocket_mask]

    def _centre_xh(self, xh_lig: Tensor, xh_pocket: Tensor, lig_mask: Tensor,
                   pocket_mask: Tensor, n: int) -> tuple[Tensor, Tensor]:
        x_lig, x_pocket = self.centre(xh_lig[:, :3], xh_pocket[:, :3], lig_mask, pocket_mask, n)
        return (torch.cat([x_lig, xh_lig[:, 3:]], dim=1),
                torch.cat([x_pocket, xh_pocket[:, 3:]], dim=1))

    def normalize_xh(self, x: Tensor, one_hot: Tensor) -> Tensor:
        return torch.cat([x / self.norm_values[0], one_hot / self.norm_values[1]], dim=1)

    def log_pN(self, n_lig: Tensor, n_pocket: Tensor) -> Tensor:
        """log p(N_lig | N_pocket) from the size histogram (+1e-3 per cell, column-normalised)."""
        if self.size_histogram is None:
            raise RuntimeError("this model has no size histogram")
        prob = self.size_histogram + 1e-3
        col = prob[:, n_pocket.long()]
        col = col / col.sum(0, keepdim=True)
        return torch.log(col[n_lig.long(), torch.arange(len(n_lig), device=col.device)])

    def sigma_and_alpha_t_given_s(self, gamma_t: Tensor, gamma_s: Tensor):
        sigma2_t_given_s = -torch.expm1(
            nn.functional.softplus(gamma_s) - nn.functional.softplus(gamma_t))
        log_alpha2_t = nn.functional.logsigmoid(-gamma_t)
        log_alpha2_s = nn.functional.logsigmoid(-gamma_s)
        alpha_t_given_s = torch.exp(0.5 * (log_alpha2_t - log_alpha2_s))
        return sigma2_t_given_s, torch.sqrt(sigma2_t_given_s), alpha_t_given_s

    def net(self, z_lig, xh_pocket, t, lig_mask, pocket_mask, film: Film = None) -> Tensor:
        return self.dynamics(z_lig, xh_pocket, t, lig_mask, pocket_mask, film=film)[0]

    # ----------------------------------------------------------------- noising
    def noised_representation(self, xh_lig: Tensor, xh_pocket: Tensor, lig_mask: Tensor,
                              pocket_mask: Tensor, gamma_t: Tensor, n: int,
                              noise: NoiseFn) -> tuple[Tensor, Tensor, Tensor]:
        """z_t = alpha_t xh + sigma_t eps, then centred; returns (z_t, shifted pocket, eps)."""
        eps = noise((xh_lig.shape[0], self.n_dims + self.atom_nf), xh_lig)
        z_t = alpha(gamma_t)[lig_mask] * xh_lig + sigma(gamma_t)[lig_mask] * eps
        z_t, xh_pocket = self._centre_xh(z_t, xh_pocket, lig_mask, pocket_mask, n)
        return z_t, xh_pocket, eps

    def kl_prior(self, xh_lig: Tensor, lig_mask: Tensor, n_lig: Tensor) -> Tensor:
        """KL(q(z_T | x) || N(0, 1)), x part on the (N-1)*3 dimensional subspace, h part d = 1."""
        b = len(n_lig)
        gamma_T = self.gamma(xh_lig.new_ones((b, 1)))
        mu = alpha(gamma_T)[lig_mask] * xh_lig
        s_T = sigma(gamma_T).squeeze(1)

        def kl(mu2: Tensor, d) -> Tensor:
            return d * torch.log(1 / s_T) + 0.5 * (d * s_T**2 + mu2) - 0.5 * d

        mu2_h = scatter_sum((mu[:, 3:] ** 2).sum(1), lig_mask, b)
        mu2_x = scatter_sum((mu[:, :3] ** 2).sum(1), lig_mask, b)
        return kl(mu2_x, (n_lig - 1) * self.n_dims) + kl(mu2_h, 1)

    def log_pxh_given_z0(self, one_hot: Tensor, z0: Tensor, eps: Tensor, eps_hat: Tensor,
                         gamma_0: Tensor, lig_mask: Tensor, b: int) -> tuple[Tensor, Tensor]:
        """(-0.5 sum |eps_x - eps_hat_x|^2, log p(h | z_0)) per sample, constants excluded.

        ``one_hot`` is the unnormalised 0/1 ligand one-hot.
        """
        log_px = -0.5 * scatter_sum(((eps[:, :3] - eps_hat[:, :3]) ** 2).sum(1), lig_mask, b)
        sigma_0_cat = (sigma(gamma_0) * self.norm_values[1])[lig_mask]
        centred = z0[:, 3:] * self.norm_values[1] - 1
        log_ph_prop = torch.log(
            cdf_standard_gaussian((centred + 0.5) / sigma_0_cat)
            - cdf_standard_gaussian((centred - 0.5) / sigma_0_cat) + 1e-10
        )
        log_prob = log_ph_prop - torch.logsumexp(log_ph_prop, dim=1, keepdim=True)
        log_ph = scatter_sum((log_prob * one_hot).sum(1), lig_mask, b)
        return log_px, log_ph

    # ----------------------------------------------------------------- loss
    def loss(self, ligand: dict[str, Tensor], pocket: dict[str, Tensor], t_int: Tensor | None = None,
             noise: NoiseFn | None = None, film: Film = None,
             training: bool | None = None) -> LossTerms:
        """Training loss (l2, ``training``) or variational bound (evaluation) per sample.

        ``ligand``/``pocket``: dicts with ``x`` [N,3] Å, ``one_hot`` [N,A] (0/1, not divided by
        4), ``mask`` [N] sorted sample ids, ``size`` [B]. ``t_int`` [B] forces the time steps.
        ``training`` defaults to ``self.training``.
        """
        training = self.training if training is None else training
        noise = noise or gaussian_noise()
        lig_mask, pocket_mask = ligand["mask"], pocket["mask"]
        n_lig, n_pocket = ligand["size"], pocket["size"]
        b = len(n_lig)
        dtype = ligand["x"].dtype
        xh0_lig = self.normalize_xh(ligand["x"], ligand["one_hot"])
        xh0_pocket = self.normalize_xh(pocket["x"], pocket["one_hot"].to(dtype))
        one_hot = ligand["one_hot"].to(dtype)

        lowest = 0 if training else 1
        if t_int is None:
            t_int = torch.randint(lowest, self.T + 1, (b, 1), device=xh0_lig.device)
        # Time fractions in float32 (as DiffSBDD computes them, also in float64 runs).
        t_int = t_int.reshape(b, 1).to(torch.float32)
        s = ((t_int - 1) / self.T).to(dtype)
        t = (t_int / self.T).to(dtype)
        t_int = t_int.to(dtype)
        t_is_zero = (t_int == 0).to(dtype).squeeze(1)
        gamma_s, gamma_t = self.gamma(s), self.gamma(t)

        xh0_lig, xh0_pocket = self._centre_xh(xh0_lig, xh0_pocket, lig_mask, pocket_mask, b)
        z_t, xh_pocket, eps = self.noised_representation(xh0_lig, xh0_pocket, lig_mask,
                                                         pocket_mask, gamma_t, b, noise)
        eps_hat = self.net(z_t, xh_pocket, t, lig_mask, pocket_mask, film)
        xh_lig_hat = (z_t / alpha(gamma_t)[lig_mask]
                      - eps_hat * sigma(gamma_t)[lig_mask] / alpha(gamma_t)[lig_mask])
        error_t = scatter_sum(((eps - eps_hat) ** 2).sum(1), lig_mask, b)
        snr_weight = (1 - torch.exp(gamma_t - gamma_s)).squeeze(1)
        gamma_0 = self.gamma(torch.zeros_like(t))
        neg_log_const_0 = -((n_lig - 1) * self.n_dims).to(dtype) * (
            -0.5 * gamma_0.squeeze(1) - 0.5 * math.log(2 * math.pi))
        kl_prior = self.kl_prior(xh0_lig, lig_mask, n_lig)

        if training:
            log_px, log_ph = self.log_pxh_given_z0(one_hot, z_t, eps, eps_hat, gamma_t,
                                                   lig_mask, b)
            loss_0_x = -log_px * t_is_zero
            loss_0_h = -log_ph * t_is_zero
            error_t = error_t * (1 - t_is_zero)
        else:
            z_0, xh_pocket0, eps_0 = self.noised_representation(xh0_lig, xh0_pocket, lig_mask,
                                                                pocket_mask, gamma_0, b, noise)
            eps_hat_0 = self.net(z_0, xh_pocket0, torch.zeros_like(s), lig_mask, pocket_mask,
                                 film)
            log_px, log_ph = self.log_pxh_given_z0(one_hot, z_0, eps_0, eps_hat_0, gamma_0,
                                                   lig_mask, b)
            loss_0_x, loss_0_h = -log_px, -log_ph

        log_pN = (self.log_pN(n_lig, n_pocket).to(dtype) if self.size_histogram is not None
                  else torch.zeros_like(kl_prior))
        delta_log_px = -((n_lig - 1) * self.n_dims).to(dtype) * math.log(self.norm_values[0])

        if self.loss_type == "l2" and training:
            error_norm = error_t / ((self.n_dims + self.atom_nf) * n_lig).to(dtype)
            loss_t = 0.5 * error_norm
            loss_0_x_norm = loss_0_x / (self.n_dims * n_lig).to(dtype)
            loss_0 = loss_0_x_norm + loss_0_h
            nll = loss_t + loss_0 + kl_prior
        else:
            error_norm = error_t
            loss_t = -self.T * 0.5 * snr_weight * error_t
            loss_0 = loss_0_x + loss_0_h + neg_log_const_0
            nll = loss_t + loss_0 + kl_prior - delta_log_px - log_pN

        raw = {
            "delta_log_px": delta_log_px, "error_t_lig": error_t, "SNR_weight": snr_weight,
            "loss_0_x_ligand": loss_0_x, "loss_0_h": loss_0_h, "neg_log_const_0": neg_log_const_0,
            "kl_prior": kl_prior, "log_pN": log_pN, "t_int": t_int.squeeze(1),
            "xh_lig_hat": xh_lig_hat,
        }
        info = {
            "eps_hat_lig_x": scatter_mean(eps_hat[:, :3].abs().mean(1), lig_mask, b).mean(),
            "eps_hat_lig_h": scatter_mean(eps_hat[:, 3:].abs().mean(1), lig_mask, b).mean(),
            "error_t_lig": error_norm.mean(), "SNR_weight": snr_weight.mean(),
            "loss_0": loss_0.mean(), "kl_prior": kl_prior.mean(),
            "delta_log_px": delta_log_px.mean(), "neg_log_const_0": neg_log_const_0.mean(),
            "log_pN": log_pN.mean(),
        }
        return LossTerms(loss=nll.mean(), nll=nll, loss_t=loss_t, loss_0=loss_0, raw=raw,
                         info=info)

    # ----------------------------------------------------------------- sampling
    def sample_prior(self, mu_lig: Tensor, xh_pocket: Tensor, lig_mask: Tensor,
                     pocket_mask: Tensor, n: int, noise: NoiseFn) -> tuple[Tensor, Tensor]:
        """z_T = mu + eps (sigma 1), then centred."""
        eps = noise((mu_lig.shape[0], self.n_dims + self.atom_nf), mu_lig)
        return self._centre_xh(mu_lig + eps, xh_pocket, lig_mask, pocket_mask, n)

    def sample_p_zs_given_zt(self, s: Tensor, t: Tensor, z_t: Tensor, xh_pocket: Tensor,
                             lig_mask: Tensor, pocket_mask: Tensor, noise: NoiseFn,
                             film: Film = None, return_eps_hat: bool = False):
        """One reverse step z_t -> z_s (s, t fractions [B,1]); returns (z_s, shifted pocket)."""
        n = s.shape[0]
        gamma_s, gamma_t = self.gamma(s), self.gamma(t)
        sigma2_t_s, sigma_t_s, alpha_t_s = self.sigma_and_alpha_t_given_s(gamma_t, gamma_s)
        sigma_s, sigma_t = sigma(gamma_s), sigma(gamma_t)
        eps_hat = self.net(z_t, xh_pocket, t, lig_mask, pocket_mask, film)
        mu = z_t / alpha_t_s[lig_mask] - (sigma2_t_s / alpha_t_s / sigma_t)[lig_mask] * eps_hat
        std = sigma_t_s * sigma_s / sigma_t
        eps = noise((z_t.shape[0], self.n_dims + self.atom_nf), z_t)
        z_s, xh_pocket = self._centre_xh(mu + std[lig_mask] * eps, xh_pocket, lig_mask,
                                         pocket_mask, n)
        return (z_s, xh_pocket, eps_hat) if return_eps_hat else (z_s, xh_pocket)

    def sample_p_xh_given_z0(self, z_0: Tensor, xh_pocket: Tensor, lig_mask: Tensor,
                             pocket_mask: Tensor, n: int, noise: NoiseFn, film: Film = None):
        """Last step: x ~ p(x | z_0); atom types = argmax of the h part of z_0.

        Returns (x_lig Å [N,3], one-hot [N,A] int64, x_pocket Å, h_pocket unnormalised).
        """
        t0 = z_0.new_zeros((n, 1))
        gamma_0 = self.gamma(t0)
        sigma_x = torch.exp(0.5 * gamma_0)
        eps_hat = self.net(z_0, xh_pocket, t0, lig_mask, pocket_mask, film)
        x_hat = (z_0 - sigma(gamma_0)[lig_mask] * eps_hat) / alpha(gamma_0)[lig_mask]
        eps = noise((z_0.shape[0], self.n_dims + self.atom_nf), z_0)
        xh_lig, xh_pocket = self._centre_xh(x_hat + sigma_x[lig_mask] * eps, xh_pocket,
                                            lig_mask, pocket_mask, n)
        x_lig = xh_lig[:, :3] * self.norm_values[0]
        h_lig = nn.functional.one_hot(torch.argmax(z_0[:, 3:] * self.norm_values[1], dim=1),
                                      self.atom_nf)
        return (x_lig, h_lig, xh_pocket[:, :3] * self.norm_values[0],
                xh_pocket[:, 3:] * self.norm_values[1])

    @torch.no_grad()
    def sample_given_pocket(self, pocket_x: Tensor, pocket_one_hot: Tensor, pocket_mask: Tensor,
                            num_nodes_lig: Tensor, timesteps: int | None = None,
                            noise: NoiseFn | None = None, film: Film = None,
                            callback: Callable[[int], None] | None = None,
                            return_centred: bool = False):
        """Generate ligands for pockets given in any frame (Å); returns them in that frame.

        Returns (x_lig Å [sum N, 3], atom type index [sum N], lig_mask), plus the coordinates in
        the ligand-centred sampling frame if ``return_centred``. ``callback(step)`` is called
        after every denoising step (for progress bars).
        """
        timesteps = self.T if timesteps is None else int(timesteps)
        noise = noise or gaussian_noise()
        n = len(num_nodes_lig)
        dtype = pocket_x.dtype
        device = pocket_x.device
        xh0_pocket = self.normalize_xh(pocket_x, pocket_one_hot.to(dtype))
        lig_mask = torch.repeat_interleave(torch.arange(n, device=device),
                                           num_nodes_lig.to(device).long())
        pocket_com_before = scatter_mean(pocket_x, pocket_mask, n)
        mu_x = scatter_mean(xh0_pocket[:, :3], pocket_mask, n)
        mu = torch.cat([mu_x, mu_x.new_zeros((n, self.atom_nf))], dim=1)[lig_mask]
        z, xh_pocket = self.sample_prior(mu, xh0_pocket, lig_mask, pocket_mask, n, noise)
        for step, s_int in enumerate(reversed(range(timesteps))):
            # Fractions in float32, as DiffSBDD computes them (also in float64 runs).
            s_arr = torch.full((n, 1), s_int, device=device) / timesteps
            t_arr = torch.full((n, 1), s_int + 1, device=device) / timesteps
            z, xh_pocket = self.sample_p_zs_given_zt(s_arr.to(dtype), t_arr.to(dtype), z,
                                                     xh_pocket, lig_mask, pocket_mask, noise,
                                                     film)
            if callback is not None:
                callback(step)
        x_lig, h_lig, x_pocket, _ = self.sample_p_xh_given_z0(z, xh_pocket, lig_mask,
                                                              pocket_mask, n, noise, film)
        if scatter_sum(x_lig, lig_mask, n).abs().max().item() > 5e-2:
            x_lig, x_pocket = self.centre(x_lig, x_pocket, lig_mask, pocket_mask, n)
        shift = pocket_com_before - scatter_mean(x_pocket, pocket_mask, n)
        out = (x_lig + shift[lig_mask], h_lig.argmax(1), lig_mask)
        return (*out, x_lig) if return_centred else out
