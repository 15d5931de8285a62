"""`python -m parvagpu` and the `parvagpu` command: the CLI, and when the process started.

The start is taken before the CLI is imported (0.3-0.5 s on a 2-core VM; only the verb asked for is
imported), so that `plan --time-limit` counts the imports too; and the process is marked as the CLI's own, so a verb
that has written everything may end it at once (`cli.common.finish_now`)."""

import time

_STARTED = time.perf_counter()


def main() -> None:
    import sys

    from parvagpu.cli import NAMES, build
    from parvagpu.cli.common import PROCESS

    PROCESS.started, PROCESS.owned = _STARTED, True
    verb = sys.argv[1] if len(sys.argv) > 1 else None
    build(verb if verb in NAMES else None)(prog_name="parvagpu")


if __name__ == "__main__":
    main()
