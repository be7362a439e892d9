"""What a run shows and leaves behind: the live display, loggers, per-layer statistics, curves,
the diagnosis, the history read back, and the run folder's files and records."""
