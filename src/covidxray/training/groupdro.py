"""Group distributionally robust optimisation (GroupDRO; Sagawa, Koh, Hashimoto & Liang, ICLR 2020).

Our collections are confounded with the labels: every COVID-19 image is an adult's, most non-COVID images are
Kermany's children, and the few adult non-COVID images of a fold (cohen's normals and other pneumonias, the
Radiography Database's) are where a source shortcut fails. Plain training minimises the mean loss, which such a
shortcut can make small while a few groups keep a high loss. GroupDRO minimises the *worst group's* loss instead,
with the groups = every (source, class) pair of the training split (``radiography/normal``,
``kermany/pneumonia``, ...): it keeps a distribution ``q`` over the groups and, at every step,

- ``q_g <- q_g * exp(eta * L_g)``, normalised, with ``L_g`` the batch's mean loss over its rows of group ``g``
  (groups absent from the batch: exponent 0; kept as ``log q``, so a large step neither overflows nor leaves a
  group stuck at 0), then
- the loss to minimise is ``sum_g q_g L_g`` (Algorithm 1 of the paper, the online form of its code).

``eta`` is ``TrainConfig.group_dro`` (``--group-dro``; 0: off, the plain mean). The paper used 0.01 with strong
regularisation (its point: without it, DRO fits the worst group's training images and generalises no better).
``q`` is part of the checkpoint (a resumed run continues with it) and its final value is recorded in run.json
(``group_dro_weights``), so which groups the run found hardest can be read off. Under DDP the group means that
move ``q`` are summed over the ranks first, so every rank holds the same ``q``, and each rank's loss divides by
the group's row count over all ranks (times the world size, as DDP averages the ranks' gradients), so the
gradient is that of ``sum_g q_g L_g`` over the whole batch. Class weights (``class_weights auto`` with the
shuffling sampler) multiply each row's loss before the group means, as they do in the plain loss; the recipe's
balanced sampler makes them 1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


class GroupDRO:
    """The group weights ``q`` of one run and the robust loss they give.

    ``groups`` holds one group index per training row, ``names`` one name per group (index order).
    """

    def __init__(self, groups: np.ndarray, names: list[str], eta: float, sync: bool = False):
        if eta <= 0:
            raise ValueError(f"GroupDRO needs a positive step size, got {eta}")
        if len(names) < 1 or (len(groups) and int(groups.max()) >= len(names)):
            raise ValueError(f"group indices reach beyond the {len(names)} names given")
        self.groups = torch.from_numpy(np.asarray(groups, np.int64))
        self.names = list(names)
        self.eta = float(eta)
        self.sync = sync
        # kept as log q (the update is additive there and q = softmax(log q)): exp(eta * L) neither overflows for
        # a large step nor leaves a group at an exact 0 it cannot leave
        self.log_q = torch.zeros(len(names), dtype=torch.float64)

    @property
    def q(self) -> torch.Tensor:
        return torch.softmax(self.log_q, 0)

    @classmethod
    def for_split(cls, sources: np.ndarray, targets: np.ndarray, classes: tuple[str, ...], eta: float, **kw):
        """Groups = the (source, class) pairs present in a split, named ``source/class``, in sorted order."""
        pairs = [f"{s}/{classes[int(t)]}" for s, t in zip(sources, targets, strict=True)]
        names = sorted(set(pairs))
        index = {n: i for i, n in enumerate(names)}
        return cls(np.asarray([index[p] for p in pairs], np.int64), names, eta, **kw)

    def loss(self, rows: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        """Update ``q`` with this batch's group means and return ``sum_g q_g L_g``.

        ``rows`` are the batch's per-row losses, ``idx`` the rows' positions in the training split."""
        g = self.groups[torch.from_numpy(np.asarray(idx, np.int64))].to(rows.device)
        n = len(self.names)
        sums = torch.zeros(n, dtype=rows.dtype, device=rows.device).index_add(0, g, rows)
        counts = torch.bincount(g, minlength=n).to(rows.dtype)
        scale = torch.ones((), dtype=rows.dtype, device=rows.device)
        with torch.no_grad():
            s, c = sums.detach().clone(), counts.clone()
            if self.sync and dist.is_available() and dist.is_initialized():
                dist.all_reduce(s)
                dist.all_reduce(c)
                scale = scale * dist.get_world_size()
            seen = (s / c.clamp(min=1)).double().cpu()  # groups absent everywhere: 0, log q unchanged
            self.log_q = self.log_q + self.eta * seen
        # each group's mean over the rows of every rank: DDP averages the ranks' gradients, hence the world size
        means = sums * scale / c.clamp(min=1)
        return (self.q.to(rows.dtype).to(rows.device) * means).sum()

    def weights(self) -> dict[str, float]:
        """The current ``q`` by group name (rounded for the record)."""
        return {name: round(float(w), 6) for name, w in zip(self.names, self.q, strict=True)}

    def state_dict(self) -> dict[str, object]:
        return {"names": self.names, "log_q": self.log_q.clone(), "q": self.q}

    def load_state_dict(self, state: dict[str, object]) -> None:
        if list(state["names"]) != self.names:  # type: ignore[arg-type]
            raise ValueError(f"checkpoint's groups {state['names']} differ from this run's {self.names}")
        self.log_q = torch.as_tensor(state["log_q"], dtype=torch.float64).clone()
