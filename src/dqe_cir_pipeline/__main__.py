"""``dqe-cir-pipeline`` / ``python -m dqe_cir_pipeline``: run the project's pipelines like
``kedro run`` (the default), or query the trained model (``search``)::

    dqe-cir-pipeline                                   # = kedro run (its options too)
    dqe-cir-pipeline search --image ref.png --text "make it red" -k 10
    dqe-cir-pipeline serve                             # the search page on 127.0.0.1:8765
"""

from __future__ import annotations

import sys
from pathlib import Path

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project


def main(*args: str, **kwargs: object) -> object:
    """Runs ``kedro run`` for this package, with the same command-line options, or the
    ``search`` / ``serve`` subcommand when the first argument names it.

    Args:
        *args: Passed to Kedro's ``run`` command.
        **kwargs: Passed to Kedro's ``run`` command; ``standalone_mode`` is set here
            (off in an interactive interpreter, so errors do not exit it).

    Returns:
        Whatever Kedro's ``run`` command returns (``search``: exits with its status).
    """
    argv = list(args[0]) if args and isinstance(args[0], (list, tuple)) else sys.argv[1:]
    if argv[:1] in (["search"], ["serve"]):
        from dqe_cir_pipeline.serving import cli

        command = cli.main if argv[0] == "search" else cli.serve_main
        status = command(argv[1:])
        if hasattr(sys, "ps1"):
            return status
        sys.exit(status)
    package_name = Path(__file__).parent.name
    configure_project(package_name)
    interactive = hasattr(sys, "ps1")
    kwargs["standalone_mode"] = not interactive
    run = find_run_command(package_name)
    return run(*args, **kwargs)


if __name__ == "__main__":
    main()
