"""The cryopod command line: the daemon (`serve`, `config`) and CRI client commands."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from cryopod import __version__
from cryopod.config import Config, dump_config, load_config
from cryopod.errors import ConfigError, CryopodError


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="main configuration file (default /etc/cryopod/cryopod.conf, drop-ins in <file>.d/)",
    )
    parser.add_argument("--root", help="persistent storage directory")
    parser.add_argument("--runroot", help="volatile state directory")
    parser.add_argument("--listen", help="unix socket path for CRI")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _config_from(args: argparse.Namespace) -> Config:
    return load_config(
        args.config,
        overrides={
            "root": args.root,
            "runroot": args.runroot,
            "listen": args.listen,
            "log_level": args.log_level,
        },
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from cryopod.daemon import serve
    from cryopod.logsetup import configure_logging

    config = _config_from(args)
    configure_logging(config.log_level, config.log_format)
    asyncio.run(serve(config))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(_config_from(args)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryopod", description="A Kubernetes container runtime")
    parser.add_argument("--version", action="version", version=f"cryopod {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the CRI daemon in the foreground")
    _add_config_flags(serve)
    serve.set_defaults(func=_cmd_serve)

    config = commands.add_parser("config", help="print the effective configuration as TOML")
    _add_config_flags(config)
    config.set_defaults(func=_cmd_config)

    from cryopod.cli import images, runtime, streams

    images.register(commands)
    runtime.register(commands)
    streams.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"cryopod: configuration error: {exc}", file=sys.stderr)
        return 2
    except CryopodError as exc:
        print(f"cryopod: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
