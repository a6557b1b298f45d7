"""vertebra."""
