"""Emulator throughput: what one Graph ``$batch`` sub-request and one 3CX page read cost the emulators.

Starts the Graph and 3CX emulators the way :mod:`bench_reference` does (its helpers, no injected
latency), a tenant of ``--users`` users with ``--contacts``/``--events`` each, and a PBX with as many
extensions and ``--pbx-contacts`` phonebook entries. Then, for a sample of ``--sample`` mailbox users:

``prime``       the initial rounds a sync makes (contactFolders, per-folder contacts delta, calendarView
                delta, automatic replies), in ``$batch`` payloads of 20, to obtain the delta links;
``delta_none``  the same requests a delta run with no change makes (the delta links, contactFolders,
                automatic replies), timed;
``threecx``     ``GET /xapi/v1/Users`` and ``/Contacts`` pages (``$orderby=Id&$top=100&$skip``), and the
                idempotent-create lookups (``$filter=Tag eq .. or ..``/``Number eq ..``, 20 values), timed.

Every ``$batch`` item carries the ``Prefer`` header (and contacts delta the ``$select``) the product sends.

Per phase it prints wall time, emulator CPU (``/proc/PID/stat`` user+system) per sub-request or page,
and requests/s. Figures are printed and written (``--json``), never asserted.

    .venv/bin/python bench/bench_emulators.py --users 10000 --contacts 25 --events 10 --sample 400
    BENCH_PROFILE=1 ...   # also prints the PIDs and waits for Enter, to attach ``py-spy record -p PID``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_reference import ROOT, Emulator, _loadavg, _write, start_emulator

from m365_3cx.graph.auth import GraphCredentials
from m365_3cx.graph.calendar import PREFER as CALENDAR_PREFER
from m365_3cx.graph.client import GraphClient
from m365_3cx.pipeline.contacts import CONTACT_HEADERS
from m365_3cx.staging.contacts import GRAPH_CONTACT_SELECT
from m365_3cx.threecx.client import ThreeCXClient, ThreeCXCredentials, odata_quote

BATCH = 20
CONTACTS_PREFER = CONTACT_HEADERS["Prefer"]
CONTACT_SELECT = ",".join(GRAPH_CONTACT_SELECT)
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Meter:
    """Wall and emulator CPU over a block; ``count`` is the number of sub-requests or pages sent."""

    def __init__(self, emu: Emulator, label: str) -> None:
        self.emu, self.label, self.count = emu, label, 0

    def __enter__(self) -> Meter:
        self.cpu0, self.wall0 = cpu_seconds(self.emu.proc.pid), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = cpu_seconds(self.emu.proc.pid) - self.cpu0

    def facts(self) -> dict[str, Any]:
        n = max(1, self.count)
        return {"requests": self.count, "wall_s": round(self.wall, 2), "emulator_cpu_s": round(self.cpu, 2),
                "wall_ms_per_request": round(1000 * self.wall / n, 2),
                "cpu_ms_per_request": round(1000 * self.cpu / n, 2),
                "requests_per_s": round(self.count / max(self.wall, 1e-9), 1)}


def graph_client(info: dict[str, Any]) -> GraphClient:
    return GraphClient(GraphCredentials(
        tenant_id=info["tenant_id"], client_id=info["client_id"], client_secret=info["client_secret"],
        authority_host=info["authority"].rsplit("/", 1)[0], graph_url=info["graph_url"], ca_bundle=info["ca_bundle"]))


def relative(url: str, graph_url: str) -> str:
    """A ``@odata.nextLink``/``deltaLink`` as a ``$batch`` item url (relative to ``/v1.0``)."""
    return url.split("/v1.0", 1)[1] if url.startswith(graph_url) else url


def prefer(url: str) -> dict[str, str]:
    """The ``Prefer`` header the product sends with ``url`` (its page sizes and id/time formats)."""
    if "/contact" in url:
        return {"Prefer": CONTACTS_PREFER}
    return {"Prefer": CALENDAR_PREFER} if "/calendarView" in url or "/mailboxSettings" in url else {}


def run_batches(client: GraphClient, urls: list[str], meter: Meter) -> list[dict[str, Any]]:
    """GET every url in ``$batch`` payloads of 20 (with the product's ``Prefer``); the responses in the order
    of ``urls``."""
    out: list[dict[str, Any]] = []
    for start in range(0, len(urls), BATCH):
        chunk = urls[start:start + BATCH]
        body = {"requests": [{"id": str(i), "method": "GET", "url": u, "headers": prefer(u)}
                             for i, u in enumerate(chunk)]}
        answer = client.post_json("$batch", body)
        by_id = {r["id"]: r for r in answer["responses"]}
        out += [by_id[str(i)] for i in range(len(chunk))]
        meter.count += len(chunk)
    return out


def follow(client: GraphClient, graph_url: str, first: dict[str, str], meter: Meter) -> dict[str, str]:
    """Page every key's url until a ``@odata.deltaLink``; the delta links by key."""
    pending, done = dict(first), {}
    while pending:
        keys = list(pending)
        for key, response in zip(keys, run_batches(client, [pending[k] for k in keys], meter), strict=True):
            if response["status"] != 200:
                raise RuntimeError(f"{key}: HTTP {response['status']} {response.get('body')}")
            body = response["body"]
            del pending[key]
            if "@odata.nextLink" in body:
                pending[key] = relative(body["@odata.nextLink"], graph_url)
            else:
                done[key] = relative(body["@odata.deltaLink"], graph_url)
    return done


def graph_phases(graph_emu: Emulator, sample: list[str]) -> dict[str, Any]:
    info, graph_url = graph_emu.info, graph_emu.info["graph_url"]
    now = datetime.now(UTC).replace(microsecond=0)
    window = (f"startDateTime={(now - timedelta(days=1)).isoformat().replace('+00:00', 'Z')}"
              f"&endDateTime={(now + timedelta(days=14)).isoformat().replace('+00:00', 'Z')}")
    paths = {uid: f"/users/{quote(uid, safe='')}" for uid in sample}
    with graph_client(info) as client:
        client.get(f"users/{quote(sample[0], safe='')}")  # token and discovery outside the timed phases
        with Meter(graph_emu, "prime") as prime:
            folders_urls = [f"{paths[u]}/contactFolders" for u in sample]
            roots: dict[str, str] = {}
            for uid, r in zip(sample, run_batches(client, folders_urls, prime), strict=True):
                values = r["body"].get("value") or []
                roots[uid] = values[0]["parentFolderId"] if values else "contacts"
                for folder in values:
                    roots[f"{uid}|{folder['id']}"] = folder["id"]
            first = {f"contacts|{k}": f"{paths[k.split('|')[0]]}/contactFolders/{quote(fid, safe='')}/contacts/delta"
                     f"?$select={CONTACT_SELECT}" for k, fid in roots.items()}
            first.update({f"calendar|{u}": f"{paths[u]}/calendarView/delta?{window}" for u in sample})
            links = follow(client, graph_url, first, prime)
            replies = [f"{paths[u]}/mailboxSettings/automaticRepliesSetting" for u in sample]
            run_batches(client, replies, prime)
        kinds: dict[str, list[str]] = {
            "calendarView/delta": [v for k, v in links.items() if k.startswith("calendar|")],
            "contactFolders": folders_urls,
            "contactFolders/{id}/contacts/delta": [v for k, v in links.items() if k.startswith("contacts|")],
            "automaticRepliesSetting": replies,
        }
        per_kind: dict[str, Any] = {}
        with Meter(graph_emu, "delta_none") as total:
            for kind, urls in kinds.items():
                with Meter(graph_emu, kind) as meter:
                    answers = run_batches(client, urls, meter)
                bad = [a["status"] for a in answers if a["status"] != 200]
                if bad:
                    raise RuntimeError(f"{kind}: {len(bad)} failed sub-requests ({bad[:3]})")
                total.count += meter.count
                per_kind[kind] = meter.facts()
    return {"prime": prime.facts(), "delta_none": total.facts(), "delta_none_by_kind": per_kind}


def threecx_phase(pbx_emu: Emulator, pages: int, filtered: int, users: int, pbx_contacts: int) -> dict[str, Any]:
    p = pbx_emu.info
    out: dict[str, Any] = {}
    with ThreeCXClient(ThreeCXCredentials(p["base_url"], p["client_id"], p["client_secret"], p["ca_bundle"])) as pbx:
        next(iter(pbx.list_users(select=("Id",))))  # token outside the timed phase
        for name, pager in (("Users", pbx.list_users), ("Contacts", pbx.list_contacts)):
            with Meter(pbx_emu, name) as meter:
                for _ in pager():
                    meter.count += 1
                    if meter.count >= pages:
                        break
            out[name] = meter.facts()
        # the idempotent-create lookups (reconcile.existing): 20 values per $filter, spread over the PBX
        lookups = {"Contacts": ("Tag", [f"m365:bench:{i}" for i in range(pbx_contacts)]),
                   "Users": ("Number", [str(20000 + i) for i in range(users)])}
        for name, (field, values) in lookups.items():
            step = max(1, len(values) // max(1, filtered * 20))
            picked = values[::step][:filtered * 20]
            filters = [" or ".join(f"{field} eq {odata_quote(v)}" for v in picked[i:i + 20])
                       for i in range(0, len(picked), 20)]
            with Meter(pbx_emu, name) as meter:
                for records in pbx.read_filtered(name, filters, select=("Id", field)):
                    meter.count += 1
                    assert len(records) == 20, (name, len(records))
            out[f"{name}?$filter={field} eq .. (20)"] = meter.facts()
    return out


def print_facts(label: str, f: dict[str, Any]) -> None:
    print(f"   {label:<44} {f['requests']:6d} req  {f['wall_s']:7.2f} s wall  {f['emulator_cpu_s']:7.2f} s cpu  "
          f"{f['wall_ms_per_request']:7.2f} ms/req wall  {f['cpu_ms_per_request']:7.2f} ms/req cpu  "
          f"{f['requests_per_s']:7.1f} req/s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--contacts", type=int, default=25, help="contacts per mailbox")
    parser.add_argument("--events", type=int, default=10, help="events per mailbox")
    parser.add_argument("--pbx-contacts", type=int, default=None, help="phonebook entries (default users x 14)")
    parser.add_argument("--sample", type=int, default=400, help="mailbox users whose delta requests are timed")
    parser.add_argument("--pages", type=int, default=200, help="3CX pages read per entity set")
    parser.add_argument("--filtered", type=int, default=50,
                        help="3CX filtered reads per entity set (Tag/Number eq, 20 values each)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "bench_emulators.json"))
    args = parser.parse_args(argv)
    pbx_contacts = args.users * 14 if args.pbx_contacts is None else args.pbx_contacts

    tmp = Path(tempfile.mkdtemp(prefix="bench-emu-"))
    report: dict[str, Any] = {"tenant": {"users": args.users, "contacts_per_mailbox": args.contacts,
                                         "events_per_mailbox": args.events, "pbx_contacts": pbx_contacts,
                                         "sample": args.sample},
                              "machine": {"cpus": os.cpu_count(), "load_before": _loadavg()}}
    print(f"tenant: {args.users} users x {args.contacts} contacts x {args.events} events; PBX {args.users} "
          f"extensions, {pbx_contacts} contacts; load average {report['machine']['load_before']}", flush=True)
    started = time.perf_counter()
    graph_emu = start_emulator("graph", "emulators.graph", [
        "--users", str(args.users), "--contacts-per-user", str(args.contacts), "--events-per-user", str(args.events),
        "--seed", "42"], tmp / "tls", tmp)
    pbx_emu = start_emulator("threecx", "emulators.threecx", [
        "--seed", "7", "--extra-users", str(args.users), "--extra-contacts", str(pbx_contacts)], tmp / "tls", tmp)
    report["startup_s"] = round(time.perf_counter() - started, 1)
    print(f"emulators up in {report['startup_s']} s (graph pid {graph_emu.proc.pid}, 3CX pid {pbx_emu.proc.pid})",
          flush=True)
    try:
        if os.environ.get("BENCH_PROFILE"):
            input("attach py-spy now, then press Enter ")
        users = [u["id"] for u in graph_emu.admin("GET", "state")["users"]
                 if u.get("mail") and u.get("userType", "Member") == "Member" and u.get("accountEnabled", True)]
        sample = users[:: max(1, len(users) // max(1, args.sample))][: args.sample]
        report["graph"] = graph_phases(graph_emu, sample)
        print(f"graph ({len(sample)} of {len(users)} mailbox users):")
        print_facts("prime (initial rounds)", report["graph"]["prime"])
        print_facts("delta, no change", report["graph"]["delta_none"])
        for kind, facts in report["graph"]["delta_none_by_kind"].items():
            print_facts(f"  {kind}", facts)
        report["threecx"] = threecx_phase(pbx_emu, args.pages, args.filtered, args.users, pbx_contacts)
        print("3CX pages ($top=100) and filtered reads:")
        for name, facts in report["threecx"].items():
            print_facts(f"GET /xapi/v1/{name}", facts)
    finally:
        report["machine"]["load_after"] = _loadavg()
        graph_emu.stop()
        pbx_emu.stop()
    print(f"load average after {report['machine']['load_after']}; written: {_write(args.json, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
