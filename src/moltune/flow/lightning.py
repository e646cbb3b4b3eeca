"""Lightning pieces of transport-flow training: the passive module and the pair datasets.

:class:`TrainPairs` serves pairs (x at T_i, y at T_j) for the configured temperature pairs of a
replica-exchange data set (``moltune.physics.ptdata.load_pt_data``); one pass is every source
frame of every pair (each with an independently drawn target frame). :class:`ValPairs` holds
fixed, index-aligned pairs from a held-out data set (or a held-out tail); under DDP each rank
validates its shard and the figures are computed from every rank's items. The data module over
a run's peptides is ``moltune.flow.peptides.TransportDataModule``.

:class:`TransportModule` holds the flow and computes the losses of ``moltune.flow.losses``;
optimisation is manual so that steps with non-finite losses or gradients are skipped and
counted (``train/skipped_steps``), gradients are clipped, and the learning rate warms up.
Metric names follow the project's contract (``train/loss``, ``val/acceptance_flow``, ...).

Device-safe: the energy (a float64 submodule, kept out of checkpoints) and the reference energies
are buffers, so ``.to(device)`` moves them and every tensor a step makes is made on the module's
device. Training items are drawn by :class:`moltune.common.training.EpochShardSampler` (each DDP
rank its own epoch-seeded shard; every target frame a function of (seed, epoch, item)).

Several systems (``moltune.flow.peptides``: peptides sharing one core) use the same module:
a subclass overrides :meth:`TransportModule.system`, training batches carry a fifth item (the
system's index) and validation batches a ninth; ``pair_tags`` names each validation pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from moltune.flow.losses import transport_terms
from moltune.physics.units import beta
from moltune.validation import metrics as mn


@dataclass
class PairSet:
    """Frames of one temperature pair (i -> j): x at T_i, y at T_j (nm), energies (kJ/mol)."""

    t_source_K: float
    t_target_K: float
    x: torch.Tensor  # [F_i, N, 3] float32
    y: torch.Tensor  # [F_j, N, 3] float32
    u_x: np.ndarray  # [F_i] float64
    u_y: np.ndarray  # [F_j] float64


ROUND_TRIP = 128  # validation items per pair whose round trip T^-1(T(x)) is measured
PROPOSAL_FIELDS = ("u_x", "u_y", "u_tx", "u_tinv_y", "logdet_forward", "logdet_inverse",
                   "log_alpha", "nonfinite")  # what validation keeps of a FlowSwapProposal


def _first_of_each(pos: np.ndarray) -> np.ndarray:
    """Indices that put ``pos`` in order, each position once."""
    order = np.argsort(pos, kind="stable")
    return order[np.unique(pos[order], return_index=True)[1]]


class TrainPairs(Dataset):
    """Item k: source frame k (over all pairs) with a target frame of the same pair drawn from
    (seed, epoch, k) alone (the index may be ``(epoch, k)``), so any number of ranks and a
    resumed run draw the same pairs."""

    def __init__(self, pairs: list[PairSet], seed: int = 0):
        self.pairs = pairs
        self.offsets = np.cumsum([0] + [len(p.x) for p in pairs])
        self.seed = seed

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index):
        epoch, k = index if isinstance(index, tuple) else (0, index)
        q = int(np.searchsorted(self.offsets, k, side="right") - 1)
        p = self.pairs[q]
        j = int(np.random.default_rng([self.seed, epoch, k]).integers(len(p.y)))
        return p.x[k - self.offsets[q]], p.y[j], p.t_source_K, p.t_target_K


class ValPairs(Dataset):
    """Fixed pairs: the k-th held-out source frame with the k-th held-out target frame. Items
    are ``(x, y, t_source_K, t_target_K, u_x, u_y, k, pair)`` (k: the position in its pair)."""

    def __init__(self, pairs: list[PairSet], n_per_pair: int):
        self.items = []
        for q, p in enumerate(pairs):
            n = min(n_per_pair, len(p.x), len(p.y))
            ix = np.linspace(0, len(p.x) - 1, n).astype(int)
            iy = np.linspace(0, len(p.y) - 1, n).astype(int)
            self.items += [(q, k, a, b) for k, (a, b) in enumerate(zip(ix, iy))]
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        q, k, a, b = self.items[index]
        p = self.pairs[q]
        return p.x[a], p.y[b], p.t_source_K, p.t_target_K, p.u_x[a], p.u_y[b], k, q


def neighbour_pairs(n: int) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(n - 1)]


def make_pairs(data, pairs: list[tuple[int, int]], frames: slice = slice(None)) -> list[PairSet]:
    out = []
    for i, j in pairs:
        out.append(
            PairSet(
                float(data.temperatures_K[i]),
                float(data.temperatures_K[j]),
                torch.as_tensor(np.asarray(data.xyz_nm[i][frames], dtype=np.float32)),
                torch.as_tensor(np.asarray(data.xyz_nm[j][frames], dtype=np.float32)),
                np.asarray(data.energy_kjmol[i][frames], dtype=np.float64),
                np.asarray(data.energy_kjmol[j][frames], dtype=np.float64),
            )
        )
    return out


class Unsaved(torch.nn.Module):
    """A submodule that moves with its parent (``.to``) but stays out of its checkpoints."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self._register_state_dict_hook(Unsaved._drop)
        self._register_load_state_dict_pre_hook(self._fill, with_module=False)

    @staticmethod
    def _drop(module, state_dict, prefix, local_metadata):
        for k in [k for k in state_dict if k.startswith(prefix)]:
            del state_dict[k]

    def _fill(self, state_dict, prefix, *args):
        for k, v in self.inner.state_dict(prefix=prefix + "inner.", keep_vars=True).items():
            state_dict.setdefault(k, v)

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


class Float64Energy(Unsaved):
    """U(x) (kJ/mol) of [B, N, 3] nm in float64 whatever the network's precision: autocast off,
    the input cast, and ``.to(dtype)`` of the parent moves its parameters but never casts them."""

    def __init__(self, energy: torch.nn.Module):
        super().__init__(energy)
        self.inner.double()

    def _apply(self, fn, recurse=True):
        device = fn(torch.zeros(1, dtype=torch.float64)).device
        self.inner.to(device=device, dtype=torch.float64)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.inner(x.double())


class ReferenceEnergies(torch.nn.Module):
    """Temperature (K) -> reference mean energy (kJ/mol), as non-persistent float64 buffers."""

    def __init__(self, u_ref: dict[float, float]):
        super().__init__()
        items = sorted((float(k), float(v)) for k, v in u_ref.items())
        self.register_buffer("t_K", torch.tensor([t for t, _ in items], dtype=torch.float64),
                             persistent=False)  # fmt: skip
        self.register_buffer("u_kjmol", torch.tensor([u for _, u in items], dtype=torch.float64),
                             persistent=False)  # fmt: skip

    def _apply(self, fn, recurse=True):
        device = fn(torch.zeros(1, dtype=torch.float64)).device
        self.t_K, self.u_kjmol = self.t_K.to(device), self.u_kjmol.to(device)
        return self

    def as_dict(self) -> dict[float, float]:
        return dict(zip(self.t_K.tolist(), self.u_kjmol.tolist()))

    def forward(self, temps_K: torch.Tensor) -> torch.Tensor:
        """Reference energy (kJ/mol) of each sample's temperature [B] (on the buffers' device)."""
        t = torch.as_tensor(temps_K, dtype=torch.float64, device=self.t_K.device).reshape(-1)
        hit = torch.isclose(t[:, None], self.t_K[None, :], rtol=0, atol=1e-6)
        if not bool(hit.any(1).all()):
            raise KeyError(f"no reference energy for temperatures {t[~hit.any(1)].tolist()} K")
        return self.u_kjmol[hit.long().argmax(1)]


class TransportModule(L.LightningModule):
    """Passive module: a transport flow, its energy and the two-direction loss.

    ``energy`` maps [B, N, 3] nm to U [B] kJ/mol; it is held as a float64 submodule
    (:class:`Float64Energy`) that moves with the module and never enters checkpoints. ``u_ref``
    maps temperature (K) -> reference mean energy (kJ/mol) (:class:`ReferenceEnergies`).
    """

    pair_tags: dict[int, str] | None = None  # validation pair index -> metric tag (all logged)

    def __init__(
        self,
        flow: torch.nn.Module,
        energy,
        u_ref: dict[float, float],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        total_steps: int = 10000,
        grad_clip: float = 10.0,
        cut_kT: float = 1000.0,
        min_lr_fraction: float = 0.05,
        fast_lr_factor: float = 10.0,
        hparams: dict | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.flow = flow
        self.energy = energy if isinstance(energy, Float64Energy) else Float64Energy(energy)
        self.reference = ReferenceEnergies(u_ref)
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.grad_clip, self.cut_kT, self.min_lr_fraction = grad_clip, cut_kT, min_lr_fraction
        self.fast_lr_factor = fast_lr_factor
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long))
        self.step0: dict | None = None
        self.save_hyperparameters(hparams or {}, ignore=["flow", "energy"])
        self._val: list = []

    @property
    def u_ref(self) -> dict[float, float]:
        return self.reference.as_dict()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        from moltune.flow.models import PER_COORDINATE_LAYERS

        fast = [
            p
            for m in self.flow.modules()
            if isinstance(m, PER_COORDINATE_LAYERS)
            for p in m.parameters()
        ]
        fast_ids = {id(p) for p in fast}
        rest = [p for p in self.flow.parameters() if id(p) not in fast_ids]
        groups = [{"params": rest}]
        if fast:  # a few per-coordinate parameters: a larger step moves them in tens of steps
            groups.append(
                {"params": fast, "lr": self.lr * self.fast_lr_factor, "weight_decay": 0.0}
            )
        opt = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        from moltune.common.training import lr_factor

        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, self.warmup_steps, self.total_steps, "cosine",
                                     self.min_lr_fraction))  # fmt: skip
        return [opt], [{"scheduler": sched, "interval": "step"}]

    def system(self, key: int | None = None):
        """(flow, energy, reference energies) of the system a batch belongs to (here one)."""
        return self.flow, self.energy, self.reference

    def _flow_dtype(self, flow) -> torch.dtype:
        p = next(flow.parameters(), None)
        return p.dtype if p is not None and p.is_floating_point() else torch.float32

    def _terms(self, x, y, ts, tt, key: int | None = None):
        flow, energy, ref = self.system(key)
        dtype = self._flow_dtype(flow)
        ts64 = torch.as_tensor(ts, device=self.device).double()
        tt64 = torch.as_tensor(tt, device=self.device).double()
        return transport_terms(
            flow, energy, x.to(self.device, dtype), y.to(self.device, dtype), ts64, tt64,
            ref(ts64), ref(tt64), self.cut_kT,
        )  # fmt: skip

    def training_step(self, batch, batch_idx):
        x, y, ts, tt, *key = batch
        key = int(key[0]) if key else None
        opt = self.optimizers()
        sched = self.lr_schedulers()
        terms = self._terms(x, y, ts, tt, key)
        loss_f, loss_i = terms.loss_forward.mean(), terms.loss_inverse.mean()
        loss = loss_f + loss_i
        if self.step0 is None:
            self._record_step0(terms, x, y, ts, tt, key)
        opt.zero_grad()
        # every rank takes the same decision (DDP averages gradients: all step or none)
        finite = self._all_ranks(torch.isfinite(loss))
        grad_norm = loss.new_tensor(float("nan"))
        if finite:
            self.manual_backward(loss)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.flow.parameters(), self.grad_clip)
        if finite and torch.isfinite(grad_norm):
            opt.step()
        else:
            opt.zero_grad()
            self.skipped_steps += 1
        sched.step()
        log = {"on_step": True, "on_epoch": False, "batch_size": x.shape[0], "sync_dist": True}
        self.log(mn.TRAIN_LOSS, loss.detach().float(), prog_bar=True, **log)
        self.log(mn.TRAIN_LOSS_FORWARD, loss_f.detach().float(), **log)
        self.log(mn.TRAIN_LOSS_INVERSE, loss_i.detach().float(), **log)
        self.log(mn.TRAIN_GRAD_NORM, grad_norm.detach().float(), **log)
        self.log(mn.TRAIN_SKIPPED_STEPS, self.skipped_steps.float(), **log)
        self.log(mn.TRAIN_LR, float(sched.get_last_lr()[0]), **log)
        return loss.detach()

    def _all_ranks(self, flag: torch.Tensor) -> bool:
        """``flag`` on every rank (a min-reduction under DDP; the flag itself otherwise)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return bool(flag)
        return bool(trainer.strategy.reduce(flag.float(), reduce_op="min") > 0.5)

    def _record_step0(self, terms, x, y, ts, tt, key: int | None = None) -> None:
        """Step-0 losses beside the identity map's values b_t <U(x)> and b_s <U(y)>."""
        energy = self.system(key)[1]
        with torch.no_grad():
            b_s = torch.as_tensor(beta(torch.as_tensor(ts, device=self.device).double()))
            b_t = torch.as_tensor(beta(torch.as_tensor(tt, device=self.device).double()))
            u_x = energy(x.to(self.device))
            u_y = energy(y.to(self.device))
            self.step0 = {
                "loss_forward": float(terms.loss_forward.mean()),
                "loss_inverse": float(terms.loss_inverse.mean()),
                "identity_loss_forward": float((b_t * u_x).mean()),
                "identity_loss_inverse": float((b_s * u_y).mean()),
            }

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val = []

    @torch.no_grad()
    def validation_step(self, batch, batch_idx):
        from moltune.flow.swaps import propose_flow_swap

        x, y, ts, tt, u_x, u_y, k, q, *key = batch
        for pair in torch.unique(q).tolist():
            m = q == pair
            t_s, t_t = float(ts[m][0]), float(tt[m][0])
            flow, energy, _ = self.system(int(key[0][m][0]) if key else None)
            dtype = self._flow_dtype(flow)
            prop = propose_flow_swap(
                flow, energy, x[m].to(dtype), y[m].to(dtype), t_s, t_t,
                float(beta(t_s)), float(beta(t_t)), u_x[m].double().cpu().numpy(),
                u_y[m].double().cpu().numpy(),
            )  # fmt: skip
            pos = k[m].cpu().numpy()
            # T^-1(T(x)) = x on the pair's first ROUND_TRIP items: a test of invertibility
            near = torch.as_tensor(pos < ROUND_TRIP, device=x.device)
            rmsd = np.zeros(0)
            if bool(near.any()):
                xr, _ = flow.inverse(prop.y_to_j[near], t_s, t_t)
                err = (xr.double() - x[m][near].to(xr.device).double()) ** 2
                rmsd = err.sum(-1).mean(-1).sqrt().cpu().numpy()
            self._val.append((pair, t_s, t_t, {f: getattr(prop, f) for f in PROPOSAL_FIELDS},
                              pos, rmsd))  # fmt: skip

    def on_validation_epoch_end(self) -> None:
        from moltune.common.training import gather
        from moltune.flow.swaps import acceptance_probability, log_acceptance_naive

        per_pair: dict[int, dict] = {}  # every rank's shard; an item seen twice counts once
        for pair, t_s, t_t, arrays, pos, rmsd in (r for part in gather(self._val) for r in part):
            d = per_pair.setdefault(pair, {"t": (t_s, t_t), "pos": [], "arrays": [], "rpos": [],
                                           "rmsd": []})  # fmt: skip
            d["pos"].append(pos)
            d["arrays"].append(arrays)
            d["rpos"].append(pos[pos < ROUND_TRIP])
            d["rmsd"].append(rmsd)
        self._val = []
        if not per_pair:
            return
        summary = {
            k: []
            for k in ("lf", "li", "uf", "ui", "us", "ut", "kts", "ktt", "acc", "nai", "nf", "rmsd")
        }
        for pair, d in sorted(per_pair.items()):
            t_s, t_t = d["t"]
            b_s, b_t = float(beta(t_s)), float(beta(t_t))
            once = _first_of_each(np.concatenate(d["pos"]))
            cat = lambda name, d=d, once=once: np.concatenate([a[name] for a in d["arrays"]])[once]
            u_x, u_y, u_tx, u_ti = cat("u_x"), cat("u_y"), cat("u_tx"), cat("u_tinv_y")
            ld_f, ld_i, nonfinite = cat("logdet_forward"), cat("logdet_inverse"), cat("nonfinite")
            acc = acceptance_probability(cat("log_alpha")).mean()
            naive = acceptance_probability(log_acceptance_naive(u_x, u_y, b_s, b_t)).mean()
            rmsd = np.concatenate(d["rmsd"])[_first_of_each(np.concatenate(d["rpos"]))]
            ok = ~nonfinite
            vals = {
                "lf": np.mean(b_t * u_tx[ok] - ld_f[ok]), "li": np.mean(b_s * u_ti[ok] - ld_i[ok]),
                "uf": np.mean(u_tx[ok]), "ui": np.mean(u_ti[ok]), "us": np.mean(u_x),
                "ut": np.mean(u_y), "kts": 1 / b_s, "ktt": 1 / b_t, "acc": acc, "nai": naive,
                "nf": nonfinite.mean(), "rmsd": rmsd.mean(),
            }  # fmt: skip
            for k, v in vals.items():
                summary[k].append(v)
            if len(per_pair) > 1 or self.pair_tags:
                tag = self.pair_tags[pair] if self.pair_tags else f"{t_s:g}_{t_t:g}"
                self.log(f"val/acceptance_flow_{tag}", float(acc), sync_dist=True)
                self.log(f"val/acceptance_naive_{tag}", float(naive), sync_dist=True)
        names = {
            "lf": mn.VAL_LOSS_FORWARD, "li": mn.VAL_LOSS_INVERSE, "uf": mn.VAL_ENERGY_FORWARD,
            "ui": mn.VAL_ENERGY_INVERSE, "us": mn.VAL_ENERGY_SOURCE_REF,
            "ut": mn.VAL_ENERGY_TARGET_REF, "kts": mn.VAL_KT_SOURCE,
            "ktt": mn.VAL_KT_TARGET, "acc": mn.VAL_ACCEPTANCE_FLOW,
            "nai": mn.VAL_ACCEPTANCE_NAIVE, "nf": mn.VAL_NONFINITE_FRACTION,
            "rmsd": mn.VAL_RECONSTRUCTION_RMSD,
        }  # fmt: skip
        # every rank holds the same gathered figures (sync_dist: Lightning's reduction of them)
        for k, name in names.items():
            self.log(name, float(np.mean(summary[k])), sync_dist=True)
        self.log(mn.VAL_LOSS, float(np.mean(summary["lf"]) + np.mean(summary["li"])),
                 sync_dist=True)  # fmt: skip

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["moltune_step0"] = self.step0

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.step0 = checkpoint.get("moltune_step0")
