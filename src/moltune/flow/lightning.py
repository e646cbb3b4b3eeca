"""Lightning wrappers for transport-flow training: a passive module and a data module.

:class:`TransportDataModule` serves pairs (x at T_i, y at T_j) for the configured temperature
pairs of a replica-exchange data set (``moltune.physics.ptdata.load_pt_data``). One *epoch* is
one pass over every source frame of every pair (each with an independently drawn target frame).
Validation uses fixed, index-aligned pairs from a held-out data set (or a held-out tail).

:class:`TransportModule` holds the flow and computes the losses of ``moltune.flow.losses``;
optimisation is manual so that steps with non-finite losses or gradients are skipped and
counted (``train/skipped_steps``), gradients are clipped, and the learning rate warms up.
Metric names follow the project's contract (``train/loss``, ``val/acceptance_flow``, ...).

Several systems (``moltune.flow.multi_peptide``: peptides sharing one core) use the same module:
a subclass overrides :meth:`TransportModule.system`, training batches carry a fifth item (the
system's index) and validation batches an eighth; ``pair_tags`` names each validation pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from moltune.flow.losses import transport_terms
from moltune.physics.units import beta


@dataclass
class PairSet:
    """Frames of one temperature pair (i -> j): x at T_i, y at T_j (nm), energies (kJ/mol)."""

    t_source_K: float
    t_target_K: float
    x: torch.Tensor  # [F_i, N, 3] float32
    y: torch.Tensor  # [F_j, N, 3] float32
    u_x: np.ndarray  # [F_i] float64
    u_y: np.ndarray  # [F_j] float64


class TrainPairs(Dataset):
    """Item k: source frame k (over all pairs) with a random target frame of the same pair."""

    def __init__(self, pairs: list[PairSet], seed: int = 0):
        self.pairs = pairs
        self.offsets = np.cumsum([0] + [len(p.x) for p in pairs])
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, k: int):
        q = int(np.searchsorted(self.offsets, k, side="right") - 1)
        p = self.pairs[q]
        j = int(self.rng.integers(len(p.y)))
        return p.x[k - self.offsets[q]], p.y[j], p.t_source_K, p.t_target_K


class ValPairs(Dataset):
    """Fixed pairs: the k-th held-out source frame with the k-th held-out target frame."""

    def __init__(self, pairs: list[PairSet], n_per_pair: int):
        self.items = []
        for q, p in enumerate(pairs):
            n = min(n_per_pair, len(p.x), len(p.y))
            ix = np.linspace(0, len(p.x) - 1, n).astype(int)
            iy = np.linspace(0, len(p.y) - 1, n).astype(int)
            self.items += [(q, a, b) for a, b in zip(ix, iy)]
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        q, a, b = self.items[k]
        p = self.pairs[q]
        return p.x[a], p.y[b], p.t_source_K, p.t_target_K, p.u_x[a], p.u_y[b], q


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


class TransportDataModule(L.LightningDataModule):
    """Training pairs from ``train_data`` and validation pairs from ``val_data`` (PTData objects).

    Without ``val_data`` the last ``val_fraction`` of every temperature's frames is held out.
    ``pairs`` are index pairs into the data's temperature ladder (default: neighbours).
    """

    def __init__(
        self,
        train_data,
        val_data=None,
        pairs: list[tuple[int, int]] | None = None,
        batch_size: int = 128,
        val_pairs: int = 2000,
        val_fraction: float = 0.1,
        seed: int = 0,
    ):
        super().__init__()
        self.pairs = pairs or neighbour_pairs(len(train_data.temperatures_K))
        self.val_from_tail, self.val_fraction = val_data is None, val_fraction
        if val_data is None:
            n = min(len(f) for f in train_data.xyz_nm)
            cut = round(n * (1 - val_fraction))
            self.train_sets = make_pairs(train_data, self.pairs, slice(0, cut))
            self.val_sets = make_pairs(train_data, self.pairs, slice(cut, None))
        else:
            self.train_sets = make_pairs(train_data, self.pairs)
            self.val_sets = make_pairs(val_data, self.pairs)
        self.batch_size = batch_size
        self.val_pairs = val_pairs
        self.seed = seed

    reload = None  # optional callable returning fresh training data (a PT run still growing)

    def train_dataloader(self):
        if self.reload is not None and self.trainer is not None and self.trainer.current_epoch > 0:
            data = self.reload()
            if self.val_from_tail:
                n = min(len(f) for f in data.xyz_nm)
                self.train_sets = make_pairs(
                    data, self.pairs, slice(0, round(n * (1 - self.val_fraction)))
                )
            else:
                self.train_sets = make_pairs(data, self.pairs)
        return DataLoader(
            TrainPairs(self.train_sets, self.seed), batch_size=self.batch_size, shuffle=True,
            drop_last=True, num_workers=0,
        )  # fmt: skip

    def val_dataloader(self):
        return DataLoader(
            ValPairs(self.val_sets, self.val_pairs), batch_size=max(self.batch_size, 256),
            shuffle=False, num_workers=0,
        )  # fmt: skip

    def reference_energies(self) -> dict[float, float]:
        """Mean energy (kJ/mol) of the training frames at each temperature."""
        ref: dict[float, list] = {}
        for p in self.train_sets:
            ref.setdefault(p.t_source_K, []).append(p.u_x)
            ref.setdefault(p.t_target_K, []).append(p.u_y)
        return {t: float(np.mean(np.concatenate(v))) for t, v in ref.items()}


class TransportModule(L.LightningModule):
    """Passive module: a transport flow, its energy and the two-direction loss.

    ``energy`` maps [B, N, 3] nm to U [B] kJ/mol (float64 used); it is not a submodule, so it
    never enters checkpoints. ``u_ref`` maps temperature (K) -> reference mean energy (kJ/mol).
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
        self._energy = {"fn": energy}
        self.u_ref = {float(k): float(v) for k, v in u_ref.items()}
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.grad_clip, self.cut_kT, self.min_lr_fraction = grad_clip, cut_kT, min_lr_fraction
        self.fast_lr_factor = fast_lr_factor
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long))
        self.step0: dict | None = None
        self.save_hyperparameters(hparams or {}, ignore=["flow", "energy"])
        self._val: list = []

    @property
    def energy(self):
        return self._energy["fn"]

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

        def factor(step: int) -> float:
            if step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
            t = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
            return self.min_lr_fraction + (1 - self.min_lr_fraction) * 0.5 * (
                1 + math.cos(math.pi * t)
            )

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return [opt], [{"scheduler": sched, "interval": "step"}]

    def system(self, key: int | None = None):
        """(flow, energy, u_ref) of the system a batch belongs to (here one: ``key`` is None)."""
        return self.flow, self.energy, self.u_ref

    @staticmethod
    def _u_ref(temps: torch.Tensor, u_ref: dict) -> torch.Tensor:
        """Reference mean energy (kJ/mol) of each sample's temperature."""
        return torch.tensor([u_ref[float(t)] for t in temps.tolist()], dtype=torch.float64)

    def _terms(self, x, y, ts, tt, key: int | None = None):
        flow, energy, u_ref = self.system(key)
        ts64, tt64 = ts.double(), tt.double()
        return transport_terms(
            flow, energy, x, y, ts64, tt64, self._u_ref(ts64, u_ref), self._u_ref(tt64, u_ref),
            self.cut_kT,
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
        grad_norm = torch.tensor(float("nan"))
        if torch.isfinite(loss):
            self.manual_backward(loss)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.flow.parameters(), self.grad_clip)
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            opt.step()
        else:
            opt.zero_grad()
            self.skipped_steps += 1
        sched.step()
        log = {"on_step": True, "on_epoch": False, "batch_size": x.shape[0]}
        self.log("train/loss", loss.detach().float(), prog_bar=True, **log)
        self.log("train/loss_forward", loss_f.detach().float(), **log)
        self.log("train/loss_inverse", loss_i.detach().float(), **log)
        self.log("train/grad_norm", grad_norm.float(), **log)
        self.log("train/skipped_steps", self.skipped_steps.float(), **log)
        self.log("train/lr", torch.tensor(sched.get_last_lr()[0]), **log)
        return loss.detach()

    def _record_step0(self, terms, x, y, ts, tt, key: int | None = None) -> None:
        """Step-0 losses beside the identity map's values b_t <U(x)> and b_s <U(y)>."""
        energy = self.system(key)[1]
        with torch.no_grad():
            b_s = torch.as_tensor(beta(ts.double()))
            b_t = torch.as_tensor(beta(tt.double()))
            u_x = energy(x.double())
            u_y = energy(y.double())
            self.step0 = {
                "loss_forward": float(terms.loss_forward.mean()),
                "loss_inverse": float(terms.loss_inverse.mean()),
                "identity_loss_forward": float((b_t * u_x).mean()),
                "identity_loss_inverse": float((b_s * u_y).mean()),
            }

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val = []
        self._round_trip_done: set[int] = set()

    @torch.no_grad()
    def validation_step(self, batch, batch_idx):
        from moltune.flow.swaps import propose_flow_swap

        x, y, ts, tt, u_x, u_y, q, *key = batch
        for pair in torch.unique(q).tolist():
            m = q == pair
            t_s, t_t = float(ts[m][0]), float(tt[m][0])
            flow, energy, _ = self.system(int(key[0][m][0]) if key else None)
            prop = propose_flow_swap(
                flow, energy, x[m].double(), y[m].double(), t_s, t_t,
                float(beta(t_s)), float(beta(t_t)), u_x[m].numpy(), u_y[m].numpy(),
            )  # fmt: skip
            if pair not in self._round_trip_done:  # T^-1(T(x)) = x: a test of invertibility
                self._round_trip_done.add(pair)
                xr, _ = flow.inverse(prop.y_to_j[:128], t_s, t_t)
                err = (xr - x[m][:128].double()) ** 2
                rmsd = err.sum(-1).mean(-1).sqrt().cpu().numpy()
            else:
                rmsd = np.zeros(0)
            self._val.append((pair, t_s, t_t, prop, rmsd))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        from moltune.flow.swaps import acceptance_probability, log_acceptance_naive

        per_pair: dict[int, dict[str, list]] = {}
        for pair, t_s, t_t, prop, rmsd in self._val:
            d = per_pair.setdefault(pair, {"t": (t_s, t_t), "props": [], "rmsd": []})
            d["props"].append(prop)
            d["rmsd"].append(rmsd)
        summary = {
            k: []
            for k in ("lf", "li", "uf", "ui", "us", "ut", "kts", "ktt", "acc", "nai", "nf", "rmsd")
        }
        for pair, d in sorted(per_pair.items()):
            t_s, t_t = d["t"]
            b_s, b_t = float(beta(t_s)), float(beta(t_t))
            props = d["props"]
            cat = lambda name, props=props: np.concatenate([getattr(p, name) for p in props])
            u_x, u_y, u_tx, u_ti = cat("u_x"), cat("u_y"), cat("u_tx"), cat("u_tinv_y")
            ld_f, ld_i, nonfinite = cat("logdet_forward"), cat("logdet_inverse"), cat("nonfinite")
            acc = acceptance_probability(cat("log_alpha")).mean()
            naive = acceptance_probability(log_acceptance_naive(u_x, u_y, b_s, b_t)).mean()
            ok = ~nonfinite
            vals = {
                "lf": np.mean(b_t * u_tx[ok] - ld_f[ok]), "li": np.mean(b_s * u_ti[ok] - ld_i[ok]),
                "uf": np.mean(u_tx[ok]), "ui": np.mean(u_ti[ok]), "us": np.mean(u_x),
                "ut": np.mean(u_y), "kts": 1 / b_s, "ktt": 1 / b_t, "acc": acc, "nai": naive,
                "nf": nonfinite.mean(), "rmsd": np.concatenate(d["rmsd"]).mean(),
            }  # fmt: skip
            for k, v in vals.items():
                summary[k].append(v)
            if len(per_pair) > 1 or self.pair_tags:
                tag = self.pair_tags[pair] if self.pair_tags else f"{t_s:g}_{t_t:g}"
                self.log(f"val/acceptance_flow_{tag}", float(acc))
                self.log(f"val/acceptance_naive_{tag}", float(naive))
        names = {
            "lf": "val/loss_forward", "li": "val/loss_inverse", "uf": "val/energy_forward_kjmol",
            "ui": "val/energy_inverse_kjmol", "us": "val/energy_source_ref_kjmol",
            "ut": "val/energy_target_ref_kjmol", "kts": "val/kT_source_kjmol",
            "ktt": "val/kT_target_kjmol", "acc": "val/acceptance_flow",
            "nai": "val/acceptance_naive", "nf": "val/nonfinite_fraction",
            "rmsd": "val/reconstruction_rmsd_nm",
        }  # fmt: skip
        for k, name in names.items():
            self.log(name, float(np.mean(summary[k])))
        self.log("val/loss", float(np.mean(summary["lf"]) + np.mean(summary["li"])))
        self._val = []

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["moltune_step0"] = self.step0

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.step0 = checkpoint.get("moltune_step0")
