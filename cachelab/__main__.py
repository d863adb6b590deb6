"""``python -m cachelab``."""

from cachelab.cli import main

main()
