"""``python -m pydeq.bench quick ...`` is ``pydeq bench quick ...``."""

import sys

from pydeq.cli import main

raise SystemExit(main(["bench", *sys.argv[1:]]))
