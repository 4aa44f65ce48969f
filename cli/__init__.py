"""The `cephnode` command line: one module per group of sub-commands, each only parsing
arguments and calling the room that does the work. The top room: it may import every other,
and nothing imports it."""
