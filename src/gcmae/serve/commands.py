"""`gcmae serve JOB_DIR`: the local viewer of a job folder (registered by gcmae.cli)."""
from __future__ import annotations

import argparse
import ipaddress
import sys

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """True for 127.x.x.x, ::1 and localhost: addresses other machines cannot reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gcmae.serve.app import LOCAL_HOSTS, create_app

    # on loopback only the local names are accepted (DNS-rebinding guard); shared, the machine's names are unknown
    hosts = (*LOCAL_HOSTS, args.host) if is_loopback(args.host) else ("*",)
    app = create_app(args.job_dir, args.cache_tiles, hosts)
    if not is_loopback(args.host):
        print(f"WARNING: serving {args.job_dir} on {args.host}: anyone who can reach this machine on port "
              f"{args.port} can see these slides (no authentication). Use --host {LOOPBACK} to keep it local.",
              file=sys.stderr)
    shown = LOOPBACK if args.host in ("0.0.0.0", "::") else args.host
    print(f"gcmae serve: {args.job_dir} at http://{shown}:{args.port}/ (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """Add `gcmae serve` to the subcommands of `sub`."""
    p = sub.add_parser("serve", help="browse a job folder in a web browser: slides, tissue, tiles, heatmaps, "
                                     "attention")
    p.add_argument("job_dir", help="folder of gcmae tile / extract / heatmap / mil predict, or of gcmae diagnose")
    p.add_argument("--host", default=LOOPBACK, help=f"address to listen on (default {LOOPBACK}: this machine "
                                                    "only; 0.0.0.0 shares the slides with the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--cache-tiles", type=int, default=4096, help="DZI tiles kept in memory (about 15 kB each)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=_serve)
