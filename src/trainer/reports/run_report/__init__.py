"""The run report (report.html) and the confidence figures behind the "not sure" rule: what a run gets
wrong, whether its confidence means anything, and what the exported copies change."""
