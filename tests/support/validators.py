"""Run the real DICOM validators on files we wrote: dicom3tools' dciodvfy and pixelmed's
DicomSRValidator (both from Debian; `./dev test` installs them).

The Debian DicomSRValidator is a shell script that runs `java -cp pixelmed.jar ...` with no way
to add JVM options; on Java 17 the XPath limits of the JDK make it fail on SRs of our size, so
the limits are lifted through JAVA_TOOL_OPTIONS, which every JVM reads.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

JAVA_XPATH_UNLIMITED = "-Djdk.xml.xpathExprOpLimit=0 -Djdk.xml.xpathExprGrpLimit=0 -Djdk.xml.xpathTotalOpLimit=0"


@dataclass
class ValidationReport:
    tool: str
    path: Path
    returncode: int
    output: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def unexpected_warnings(self, explained: dict[str, str]) -> list[str]:
        """Warnings not matched by any regular expression in `explained` (pattern -> why it is fine)."""
        return [w for w in self.warnings if not any(re.search(p, w) for p in explained)]


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (./dev test installs the DICOM peers)")
    return path


def dciodvfy(path: str | Path) -> ValidationReport:
    proc = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True, errors="replace")
    out = proc.stdout + proc.stderr
    lines = out.splitlines()
    return ValidationReport(
        "dciodvfy", Path(path), proc.returncode, out,
        errors=[ln for ln in lines if ln.startswith("Error")],
        warnings=[ln for ln in lines if ln.startswith("Warning")],
    )


def dicom_sr_validator(path: str | Path) -> ValidationReport:
    env = dict(os.environ)
    env["JAVA_TOOL_OPTIONS"] = (env.get("JAVA_TOOL_OPTIONS", "") + " " + JAVA_XPATH_UNLIMITED).strip()
    proc = subprocess.run([_tool("DicomSRValidator"), str(path)], capture_output=True, text=True,
                          errors="replace", env=env)
    out = proc.stdout + proc.stderr
    lines = [ln for ln in out.splitlines() if not ln.startswith("Picked up JAVA_TOOL_OPTIONS")]
    return ValidationReport(
        "DicomSRValidator", Path(path), proc.returncode, "\n".join(lines),
        errors=[ln for ln in lines if ln.startswith("Error") or "Exception" in ln],
        warnings=[ln for ln in lines if ln.startswith("Warning")],
    )
