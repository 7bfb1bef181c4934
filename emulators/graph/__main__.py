"""``python -m emulators.graph --port 0 --tls-dir DIR``: serve in the foreground, print one JSON line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m emulators.graph", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--tls-dir", required=True, help="folder for CA, server and app certificates")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--delta-token-max-age", type=float, default=7 * 24 * 3600, metavar="SECONDS")
    parser.add_argument("--token-lifetime", type=int, default=3599, metavar="SECONDS")
    parser.add_argument("--domain", default=None)
    parser.add_argument("--contacts-per-user", type=int, default=5)
    parser.add_argument("--events-per-user", type=int, default=8)
    parser.add_argument("--now", default=None, help="ISO 8601 anchor of the seeded calendars (default: now)")
    parser.add_argument("--outlook-token-max-age", type=float, default=7 * 24 * 3600, metavar="SECONDS")
    parser.add_argument("--outgoing-ca-bundle", action="append", default=[], metavar="PEM",
                        help="CA file trusted for subscription handshakes and notifications (repeatable; "
                             "the emulator's own CA is always trusted)")
    parser.add_argument("--delivery-retry-base", type=float, default=None, metavar="SECONDS",
                        help="first retry delay of a failed notification POST (default 1, doubled per attempt)")
    parser.add_argument("--delivery-batch-window", type=float, default=None, metavar="SECONDS",
                        help="notifications of one URL collected into one POST (default 0.2)")
    args = parser.parse_args(argv)

    from emulators.common.server import serve_forever
    from emulators.graph import build, describe

    app, backend, tls = build(args.tls_dir, seed=args.seed, users=args.users,
                              delta_token_max_age=args.delta_token_max_age,
                              token_lifetime=args.token_lifetime, domain=args.domain,
                              contacts_per_user=args.contacts_per_user, events_per_user=args.events_per_user,
                              now=args.now, outlook_token_max_age=args.outlook_token_max_age,
                              outgoing_ca_bundle=args.outgoing_ca_bundle,
                              delivery={k: v for k, v in (("retry_base", args.delivery_retry_base),
                                                          ("batch_window", args.delivery_batch_window))
                                        if v is not None})
    serve_forever(app, tls, args.host, args.port,
                  announce=lambda url, _port: describe(url, backend, args.tls_dir, tls))


if __name__ == "__main__":
    main()
