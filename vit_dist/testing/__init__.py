"""Test-only hooks. Nothing here does anything unless a test sets the environment variable
that arms it (``VIT_DIST_FAULT``, see ``faults``); production code calls the hooks at the
points a test needs to interrupt, and they cost a set look-up there."""
