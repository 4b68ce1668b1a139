"""Train the demo package's weights on the synthetic cohort (reproducible: fixed seeds, CPU,
deterministic algorithms).

    cargo run --release -- synth cohort --out /tmp/cohort.safetensors     # 1300 patients
    python models/reference/train_demo.py /tmp/cohort.safetensors \
        --spec models/packages/demo/model.toml --out models/packages/demo/weights.safetensors \
        --report models/reference/demo_training.json
    cargo run --release -- model sign models/packages/demo --key models/packages/demo.key

Patients 0-999 train (the last 150 of them pick the epoch), 1000-1299 are the holdout; the
holdout AUC is for the true 2-year status, which the generator knows.
"""

import argparse
import json
import tomllib

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from crlm_net import CrlmNet, discrete_time_nll, risk_2y

SUBSETS = {
    "ct+slide+clinical": (1, 1, 1),
    "ct+clinical": (1, 0, 1),
    "ct+slide": (1, 1, 0),
    "slide+clinical": (0, 1, 1),
    "ct": (1, 0, 0),
}


def auc(score, label):
    """Mann-Whitney AUC with ties counted half."""
    score, label = np.asarray(score, float), np.asarray(label, bool)
    pos, neg = score[label], score[~label]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cohort")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--report")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    spec = tomllib.load(open(args.spec, "rb"))
    net_spec = spec["network"]
    d = load_file(args.cohort)
    mean = torch.tensor(net_spec["tile_mean"]).view(1, 1, 3, 1, 1)
    std = torch.tensor(net_spec["tile_std"]).view(1, 1, 3, 1, 1)

    def tiles_of(idx):
        t = d["tiles"][idx].float().permute(0, 1, 4, 2, 3) / 255.0
        return (t - mean) / std

    n = d["ct"].shape[0]
    n_tiles = d["n_tiles"].to(torch.int64)
    tile_mask = (torch.arange(d["tiles"].shape[1]).unsqueeze(0) < n_tiles.unsqueeze(1)).float()
    outcome = d["outcome"]
    # 0-849 train, 850-999 pick the epoch, 1000+ holdout (same proportions for a smaller file).
    a, b = (850, 1000) if n >= 1300 else (int(n * 0.65), int(n * 0.77))
    train_idx, val_idx, hold_idx = np.arange(0, a), np.arange(a, b), np.arange(b, n)

    model = CrlmNet(net_spec, d["clinical"].shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    gen = torch.Generator().manual_seed(args.seed)

    def predict(idx, present):
        model.eval()
        out = []
        with torch.no_grad():
            for s in range(0, len(idx), 64):
                b = torch.as_tensor(idx[s : s + 64])
                p = torch.tensor(present, dtype=torch.float32).expand(len(b), 3)
                h, _, _ = model(d["ct"][b], tiles_of(b), tile_mask[b], d["clinical"][b], p)
                out.append(risk_2y(h))
        return torch.cat(out).numpy()

    best, best_state, history = -1.0, None, []
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(train_idx), generator=gen).numpy()
        total = 0.0
        for s in range(0, len(perm), 32):
            b = torch.as_tensor(train_idx[perm[s : s + 32]])
            # Modality dropout: each modality absent with p = 0.15, never all three, so the
            # missing-modality embeddings learn to stand in.
            present = (torch.rand(len(b), 3, generator=gen) > 0.15).float()
            none = present.sum(1) == 0
            present[none, 0] = 1.0
            h, _, _ = model(d["ct"][b], tiles_of(b), tile_mask[b], d["clinical"][b], present)
            loss = discrete_time_nll(h, outcome[b, 0], outcome[b, 1])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        sched.step()
        val_auc = auc(predict(val_idx, (1, 1, 1)), outcome[val_idx, 2].numpy() > 0.5)
        history.append({"epoch": epoch + 1, "train_nll": total / len(perm), "val_auc": val_auc})
        print(f"epoch {epoch + 1:3d}  nll {total / len(perm):.4f}  val AUC {val_auc:.3f}", flush=True)
        score = val_auc if val_auc == val_auc else 0.0  # NaN when a tiny file has no events
        if best_state is None or score > best:
            best = score
            best_state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}

    model.load_state_dict(best_state)
    label = outcome[hold_idx, 2].numpy() > 0.5
    report = {
        "cohort_patients": int(n),
        "train": len(train_idx),
        "validation": len(val_idx),
        "holdout": len(hold_idx),
        "holdout_events_2y": int(label.sum()),
        "best_validation_auc": best,
        "oracle_holdout_auc": auc(outcome[hold_idx, 4].numpy(), label),
        "holdout_auc": {name: auc(predict(hold_idx, p), label) for name, p in SUBSETS.items()},
        "history": history,
    }
    risk = predict(hold_idx, (1, 1, 1))
    report["holdout_mean_predicted_risk"] = float(risk.mean())
    report["holdout_event_rate"] = float(label.mean())
    print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=2))
    save_file(best_state, args.out)
    if args.report:
        json.dump(report, open(args.report, "w"), indent=2)


if __name__ == "__main__":
    main()
