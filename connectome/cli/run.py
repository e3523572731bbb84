"""Run any chain of stages from a YAML config (resumes finished blocks)."""

from __future__ import annotations

from connectome.cli.main import print_result
from connectome.cli.run_options import add_run_options, cluster_settings, start_local_workers_early


def add_arguments(parser) -> None:
    parser.add_argument("config", help="CONFIG.yaml")
    add_run_options(parser)


def run(args) -> int:
    from connectome.cluster.client import open_client
    from connectome.cluster.worker_logs import worker_logs
    from connectome.engine.config import load_config
    from connectome.engine.plan import check_input_chunks, check_plan_resumable, execute, plan_run

    config = load_config(args.config)
    start_local_workers_early(args, config.cluster)  # (before planning imports the stages)
    cluster = cluster_settings(args, config.cluster)
    plan = plan_run(config)
    check_plan_resumable(plan, args.overwrite)
    check_input_chunks(config.input, args.strict_input)
    with worker_logs(plan.work_dir), open_client(cluster, quiet=args.json, lazy=True) as client:
        reports = execute(plan, client, overwrite=args.overwrite, progress=not args.no_progress)
    outputs = {name: address for p in plan.stages for name, (address, _) in p.creates.items()}
    summary = {"output": config.output, "volumes": outputs, "stages": [r.to_json() for r in reports]}
    lines = [f"{r.stage}: {r.ran} blocks run, {r.skipped} already done, {r.seconds:.1f} s" for r in reports]
    lines += [f"{name}: {address}" for name, address in outputs.items()]
    print_result(args, summary, "\n".join(lines))
    return 0
