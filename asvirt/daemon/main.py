"""``asvirtd``: the daemon's command line.

    asvirtd --system                 serve qemu:///system (as root)
    asvirtd --session                serve qemu:///session for the calling user
    asvirtd --state-dir DIR          everything under DIR (tests, containers)
    asvirtd --stdio-bridge [...]     join stdin/stdout to a daemon's socket (for SSH)

SIGTERM or SIGINT stop it cleanly, leaving VMs running (``--shutdown-vms`` shuts them down
first, destroying those that do not stop in time). SIGKILL leaves VMs running too: the next
start re-attaches to them and journals what happened meanwhile.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import layout as layouts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="asvirtd", description="The asvirt daemon.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--system", action="store_true", help="serve qemu:///system")
    mode.add_argument("--session", action="store_true", help="serve qemu:///session")
    mode.add_argument("--state-dir", type=Path, metavar="DIR", help="keep everything under DIR")
    p.add_argument("--socket", type=Path, help="the read-write socket's path")
    p.add_argument("--socket-ro", type=Path, help="the read-only socket's path")
    p.add_argument("--config", type=Path, help="asvirtd.toml to read")
    p.add_argument("--shutdown-vms", action="store_true", help="shut VMs down when stopping")
    p.add_argument(
        "--define-defaults",
        action="store_true",
        help="on the first start, define the default NAT network and storage pool "
        "(implied by --system)",
    )
    p.add_argument(
        "--log-format", choices=("console", "json"), default="console", help="log line format"
    )
    p.add_argument("--log-level", default="info", help="debug, info, warning or error")
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics ([metrics] listen)",
    )
    p.add_argument(
        "--stdio-bridge",
        action="store_true",
        help="relay stdin/stdout to the daemon's socket (what SSH clients run)",
    )
    return p


def layout_from(args: argparse.Namespace) -> layouts.Layout:
    if args.state_dir is not None:
        chosen = layouts.under(args.state_dir.resolve())
    elif args.system:
        chosen = layouts.system()
    else:
        chosen = layouts.session()
    if args.socket is not None:
        chosen = _replace(chosen, socket=args.socket.resolve())
    if args.socket_ro is not None:
        chosen = _replace(chosen, socket_ro=args.socket_ro.resolve())
    return chosen


def _replace(layout: layouts.Layout, **changes: object) -> layouts.Layout:
    from ..records import replace

    return replace(layout, **changes)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chosen = layout_from(args)
    if args.stdio_bridge:
        from .bridge import run_bridge

        # As a local client: the session daemon is started when none listens at its socket.
        start_session = not args.system and args.state_dir is None and args.socket is None
        return run_bridge(chosen.socket, start_session=start_session)
    if args.system and os.geteuid() != 0:
        print("asvirtd: --system needs root", file=sys.stderr)
        return 1
    import trio

    from ..config import DaemonConfig, MetricsSettings
    from ..errors import AsvirtError
    from ..log import configure_logging
    from .server import Server, serve_until_signalled

    configure_logging(args.log_format, args.log_level)
    try:
        config_file = args.config or chosen.config_file
        config = DaemonConfig.load(config_file) if config_file.exists() else DaemonConfig()
        metrics = config.metrics if args.metrics is None else MetricsSettings(args.metrics)
        server = Server(
            chosen,
            settings=config.daemon,
            shutdown_vms=args.shutdown_vms,
            define_defaults=args.system or args.define_defaults,
            metrics=metrics.address(),
        )
        trio.run(serve_until_signalled, server)
    except (AsvirtError, BaseExceptionGroup) as caught:
        # trio hands the server's error (a state directory in use...) over in a group.
        err = _sole(caught)
        if not isinstance(err, AsvirtError):
            raise
        logging.getLogger("asvirt.daemon").error("cannot serve: %s", err)
        print(f"asvirtd: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _sole(exc: BaseException) -> BaseException:
    """The one exception inside nested groups of one (else ``exc`` itself)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


if __name__ == "__main__":
    sys.exit(main())
