"""`make chaos`: the real stack under seeded random traffic and faults, and a checker of the
recorded history (see run.py for the command line and README.md for the invariants)."""
