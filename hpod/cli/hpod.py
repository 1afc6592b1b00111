"""`hpod serve`: the daemon's entry point. Logging is configured here and nowhere else."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpod import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpod", description="hpod, the hyperparameter-optimization daemon"
    )
    parser.add_argument("--version", action="version", version=f"hpod {__version__}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the daemon in the foreground (the default)")
    serve.add_argument("--config", type=Path, help="daemon configuration (see etc/hpod.toml)")
    serve.add_argument("--socket", help="the control (and trial) socket path")
    serve.add_argument("--trial-socket", help="a separate socket for trials (default: --socket)")
    serve.add_argument("--state-dir", type=Path, help="where the store, logs and checkpoints go")
    serve.add_argument("--cpu-slots", type=int, help="trials at once on CPU (default: cores)")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.add_argument("--log-format", choices=["auto", "console", "json"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command not in (None, "serve"):
        return 2
    if args.command is None:
        args = _parser().parse_args(["serve", *(argv or sys.argv[1:])])

    from hpod.daemon import logging as hlog
    from hpod.daemon.config import DaemonConfig, default_socket_path, default_state_dir
    from hpod.errors import HpodError

    try:
        config = DaemonConfig.from_file(args.config) if args.config else DaemonConfig.defaults()
        overrides = {
            "socket": args.socket,
            "trial_socket": args.trial_socket,
            "state_dir": args.state_dir,
            "cpu_slots": args.cpu_slots,
            "log_level": args.log_level,
            "log_format": args.log_format,
        }
        config = config.with_overrides(**{k: v for k, v in overrides.items() if v is not None})
    except HpodError as exc:
        print(f"hpod: {exc.message}", file=sys.stderr)
        return exc.code.exit_status
    hlog.configure(level=config.log_level, fmt=config.log_format)
    # Every setting in force, file and flags merged: what `log_level = "debug"` is there to show.
    hlog.get_logger("hpod.serve").debug("config", **config.to_dict())

    import anyio

    from hpod.daemon.app import Daemon

    daemon = Daemon(
        config,
        socket_path=str(config.socket or default_socket_path()),
        state_dir=Path(config.state_dir or default_state_dir()),
    )
    try:
        anyio.run(daemon.serve, backend="asyncio")
    except HpodError as exc:
        print(f"hpod: {exc.message}", file=sys.stderr)
        return exc.code.exit_status
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
