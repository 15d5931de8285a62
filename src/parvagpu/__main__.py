"""`python -m parvagpu` and the `parvagpu` command: the CLI, and when the process started.

The start is taken before the CLI is imported (about half a second on a 2-core VM), so that
`plan --time-limit` counts the imports too; and the process is marked as the CLI's own, so a verb
that has written everything may end it at once (`cli.common.finish_now`)."""

import time

_STARTED = time.perf_counter()


def main() -> None:
    from parvagpu.cli import app
    from parvagpu.cli.common import PROCESS

    PROCESS.started, PROCESS.owned = _STARTED, True
    app(prog_name="parvagpu")


if __name__ == "__main__":
    main()
