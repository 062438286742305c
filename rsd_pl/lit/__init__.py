"""LightningModules, DataModules and fit-time callbacks (nothing heavy imported here)."""
