"""CLI: ``python -m emulators.threecx --port 0 --tls-dir DIR --seed 7 [--no-unmanaged]``.

Prints exactly one JSON line once listening:
``{"base_url", "client_id", "client_secret", "ca_bundle"}``; the XAPI is at ``base_url + "/xapi/v1"``.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    from emulators.common.server import serve_forever
    from emulators.common.tls import ensure_tls
    from emulators.threecx.app import build

    parser = argparse.ArgumentParser(prog="python -m emulators.threecx", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-dir", required=True, help="folder for the throwaway CA and server cert")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-unmanaged", dest="unmanaged", action="store_false",
                        help="do not seed the pre-existing unmanaged extensions")
    parser.add_argument("--client-id", default="m365sync")
    parser.add_argument("--client-secret", default=None)
    parser.add_argument("--token-lifetime", type=int, default=3600, help="seconds")
    parser.add_argument("--version", dest="pbx_version", default=None,
                        help="PBX version reported by SystemStatus (before 20.0.9 expires_in is in minutes)")
    parser.add_argument("--extra-users", type=int, default=0,
                        help="also create N synthetic extensions at start-up (benchmarks)")
    parser.add_argument("--extra-contacts", type=int, default=0,
                        help="also create N synthetic phonebook contacts at start-up (benchmarks)")
    args = parser.parse_args(argv)

    opts = {"version": args.pbx_version} if args.pbx_version else {}
    tls = ensure_tls(args.tls_dir)
    app, backend = build(seed=args.seed, unmanaged=args.unmanaged, client_id=args.client_id,
                         client_secret=args.client_secret, token_lifetime=args.token_lifetime, **opts)
    from emulators.threecx.seed import seed_synthetic

    seed_synthetic(backend, users=args.extra_users, contacts=args.extra_contacts)
    serve_forever(app, tls, args.host, args.port, lambda url, _port: backend.announce(url, tls.ca_cert))


if __name__ == "__main__":
    main()
