"""``jobs ...``: submit, list, show, cancel, resume and wait for background jobs, and the scheduler in the
foreground."""

from __future__ import annotations

import json
import sys

from ..jobs import queue
from ..jobs.scheduler import Scheduler
from ..jobs.store import JobStore
from ..runs import RunDir
from .options import add_train_options, config_from_args


def _jobs_store(args):
    return JobStore(args.db)


_JOB_FIELDS = (
    "id",
    "group_id",
    "status",
    "state",
    "backbone",
    "pid",
    "device",
    "gpu",
    "stage",
    "epoch",
    "epochs",
    "batch",
    "batches",
    "epochs_completed",
    "run_dir",
    "error",
    "attempts",
    "resumed_from_epoch",
    "created",
    "started",
    "finished",
)


def cmd_jobs_submit(args) -> int:
    recipes = [r.strip() for r in (args.recipe or "").split(",") if r.strip()]
    if len(recipes) > 1:  # a comparison of recipes: each with the same flags on top
        configs = []
        for name in recipes:
            args.recipe = name
            configs.append(config_from_args(args))
        group, ids = queue.submit_group(configs, store=_jobs_store(args), out_dir=args.out)
        print(f"comparison {group}: {len(ids)} recipes queued", file=sys.stderr)
        for job_id in ids:
            print(job_id)
        return 0
    names = [b.strip() for b in (args.backbone or "").split(",") if b.strip()]
    if len(names) > 1:
        args.backbone = names[0]
        config = config_from_args(args, resolve=False)  # weights, size, unfreeze follow each backbone
        group, ids = queue.submit_comparison(config, names, store=_jobs_store(args), out_dir=args.out)
        print(f"comparison {group}: {len(ids)} jobs queued", file=sys.stderr)
        for job_id in ids:
            print(job_id)
        return 0
    config = config_from_args(args)
    print(queue.submit(config, store=_jobs_store(args), out_dir=args.out))
    return 0


def cmd_jobs_list(args) -> int:
    jobs = queue.list_jobs(store=_jobs_store(args), status=args.status, group=args.group)
    if args.json:
        print(json.dumps([{k: j[k] for k in _JOB_FIELDS} for j in jobs]))
        return 0
    if not jobs:
        print(
            "no jobs yet: submit one with `python -m cxrcore jobs submit --data DATA --backbone NAME`", file=sys.stderr
        )
        return 0
    print(f"{'id':<12}{'status':<12}{'backbone':<18}{'progress':<22}{'group':<14}error")
    for j in jobs:
        where = f"{j['stage'] or ''} {j['epoch'] or 0}/{j['epochs'] or '?'}" if j["stage"] else ""
        print(
            f"{j['id']:<12}{j['status']:<12}{j['backbone']:<18}{where:<22}{j['group_id'] or '':<14}{j['error'] or ''}"
        )
    return 0


def cmd_jobs_show(args) -> int:
    job = queue.get(args.job_id, store=_jobs_store(args))
    out = {k: job[k] for k in _JOB_FIELDS}
    out["metrics"] = job["metrics"]
    history = RunDir(job["run_dir"]).history() if args.history and job["run_dir"] else None
    out["history"] = history.to_dict("records") if history is not None else None
    print(json.dumps(out))
    return 0


def cmd_jobs_cancel(args) -> int:
    job = queue.cancel(args.job_id, store=_jobs_store(args), force=args.force, wait=0 if args.no_wait else args.timeout)
    print(
        f"job {job['id']}: {job['status']}" + (" (cancel requested)" if job["status"] == "running" else ""),
        file=sys.stderr,
    )
    print(job["status"])
    return 0


def cmd_jobs_resume(args) -> int:
    job = queue.resume(args.job_id, store=_jobs_store(args))
    print(job["id"])
    return 0


def cmd_jobs_wait(args) -> int:
    job = queue.wait(args.job_id, store=_jobs_store(args), timeout=args.timeout)
    print(job["status"])
    return 0 if job["status"] == "succeeded" else 1


def cmd_jobs_worker(args) -> int:
    scheduler = Scheduler(
        _jobs_store(args), max_jobs=args.max_jobs, gpus_per_job=args.gpus_per_job, idle_exit=args.idle_exit or None
    )
    print(
        f"scheduler for {scheduler.store.path}: up to {scheduler.max_jobs} job(s) at once, {scheduler.gpus} GPU(s)",
        file=sys.stderr,
        flush=True,
    )
    scheduler.run()
    return 0


def add_jobs_parser(sub) -> None:
    jobs = sub.add_parser("jobs", help="background training jobs")
    jobs.add_argument("--db", help="job database (default: the project's models/jobs.sqlite; CXRCORE_MODELS moves it)")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True)
    p = jsub.add_parser("submit", help="queue a training job (options as for train); prints the job id last")
    add_train_options(p)
    p.epilog = (
        "--backbone a,b,c queues a comparison: one job per backbone, same data and settings; "
        "--recipe a,b queues one job per recipe, the other flags applied to each"
    )
    p.set_defaults(func=cmd_jobs_submit)
    p = jsub.add_parser("list", help="jobs, newest first")
    p.add_argument("--status", choices=queue.STATUSES)
    p.add_argument("--group")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs_list)
    p = jsub.add_parser("show", help="one job as JSON")
    p.add_argument("job_id")
    p.add_argument("--history", action="store_true", help="include per-epoch metrics")
    p.set_defaults(func=cmd_jobs_show)
    p = jsub.add_parser("cancel", help="stop a job at its next batch (kill it if it does not stop in time)")
    p.add_argument("job_id")
    p.add_argument("--force", action="store_true", help="kill the worker process now")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait before killing (default 60)")
    p.add_argument("--no-wait", action="store_true", help="only ask the job to stop")
    p.set_defaults(func=cmd_jobs_cancel)
    p = jsub.add_parser(
        "resume",
        help="queue an ended job again: its run continues from its last completed "
        "epoch (a finished run is final and refused)",
    )
    p.add_argument("job_id")
    p.set_defaults(func=cmd_jobs_resume)
    p = jsub.add_parser("wait", help="wait for a job to finish; prints its status")
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.set_defaults(func=cmd_jobs_wait)
    p = jsub.add_parser("worker", help="run the scheduler in the foreground")
    p.add_argument("--max-jobs", type=int, help="jobs at once (default: one per GPU, one on a CPU)")
    p.add_argument("--gpus-per-job", choices=["1", "all"], default="1")
    p.add_argument("--idle-exit", type=float, default=60.0, help="exit after this many idle seconds (0 = never)")
    p.set_defaults(func=cmd_jobs_worker)
