"""The training loop and its stages: losses, the optimizer and lr schedule (``optim``), EMA,
distillation from a frozen teacher (``distill``), the exactly-once evaluation (``exact_eval``),
preemption signals, host-device sync checks, and the ``trainer`` that owns a run.
"""
