"""``python -m cachelab.children NAME [args]``: the one way cachelab starts a program of its
own out of its process.

Each program is imported only when it is the one run, so a child loads what it runs and
no more (an outbox listener never imports the web app).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: NAME -> "module:function"; the function takes the program's arguments and returns its
#: exit code (None is 0).
PROGRAMS = {
    "api-server": "cachelab.children.api:main",
    "outbox-listener": "cachelab.children.outbox:main",
    "service": "cachelab.children.service:main",
    "rate-limit-client": "cachelab.children.rate_limit:main",
    "lab-holder": "cachelab.children.background:main",
}


def main(argv: Sequence[str]) -> int:
    """Run the program that ``argv[0]`` names with the rest; an unknown name exits 2."""
    if not argv or argv[0] not in PROGRAMS:
        wrong = f"unknown program {argv[0]!r}." if argv else "no program given."
        print(f"Error: {wrong} Run python -m cachelab.children NAME [args], NAME one of: "
              f"{', '.join(PROGRAMS)}", file=sys.stderr)
        return 2
    module, function = PROGRAMS[argv[0]].split(":")
    code: int | None = getattr(importlib.import_module(module), function)(list(argv[1:]))
    return code or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
