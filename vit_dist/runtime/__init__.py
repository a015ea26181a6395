"""Where a step runs: process groups and the few collectives (``distributed``), precision
(autocast and the fp16 loss scaler, ``precision``), and compile / activation checkpointing /
FSDP2 or DDP applied to a plain model from outside, in one function (``parallel``).
"""
