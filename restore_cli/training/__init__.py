"""Training and data degradation for the models restore bundles (not imported by the CLI at run time)."""
