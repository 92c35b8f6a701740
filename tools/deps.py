"""affstream's dependency files, generated from ``pyproject.toml`` (never edited by hand).

    python tools/deps.py floors              # every direct dependency at its declared floor
    python tools/deps.py lock [-o FILE]      # exact versions of today's resolution
    python tools/deps.py torch-free          # the direct dependencies a lane without torch installs
    python tools/deps.py diff                # installed packages against the lock (informational)

``floors`` prints a pip constraints file pinning each direct dependency (the core ones and
those of the ``dev`` extra, which holds every optional one) to the lower bound
``pyproject.toml`` declares (``av>=12.3`` -> ``av==12.3``). Installing with it resolves
the *oldest* releases we claim, while indirect dependencies stay free: the oldest CI
lane (``.ci/run``) tests exactly what a user who already has those releases gets.

``lock`` resolves ``.[dev]`` afresh with pip (``pip install --dry-run --report``; nothing
is installed) together with the torch build the CI machines carry, and writes every
package's exact version: ``constraints/lock-linux-py311.txt``. That is the set CI ran
with when it was committed; a user gets it with

    pip install torch==2.14.1 torchvision==0.29.1
    pip install ".[dev]" -c constraints/lock-linux-py311.txt

while a plain install keeps taking the newest releases. Regenerate it (and let CI
pass on it) whenever the newest lane starts resolving other versions; ``.ci/run``
prints the differences.

Needs only the standard library, pip and ``packaging`` (which pip vendors).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints" / "lock-linux-py311.txt"
# the torch build the CI machines carry on disk (a bare `torch` may pull GBs); keep in
# step with .ci/run and .ci/wheel-smoke
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")
# left out of the torch-free lanes (Python 3.12/3.13: no torch wheel on the CI machines'
# disk, and PyPI's is a multi-GB CUDA build); ray is left out too, the Ray engine runs torch
NEEDS_TORCH = frozenset({"torch", "torchvision", "open-clip-torch", "open_clip_torch", "ray"})


def direct_requirements(pyproject: Path = ROOT / "pyproject.toml", extra: str = "dev") -> list[Requirement]:
    """The core dependencies and those of ``extra``, as declared."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    texts = list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get(extra, []))
    return [Requirement(text) for text in texts]


def floor_of(requirement: Requirement) -> str | None:
    """The version of the requirement's ``>=`` (or ``==``) bound, or None if it has none."""
    for spec in requirement.specifier:
        if spec.operator in (">=", "==", "~="):
            return spec.version
    return None


def floors(requirements: list[Requirement]) -> list[str]:
    """``name==floor`` for every requirement; SystemExit naming any without a floor."""
    lines, missing = [], []
    for requirement in requirements:
        version = floor_of(requirement)
        if version is None:
            missing.append(str(requirement))
        else:
            lines.append(f"{requirement.name}=={version}")
    if missing:
        sys.exit(f"pyproject.toml: no lower bound for {', '.join(missing)}; declare the oldest release CI tests")
    return lines


def resolve(python: str, extra: str = "dev") -> dict[str, str]:
    """{name: version} of what pip would install for ``.[extra]`` plus the torch pins,
    into an empty environment, today."""
    with tempfile.TemporaryDirectory() as work:
        report = Path(work) / "report.json"
        subprocess.run([python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), f"{ROOT}[{extra}]", *TORCH_PINS], check=True)
        installs = json.loads(report.read_text())["install"]
    found = {item["metadata"]["name"]: item["metadata"]["version"] for item in installs}
    found.pop("affstream", None)
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def write_lock(versions: dict[str, str], path: Path, python: str) -> None:
    py_version = subprocess.run([python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    header = [
        "# Exact versions CI resolved and passed with; generated, do not edit:",
        "#   python tools/deps.py lock",
        f"# Python {py_version} on {platform.system()} {platform.machine()}, {datetime.date.today().isoformat()}.",
        "# Use: pip install " + " ".join(TORCH_PINS) + " && pip install \".[dev]\" -c " + path.relative_to(ROOT).as_posix(),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(header + [f"{name}=={version}" for name, version in versions.items()]) + "\n")
    tmp.replace(path)


def read_lock(path: Path = LOCK) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==", 1)
            pins[name.strip()] = version.strip()
    return pins


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    floors_cmd = sub.add_parser("floors", help="constraints pinning every direct dependency to its declared floor")
    floors_cmd.add_argument("--extra", default="dev")
    lock_cmd = sub.add_parser("lock", help="resolve .[dev] afresh and write the exact versions")
    lock_cmd.add_argument("-o", "--output", type=Path, default=LOCK)
    lock_cmd.add_argument("--python", default=sys.executable, help="the interpreter to resolve for")
    free_cmd = sub.add_parser("torch-free", help="requirements of core + dev without torch and what needs it")
    free_cmd.add_argument("--extra", default="dev")
    diff_cmd = sub.add_parser("diff", help="compare the installed packages with the lock (informational)")
    diff_cmd.add_argument("--lock", type=Path, default=LOCK)
    args = parser.parse_args(argv)
    if args.command == "floors":
        print("# every direct dependency at the floor pyproject.toml declares (tools/deps.py floors)")
        print("\n".join(floors(direct_requirements(extra=args.extra))))
    elif args.command == "torch-free":
        print("\n".join(str(r) for r in direct_requirements(extra=args.extra) if r.name.lower() not in NEEDS_TORCH))
    elif args.command == "lock":
        write_lock(resolve(args.python), args.output.resolve(), args.python)
        print(f"wrote {args.output}")
    else:
        from importlib import metadata

        installed = {dist.metadata["Name"]: dist.version for dist in metadata.distributions()}
        lowered = {name.lower().replace("_", "-"): version for name, version in installed.items()}
        changed = []
        for name, pinned in read_lock(args.lock).items():
            have = lowered.get(name.lower().replace("_", "-"))
            if have != pinned:
                changed.append(f"{name}: lock {pinned}, installed {have or 'none'}")
        print(f"{len(changed)} package(s) differ from {args.lock.name}" + (":" if changed else ""))
        for line in changed:
            print("  " + line)


if __name__ == "__main__":
    main()
