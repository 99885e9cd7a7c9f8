"""Provider list, quick-switch and health."""
