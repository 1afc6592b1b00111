"""A small torch MLP on scikit-learn's bundled digits (8x8 images, 10 classes), as an hpod trial.

Runs the same inside and outside hpod:

    python train.py                       # sensible defaults, 20 epochs, no daemon needed
    python train.py --lr 0.05 --opt sgd   # any key on the command line

Inside hpod the configuration arrives as command-line flags (the study's `{key}` placeholders)
and through `trial.config()`; a flag wins. One epoch is one pass over the training split.
The checkpoint follows the trial contract: saved on PAUSE/STOP, at the last epoch and on
SIGTERM, then loaded when the daemon resumes the trial with `resume_from() > 0`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import digits_data
import torch
from torch import nn

from hpod import trial

DEFAULTS: dict[str, Any] = {
    "lr": 0.01,
    "width": 128,
    "depth": 1,
    "drop": 0.1,
    "bs": 64,
    "opt": "adam",
    "seed": 0,
    "epochs": 20,  # only used outside hpod, where max_resource() has nothing to say
}

# OTX's names for two of the same knobs: its default hpo_config.yaml searches these, so that
# file runs against this trial as it is (docs/otx.md). Its metric, accuracy, is reported too.
OTX_NAMES = {"learning_parameters.learning_rate": "lr", "learning_parameters.batch_size": "bs"}

CHECKPOINT = "model.pt"

# Trials run side by side on a small machine: one thread each keeps them from fighting over
# cores, and for a model this size more threads would not be faster anyway.
torch.set_num_threads(1)

_stop_requested = False


def _on_sigterm(signum, frame):
    # Only record: the loop saves a checkpoint at the end of the epoch and exits cleanly.
    global _stop_requested
    _stop_requested = True


def parse_config(argv):
    base = {**DEFAULTS, **trial.config(defaults=DEFAULTS)}
    for otx_name, ours in OTX_NAMES.items():
        if otx_name in base:
            base[ours] = base.pop(otx_name)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=float(base["lr"]))
    parser.add_argument("--width", type=int, default=int(base["width"]))
    parser.add_argument("--depth", type=int, default=int(base["depth"]))
    parser.add_argument("--drop", type=float, default=float(base["drop"]))
    parser.add_argument("--bs", type=int, default=int(base["bs"]))
    parser.add_argument("--opt", choices=["sgd", "adam"], default=str(base["opt"]))
    parser.add_argument("--seed", type=int, default=int(base["seed"]))
    parser.add_argument("--epochs", type=int, default=int(base["epochs"]))
    parser.add_argument(
        "--checkpoint-dir", default=None, help="outside hpod: where to save (default: nowhere)"
    )
    return vars(parser.parse_args(argv))


def load_data():
    """The same split for every trial (digits_data.py: made at its import), as tensors."""
    d = digits_data
    return tuple(torch.tensor(a) for a in (d.X_TRAIN, d.Y_TRAIN, d.X_VAL, d.Y_VAL))


def build_model(cfg, n_in, n_out):
    layers: list[nn.Module] = []
    width_in = n_in
    for _ in range(max(1, cfg["depth"])):
        layers += [nn.Linear(width_in, cfg["width"]), nn.ReLU(), nn.Dropout(cfg["drop"])]
        width_in = cfg["width"]
    layers.append(nn.Linear(width_in, n_out))
    return nn.Sequential(*layers)


def build_optimizer(cfg, model):
    if cfg["opt"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9)
    return torch.optim.Adam(model.parameters(), lr=cfg["lr"])


def train_one_epoch(model, optimizer, x, y, bs, gen):
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    order = torch.randperm(len(x), generator=gen)
    for start in range(0, len(x), bs):
        idx = order[start : start + bs]
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x[idx]), y[idx]).backward()
        optimizer.step()


@torch.no_grad()
def evaluate(model, x, y):
    model.eval()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    acc = (logits.argmax(dim=1) == y).float().mean().item()
    return acc, loss


def save_checkpoint(ckpt_dir, state):
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / CHECKPOINT
    tmp = final.with_name(final.name + ".tmp")
    torch.save(state, tmp)
    # A SIGKILL mid-write leaves the previous checkpoint whole: the rename is atomic.
    os.replace(tmp, final)


def main(argv=None):
    signal.signal(signal.SIGTERM, _on_sigterm)
    cfg = parse_config(argv)
    torch.manual_seed(cfg["seed"])  # initial weights and dropout masks
    gen = torch.Generator().manual_seed(cfg["seed"])  # the batch order

    x_tr, y_tr, x_va, y_va = load_data()
    # A proxy of the training split when the study sets subset_ratio (a time budget may): the
    # same share in every trial, never under 500 samples. Without the key, all of it.
    keep = trial.subset(list(range(len(y_tr))))
    x_tr, y_tr = x_tr[keep], y_tr[keep]
    model = build_model(cfg, x_tr.shape[1], int(y_tr.max()) + 1)
    optimizer = build_optimizer(cfg, model)

    max_epoch = trial.max_resource(default=cfg["epochs"])
    # Outside hpod, no checkpoint unless asked: a run by hand should not leave files behind.
    given = trial.inside_hpod() or "HPOD_CHECKPOINT_DIR" in os.environ
    where = cfg.pop("checkpoint_dir") or (trial.checkpoint_dir() if given else None)
    ckpt_dir = Path(where) if where else None
    done = 0  # epochs already trained into the model
    last: dict[str, float] = {}

    resume_from = trial.resume_from()
    ckpt_path = ckpt_dir / CHECKPOINT if ckpt_dir else None
    if resume_from > 0 and ckpt_path and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        gen.set_state(state["shuffle_rng"])
        done = int(state["epoch"])
        last = dict(state["metrics"])
        print(f"resumed from {ckpt_path} at epoch {done} (daemon: {resume_from})", flush=True)
    elif resume_from > 0:
        # hpod ignores reports at or below the resume level, so retraining from scratch is
        # slower but still correct.
        print(f"no checkpoint in {ckpt_dir}: starting from scratch", file=sys.stderr, flush=True)

    def snapshot(epoch):
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "metrics": last,
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": gen.get_state(),
            "config": {k: v for k, v in cfg.items() if k != "epochs"},
        }

    decision = trial.CONTINUE
    if done > resume_from and last:
        # A checkpoint saved on SIGTERM can be ahead of the daemon's record (the report for
        # that epoch never got through): tell it now rather than leave a gap in the curve.
        decision = trial.report(epoch=done, **last)

    epoch = done
    while decision == trial.CONTINUE and epoch < max_epoch and not _stop_requested:
        epoch += 1
        t0 = time.perf_counter()
        train_one_epoch(model, optimizer, x_tr, y_tr, cfg["bs"], gen)
        acc, loss = evaluate(model, x_va, y_va)
        last = {"val_acc": acc, "val_loss": loss, "accuracy": acc}
        try:
            decision = trial.report(epoch=epoch, **last)
        except Exception:
            if not _stop_requested:
                raise
            # Being shut down: the daemon may not answer any more, the checkpoint matters more.
            decision = trial.STOP
        seconds = time.perf_counter() - t0
        print(
            f"epoch {epoch:3d}  val_acc {acc:.4f}  val_loss {loss:.4f}  {seconds:.3f}s", flush=True
        )

    # PAUSE (may be resumed), STOP, SIGTERM and the last epoch all leave a checkpoint behind.
    if ckpt_dir and (epoch > done or not ckpt_path.exists()):
        save_checkpoint(ckpt_dir, snapshot(epoch))
    why = "SIGTERM" if _stop_requested else decision
    print(f"done at epoch {epoch} ({why}): val_acc {last.get('val_acc', float('nan')):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
