"""The comparison harness behind scripts/bench: targets, scenarios, report."""
