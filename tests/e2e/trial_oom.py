"""A trial that runs out of memory above a batch size, as a GPU trial would.

``--mode raise``: raises MemoryError inside ``hpod.trial.oom_guard()`` when ``bs`` is above
``--fits`` (what a CUDA trial's torch.cuda.OutOfMemoryError does). ``--mode alloc``: allocates
``bs`` MiB for real, after moving itself into the memory-limited cgroup named by $OOM_CGROUP:
the kernel's OOM killer ends it. ``--mode cuda``: allocates bs/96 of its GPU's memory with
torch, inside ``oom_guard()``: past 96 a real torch.cuda.OutOfMemoryError. The objective is
best near lr = 0.5.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from hpod import trial

MIB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["raise", "alloc", "cuda"], default="raise")
    parser.add_argument("--fits", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    cfg = trial.config()
    bs, lr = int(cfg["bs"]), float(cfg["lr"])
    if args.mode == "alloc":
        procs = Path(os.environ["OOM_CGROUP"]) / "cgroup.procs"
        procs.write_text(str(os.getpid()))
        block = bytearray(bs * MIB)
        block[::4096] = b"\x01" * len(range(0, len(block), 4096))  # touch every page
        print(f"allocated {bs} MiB", flush=True)
    with trial.oom_guard():
        if args.mode == "cuda":
            import torch

            total = torch.cuda.get_device_properties(0).total_memory
            block = torch.empty(int(total * bs / 96), dtype=torch.uint8, device="cuda")
            print(f"allocated {block.numel() / 2**30:.1f} GiB on the GPU", flush=True)
        if args.mode == "raise" and bs > args.fits:
            raise MemoryError(f"simulated: a batch of {bs} does not fit (at most {args.fits})")
        for epoch in range(1, args.epochs + 1):
            acc = 1.0 - (lr - 0.5) ** 2 - 0.01 / epoch
            if trial.report(epoch=epoch, acc=acc) != trial.CONTINUE:
                break


if __name__ == "__main__":
    main()
