"""Code that the unit and the integration test of one topic share (tests/unit/X, tests/integration/X)."""
