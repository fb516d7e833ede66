#!/usr/bin/env python3
"""erp_worker: the Python worker of the purchase-order example (examples/erp-worker in Rust).

When an order is approved, the ``approve`` transition's effect puts a
``create-purchase-order`` task on the ``erp`` queue. This worker leases those tasks,
"creates" the order in a pretend ERP (it derives a PO number from the instance), and
completes the task with ``{"data": {"po_number": ...}}``: the workflow's ``on_complete`` takes
``place`` with the worker as actor and that result as payload, so the number lands in the
instance data. Orders whose supplier is ``"blocked"`` fail without retry, which exhausts the
policy and takes ``on_exhausted: fail``.

Run it against ``scripts/run`` (a dev cluster on 127.0.0.1:7101-7103)::

    pip install ./clients/python
    python clients/python/examples/erp_worker.py --endpoints 127.0.0.1:7101,127.0.0.1:7102

SIGTERM or Ctrl-C stops polling and finishes the orders in hand before it exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any, Dict, Optional

from lockstep import Credentials, Identity, LeasedTask, Tls
from lockstep.worker import NonRetryable, Worker


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Places approved purchase orders: the worker of the erp queue.")
    parser.add_argument("--endpoints", default="127.0.0.1:7101", help="nodes, comma-separated host:port")
    parser.add_argument("--worker", default="erp-worker-py-1", help="the worker's actor id (dev mode)")
    parser.add_argument("--queue", default="erp", help="the queue to serve")
    parser.add_argument("--concurrency", type=int, default=4, help="most orders in hand at once")
    parser.add_argument("--work-ms", type=int, default=100, help="pretend each order takes this long")
    parser.add_argument(
        "--drain",
        type=float,
        default=25.0,
        help="on SIGTERM, seconds the orders in hand may take before they are handed back (Tasks/Release)",
    )
    parser.add_argument("--tls-ca", default=os.environ.get("LOCKSTEP_TLS_CA"), help="the cluster CA (PEM)")
    parser.add_argument("--tls-cert", default=os.environ.get("LOCKSTEP_TLS_CERT"), help="client certificate")
    parser.add_argument("--tls-key", default=os.environ.get("LOCKSTEP_TLS_KEY"), help="its key")
    parser.add_argument("--token-env", default="LOCKSTEP_TOKEN", help="the variable holding a JWT, if any")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work_seconds = args.work_ms / 1000
    worker = Worker(concurrency=args.concurrency, drain=args.drain)

    @worker.task(args.queue, "create-purchase-order")
    def place_order(task: LeasedTask) -> Dict[str, Any]:
        data = task.input.get("data", {}) if isinstance(task.input, dict) else {}
        if data.get("supplier") == "blocked":
            raise NonRetryable("the ERP refuses orders from a blocked supplier")
        time.sleep(work_seconds)  # the ERP call
        po_number = f"PO-{task.lease.instance_id}"
        logging.info("placed %s for %s", po_number, task.lease.instance_id)
        return {"data": {"po_number": po_number}}

    tls: Optional[Tls] = None
    if args.tls_ca:
        tls = Tls.from_files(args.tls_ca, args.tls_cert, args.tls_key)
    credentials = Credentials(tls=tls, token=os.environ.get(args.token_env) or None)
    stats = worker.run(
        [e for e in args.endpoints.split(",") if e],
        identity=Identity(args.worker, "worker"),
        credentials=credentials,
    )
    print(
        f"erp_worker: completed {stats.completed}, failed {stats.failed}, lost {stats.lost}, released {stats.released}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
