"""trainer: a config-driven training CLI where every deep-learning trick is one switch away."""
