"""``python -m dataflow.emulator``: serve the emulator with uvicorn."""

from __future__ import annotations

import argparse
from typing import Any

import orjson


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from dataflow.emulator import State, create_app

    parser = argparse.ArgumentParser(prog="python -m dataflow.emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--client", action="append", default=[], help="KEY:SECRET (OAuth)")
    parser.add_argument("--basic", action="append", default=[], help="USER:PASSWORD")
    parser.add_argument("--badge-meta", action="append", default=[], help="a known badgeMetaId")
    parser.add_argument("--config", help="a JSON file with the keys of /__emulator/config")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="benchmark mode: the import API minimally validated (see dataflow.emulator.fast)",
    )
    args = parser.parse_args(argv)
    state = State()
    if args.config:
        with open(args.config, "rb") as fh:
            state.configure(orjson.loads(fh.read()))
    state.configure(
        {
            "clients": dict(c.split(":", 1) for c in args.client),
            "basic": dict(b.split(":", 1) for b in args.basic),
            "badge_metas": args.badge_meta,
        }
    )
    app: Any = create_app(state)
    if args.fast:
        from dataflow.emulator.fast import create_fast_app

        app = create_fast_app(state)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


main()
