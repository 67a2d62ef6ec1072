"""Tabulate and plot the runs of a sweep, a single run, or a folder of runs.

    python scripts/report.py multirun/<day>/<time>/ [--out DIR]

Writes results.csv, report.md and PNG plots into the folder (or DIR). Same as the `trainer-report` command.
"""

import sys

from trainer.reports import main

if __name__ == "__main__":
    sys.exit(main())
