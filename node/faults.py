"""Test-only fault injection inside a worker process.

The isolation tests need a job that really hangs, really crashes the process, really panics
or really exhausts memory, in the child, not a mock of it. With CEPHNODE_FAULT_INJECTION=1
in the node's environment, an instance whose Image Comments read `CEPHNODE-FAULT:<kind>`
does that when its job is read. `exit-after-sr` instead ends the process (exit code 3) right
after the SR was handed on early, on the job's first attempt only: a crash between the SR's
early delivery and the rest of the job. Without the variable (any production node) this does
nothing, whatever the instance says.
"""
from __future__ import annotations

import ctypes
import os
import time
from typing import Any

ENV = "CEPHNODE_FAULT_INJECTION"
PREFIX = "CEPHNODE-FAULT:"


class InjectedPanic(BaseException):
    """Stands for a native panic: like pyo3's PanicException it is not an Exception."""


def inject(ds: Any) -> None:
    if os.environ.get(ENV) != "1":
        return
    comment = str(ds.get("ImageComments", "") or "")
    if not comment.startswith(PREFIX):
        return
    kind = comment[len(PREFIX):].strip()
    if kind == "hang":
        while True:           # a real hang: only killing the process ends it
            time.sleep(3600)
    if kind == "spin":
        while True:           # a busy hang that holds a core
            pass
    if kind == "segfault":
        ctypes.string_at(0)   # a C crash: SIGSEGV in this process
    if kind == "panic":
        raise InjectedPanic("injected panic")
    if kind == "oom":
        hog = []
        while True:           # grows until the worker's memory limit stops it
            hog.append(bytearray(64 * 2**20))
    if kind == "exit":
        os._exit(3)


def after_early(ds: Any, attempt: int) -> None:
    """Called in the worker right after the SR was handed on early (node.processing)."""
    if os.environ.get(ENV) != "1" or attempt != 1:
        return
    if str(ds.get("ImageComments", "") or "").strip() == PREFIX + "exit-after-sr":
        os._exit(3)
