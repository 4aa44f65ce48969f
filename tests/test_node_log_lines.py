"""Several processes logging to one stderr (the node and its worker processes do) still give
one JSON object per line: each line is written whole, in one write."""
from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import sys
from cephnode.node.logs import configure, get_logger
configure()
log = get_logger("cephnode.test")
for i in range(400):
    log.info("busy", worker=sys.argv[1], i=i, filler="x" * 700)
"""


def test_processes_sharing_stderr_never_split_a_line(tmp_path):
    out = tmp_path / "node.log"
    with open(out, "ab") as sink:
        procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(k)], stderr=sink) for k in range(4)]
        for p in procs:
            assert p.wait(timeout=120) == 0
    lines = out.read_text().splitlines()
    events = [json.loads(line) for line in lines]          # raises on two objects on one line
    assert len(events) == 4 * 400
    assert {e["worker"] for e in events} == {"0", "1", "2", "3"}
