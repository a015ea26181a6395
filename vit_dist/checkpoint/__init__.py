"""What a run keeps on disk: checkpoints (``store``: atomic, checksummed, resumable, reshardable),
the file manifest (``manifest``), the training state as named components (``state``), the run
directory a run owns (``rundir``), and weights in and out (``weights``: checkpoints, exports).
"""
