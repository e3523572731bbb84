"""The `connectome` command line: one entry point, one module per command in connectome/cli."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from connectome.core.errors import StageFailed, UserError

# command name -> module in connectome.cli exposing add_arguments(parser) and run(args) -> int
COMMANDS = {
    "demo": "demo",
    "ingest": "ingest",
    "run": "run",
    "status": "status",
    "segment": "segment",
    "evaluate": "evaluate",
    "synth": "synth",
    "train": "train",
    "align": "align",
    "view": "view",
    "synapses": "synapses",
    "graph": "graph",
    "reconstruct": "reconstruct",
    "tissue": "tissue",
}


RESUME = "re-run the same command to resume"
INTERRUPTED = {  # what an interrupted command leaves, where it is not a run that resumes block by block
    "train": "training does not resume: the best checkpoint validated so far stays in --out (`train affinities "
             "--init` continues from one)",
    "train edges": "nothing was written: the classifier is written once fitted and its threshold chosen (with "
                   "--cache, the affinities predicted so far are kept there for the re-run)",
    "train ffn": "training does not resume: the best checkpoint validated so far stays in --out",
    "train tissue": "training does not resume: the best checkpoint validated so far stays in --out (`train tissue "
                    "--init` continues from one)",
    "evaluate": "nothing was written", "synth": "re-run it to write the volume again",
    "graph": "re-run it to write the graph again", "view": "the server stopped", "status": "nothing was changed",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's time limit, `kill`): unwound like Ctrl-C, so the run's lock is released and one
    line says so."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2, as for any bad input
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="connectome", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"connectome.cli.{module_name}")
        except ModuleNotFoundError as e:
            if e.name == f"connectome.cli.{module_name}":
                continue  # command not built yet
            raise
        doc = (module.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else None, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def print_result(args, summary: dict, human: str) -> None:
    """Print `summary` as one JSON object under --json, else the short human text."""
    if getattr(args, "json", False):
        print(json.dumps(summary, default=str))
    else:
        print(human)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return int(e.code or 0)
    _quiet_on_interrupt()
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"connectome {args.command}: error: {e}", file=sys.stderr)
        return 2
    except StageFailed as e:  # the one-line summary, alone; the traceback is in a file, never on the terminal
        if e.log_file:
            where = f" (traceback and worker logs in {os.path.dirname(e.log_file)})"
        else:  # (a full disk): the notes say where it could not be saved and why
            where = f" ({'; '.join(getattr(e, '__notes__', None) or ['the traceback was not saved'])})"
        print(f"connectome {args.command}: {e}{where}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader of our output left (`| head`): the work is done, nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the exit's flush of stdout does not fail again
        return 141  # as a shell reports a process ended by SIGPIPE
    except KeyboardInterrupt as e:
        _quiet_interrupt()
        how = "stopped by SIGTERM" if isinstance(e, Terminated) else "interrupted"
        left = INTERRUPTED.get(f"train {args.model}") if args.command == "train" else None  # by what it trains
        print(f"connectome {args.command}: {how}; {left or INTERRUPTED.get(args.command, RESUME)}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130


def _quiet_on_interrupt() -> None:
    """Silence the cluster's logs the moment Ctrl-C arrives, before the interrupt unwinds.

    Quieting them only in the `except` is too late: the client's event-loop thread logs
    the cancelled calls (a tornado traceback from distributed's `sync`) while the main
    thread is still unwinding."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set signal handlers

    def interrupted(signum, frame):
        _quiet_interrupt()
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    # each only where nobody else handles it: Ctrl-C may be handled by a test or an embedding program, or ignored
    # (a background job of a script ignores it), and SIGTERM (a batch time limit, `kill`) must still unwind then
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupted)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, interrupted)


def _quiet_interrupt() -> None:
    """After Ctrl-C: a second one while the cluster shuts down ends the process without tracebacks,
    and the logs of the shutdown (connections closing, cancelled callbacks) are not printed."""
    import logging
    import signal

    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    # every logger, not a few by name: distributed's logging config gives some (tornado.application) their own level
    logging.disable(logging.CRITICAL)


if __name__ == "__main__":
    sys.exit(main())
