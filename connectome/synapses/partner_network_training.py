"""Training the partner network (partner_network.py) on synthetic volumes: the cleft groups of
partner_training.examples (the shipped cleft network's clefts, the ground-truth cells as the
segmentation) whose true presynaptic cell is among the candidates; one patch per candidate; the loss
is the softmax over each group's candidates (the true pre is the answer), with the 48 flips and axis
orders of an isotropic cube as augmentation. The checkpoint that ranks the most validation groups
right is kept; the report also gives the shipped interface classifier alone and with the network's
logit added (`--attach NAME` writes that classifier with the network, weight 1, as NAME.json).

    python -m connectome.synapses.partner_network_training --train-seeds 100 185 --steps 1500 --width 16 \
        --attach partners-synthetic-net
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from connectome.synapses import model as M
from connectome.synapses import partner_network as PN
from connectome.synapses.interface import LINEAR_CLASSIFIER, WEIGHTS_DIR, load_classifier
from connectome.synapses.partner_training import VOXEL_SIZE, examples

PATCH = 32
BATCH = 8  # groups per step
MIN_VOXELS = 100


def groups(seeds, model: M.LoadedCleftModel, patch: int = PATCH, labelled_only: bool = True) -> list[dict]:
    """Per cleft group with a true synapse: its candidates' patches (uint8), whether each is the true
    pre, and their interface features; `labelled_only`: only groups whose true pre is a candidate."""
    out = []
    for seed in seeds:
        e = examples(seed, model, keep_volume=True)
        v = e["volume"]
        for g in np.flatnonzero(e["true_pre"] != 0):
            m = e["group"] == g
            if not m.any() or (labelled_only and not e["positive"][m].any()):
                continue
            n = int(m.sum())
            centre = np.repeat(np.round(e["centre"][g:g + 1]).astype(np.int64), n, 0)
            x = PN.patches(v.raw, v.labels, e["prob"], (0, 0, 0), centre, np.full(n, e["keys"][g, 1]),
                           e["cand"][m], patch // 2)
            out.append({"patches": x, "positive": e["positive"][m], "features": e["features"][m]})
    return out


def _symmetry(x, rng):
    """One of the 48 axis orders and flips of the patches' three spatial axes."""
    perm = [2, 3, 4]
    rng.shuffle(perm)
    x = x.permute(0, 1, *perm)
    flips = [d for d in (2, 3, 4) if rng.random() < 0.5]
    return x.flip(flips) if flips else x


def _tensor(x: np.ndarray):
    import torch

    return torch.from_numpy(x.astype(np.float32) / 255.0)


def ranked_right(net, val: list[dict], classifier=None, weight: float = 1.0) -> float:
    """Share of groups whose best candidate is the true pre: by the network's logit, the classifier's
    score (net None), or their sum with the network's logit times `weight`."""
    right = 0
    for g in val:
        score = np.zeros(len(g["positive"]))
        if net is not None:
            score += weight * PN.logits(net, g["patches"])
        if classifier is not None:
            score += classifier.scores(g["features"][:, :len(classifier.weights)])
        right += int(g["positive"][score.argmax()])
    return right / max(len(val), 1)


def train(name: str, train_seeds, val_seeds, steps: int, width: int, cleft_model: str = "cleft-synthetic",
          attach: str | None = None, stop_after: int | None = None, log=print) -> dict:
    """`steps` sets the learning-rate schedule (cosine); `stop_after` ends training earlier."""
    import torch

    t0 = time.perf_counter()
    m = M.load(cleft_model, "cpu")
    tr, va = groups(train_seeds, m), groups(val_seeds, m, labelled_only=False)
    log(f"{len(tr)} training groups, {len(va)} validation groups; data in {time.perf_counter() - t0:.0f} s")
    torch.manual_seed(0)
    net = PN.build(width, PATCH)
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rng = np.random.default_rng(0)
    best, history, losses = (-1.0, 0), [], []
    path = WEIGHTS_DIR / f"{name}.pt"
    last = min(steps, stop_after or steps)
    for step in range(1, last + 1):
        idx = rng.choice(len(tr), BATCH, replace=False)
        xs, member, target, start = [], [], [], 0
        for j, k in enumerate(idx):
            xs.append(_symmetry(_tensor(tr[k]["patches"]), rng))
            member += [j] * len(tr[k]["positive"])
            target.append(start + int(np.flatnonzero(tr[k]["positive"])[0]))
            start += len(tr[k]["positive"])
        logit = net(torch.cat(xs)).squeeze(1)
        seg = torch.tensor(member)
        top = torch.zeros(BATCH).scatter_reduce(0, seg, logit.detach(), "amax", include_self=False)
        z = torch.zeros(BATCH).index_add(0, seg, torch.exp(logit - top[seg]))
        loss = -(logit[target] - top - torch.log(z)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == last:
            net.eval()
            acc = ranked_right(net, va)
            net.train()
            history.append({"step": step, "loss": float(np.mean(losses[-100:])), "validation": acc})
            log(f"step {step} loss {history[-1]['loss']:.3f} validation {acc:.3f} ({time.perf_counter() - t0:.0f} s)")
            if acc >= best[0]:
                best = (acc, step)
                torch.save(net.state_dict(), path)
    net.load_state_dict(torch.load(path, weights_only=True))
    net.eval()
    result = {"network": best[0], "best_step": best[1]}
    if attach:
        clf = load_classifier(LINEAR_CLASSIFIER)
        result.update(classifier=ranked_right(None, va, clf), classifier_plus_network=ranked_right(net, va, clf))
    provenance = {"cleft_model": cleft_model, "train_seeds": [min(train_seeds), max(train_seeds)],
                  "validation_seeds": [min(val_seeds), max(val_seeds)], "training_groups": len(tr),
                  "validation_groups": len(va), "steps": steps, "stopped_after": last, "batch_groups": BATCH,
                  "history": history,
                  "segmentation": "ground-truth cells", "validation": result,
                  "command": f"python -m connectome.synapses.partner_network_training --name {name} --train-seeds "
                             f"{min(train_seeds)} {max(train_seeds) + 1} --steps {steps} --width {width}"
                             + (f" --stop-after {last}" if last < steps else "")
                             + (f" --attach {attach}" if attach else "")}
    with open(WEIGHTS_DIR / f"{name}.json", "w") as fh:
        json.dump({"name": name, "voxel_size": list(VOXEL_SIZE), "patch": PATCH, "width": width,
                   "min_voxels": MIN_VOXELS, "provenance": provenance}, fh, indent=1)
    if attach:
        attach_network(attach, name, 1.0)
    log(json.dumps(result))
    return result


def attach_network(name: str, network: str, weight: float, base: str = LINEAR_CLASSIFIER) -> None:
    """Write classifier `name`: the shipped `base` classifier's linear weights plus `network`'s mean logit
    times `weight`."""
    with open(WEIGHTS_DIR / f"{base}.json") as f:
        d = json.load(f)
    d.update(name=name, network=network, network_weight=weight)
    with open(WEIGHTS_DIR / f"{name}.json", "w") as f:
        json.dump(d, f, indent=1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", default=PN.DEFAULT_NETWORK)
    p.add_argument("--model", default="cleft-synthetic")
    p.add_argument("--train-seeds", nargs=2, type=int, default=[100, 185], metavar=("FIRST", "END"))
    p.add_argument("--val-seeds", nargs=2, type=int, default=[200, 231], metavar=("FIRST", "END"))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--stop-after", type=int, default=None, help="end training after this many steps")
    p.add_argument("--attach", default=None, help="write this classifier: the shipped one plus the network (weight 1)")
    a = p.parse_args(argv)
    train(a.name, range(*a.train_seeds), range(*a.val_seeds), a.steps, a.width, a.model, a.attach, a.stop_after)


if __name__ == "__main__":
    main()
