"""``dqe-cir-pipeline`` / ``python -m dqe_cir_pipeline``: run the project's pipelines like
``kedro run`` (the default), query the trained model (``search``, ``serve``), or convert
LAVIS BLIP-2 checkpoints into a backbone folder (``convert-lavis``)::

    dqe-cir-pipeline --help                            # the commands, one line each
    dqe-cir-pipeline                                   # = kedro run (its options too)
    dqe-cir-pipeline run --pipelines=evaluation        # the same, named
    dqe-cir-pipeline search --image ref.png --text "make it red" -k 10
    dqe-cir-pipeline serve                             # the search page on 127.0.0.1:8765
    dqe-cir-pipeline convert-lavis --arch pretrain_vitL --qformer Q.pth --vision V.pth \
        --tokenizer DIR --out models/blip2-pretrain-vitL   # LAVIS BLIP-2 -> backbone folder

Every command works on the Kedro project it runs in (the current directory, or the
folder holding ``--conf-source``), as ``kedro`` does.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "dqe-cir-pipeline"
#: The subcommands and what each does (the ``--help`` text).
COMMANDS = {
    "run": "run the project's pipelines, as `kedro run` does (the default command)",
    "search": "rank gallery images for a reference image and a modification text",
    "serve": "serve the search page: pick or upload an image, type a change, see the top-k",
    "convert-lavis": "convert LAVIS BLIP-2 checkpoints once into a backbone.name_or_path folder",
}
HELP_FLAGS = ("-h", "--help")


def usage() -> str:
    """The ``--help`` text: the commands, one line each."""
    width = max(map(len, COMMANDS))
    lines = [
        f"usage: {PROG} [run] [KEDRO RUN OPTIONS]",
        f"       {PROG} search --image IMAGE --text TEXT [OPTIONS]",
        f"       {PROG} serve [OPTIONS]",
        f"       {PROG} convert-lavis --arch ARCH --qformer PTH --vision PTH --out DIR ...",
        "",
        "Composed image retrieval (DQE-CIR) as a Kedro project: train and evaluate, then",
        "query the trained model. Works on the Kedro project of the current directory.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()),
        "",
        f"`{PROG} COMMAND --help` lists a command's options.",
    ]
    return "\n".join(lines)


def _exit(status: int) -> int:
    """Exit with ``status``, or return it in an interactive interpreter."""
    if hasattr(sys, "ps1"):
        return status
    sys.exit(status)


def _serving(command: str, argv: Sequence[str]) -> int:
    # lazy: the serving commands load torch, which a pipeline run does not need yet
    from dqe_cir_pipeline.serving import cli

    return (cli.main if command == "search" else cli.serve_main)(list(argv))


def _convert_lavis(argv: Sequence[str]) -> int:
    # lazy: the converter loads torch and transformers
    from dqe_cir_pipeline.model import lavis

    return lavis.main(["convert", *argv])


def main(*args: object, **kwargs: object) -> object:
    """Runs a subcommand: ``run`` (Kedro's ``run`` for this package, with the same
    command-line options; also when no subcommand is named), ``search``, ``serve`` or
    ``convert-lavis`` (``python -m dqe_cir_pipeline.model.lavis convert``).

    Args:
        *args: Passed to Kedro's ``run`` command; a first list or tuple is the command
            line (else ``sys.argv[1:]``).
        **kwargs: Passed to Kedro's ``run`` command; ``standalone_mode`` is set here
            (off in an interactive interpreter, so errors do not exit it).

    Returns:
        Whatever Kedro's ``run`` command returns (``search``, ``serve``,
        ``convert-lavis`` and ``--help`` exit with their status).
    """
    first = args[0] if args else None
    given = isinstance(first, (list, tuple))
    argv = [str(a) for a in first] if isinstance(first, (list, tuple)) else sys.argv[1:]
    command = argv[0] if argv else None
    if command in HELP_FLAGS:
        print(usage())
        return _exit(0)
    if command in ("search", "serve"):
        return _exit(_serving(command, argv[1:]))
    if command == "convert-lavis":
        return _exit(_convert_lavis(argv[1:]))
    if command == "run":  # named: Kedro's command gets the rest of the line
        args = (argv[1:], *(args[1:] if given else args))
        kwargs.setdefault("prog_name", f"{PROG} run")
    # lazy: importing Kedro's project module sets up logging (and says so), which
    # `--help`, `search` and `serve` do not want
    from kedro.framework.cli.utils import find_run_command
    from kedro.framework.project import configure_project

    package_name = Path(__file__).parent.name
    configure_project(package_name)
    kwargs["standalone_mode"] = not hasattr(sys, "ps1")
    run = find_run_command(package_name)
    return run(*args, **kwargs)


if __name__ == "__main__":
    main()
