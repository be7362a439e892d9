"""Sweeps (`train -m`): each job skipped if finished, rerun if not, contained if it crashes
(jobs.py), and the report over a sweep folder (report.py, `train-report`)."""
