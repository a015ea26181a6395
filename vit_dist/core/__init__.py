"""The base layer, without torch: the exception kinds and their exit codes (``errors``), the
few command-line parsers (``options``), temp-then-rename writes (``atomic``), ``hf-hub:``
references (``hub``) and the validated run config (``config``). Everything else builds on it.
"""
