"""The entry points' shared plumbing: one command's life from arguments to exit code
(``command``), the ``--help`` reference rendered from the config schema (``help``), and
accelerate launch's own flags read as config keys (``launch_env``). Only entry points import it.
"""
