"""What bench/gpu_check.sh installs: the project's requirements this Python lacks, never torch.

    python bench/gpu_install.py plan OUT_DIR [--optional fla-core]
        writes OUT_DIR/missing.txt (requirements not installed, or installed at a version outside
        the project's range), OUT_DIR/optional.txt (the --optional ones not installed) and
        OUT_DIR/constraints.txt (torch and the packages built against it pinned to what is
        installed, so pip fails instead of replacing them); prints the plan
    python bench/gpu_install.py wheels DIR [--python-version 3.12] [--full]
        on a machine with internet: download wheels for an offline GPU box's Python into DIR
        (everything the project needs except torch; without --full, also without the big
        libraries GPU images ship anyway: numpy, pandas, pyarrow, scipy, matplotlib, transformers, ...)

Only the standard library and `packaging` (which pip vendors) are used, so it runs before anything
is installed.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare Python: pip's own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# Never replaced: the machine's torch build and what is compiled against it or its CUDA.
PROTECTED = re.compile(r"^(torch|torchvision|torchaudio|triton|numpy|nvidia-.*|cuda-.*)$")
# Pull torch in when resolved with dependencies: downloaded without them (their other dependencies
# are in the set or on any GPU image).
NEEDS_TORCH = ("peft", "accelerate")
# What GPU images ship anyway; left out of a wheel folder unless --full (keeps it to ~25 MB).
BIG = ("numpy", "pandas", "pyarrow", "scipy", "matplotlib", "contourpy", "fonttools", "kiwisolver", "pillow",
       "transformers", "tokenizers", "safetensors", "hf-xet", "regex", "sympy", "mpmath", "networkx")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def project_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """`dependencies` plus the `dev` extra (the tests and benchmarks need both)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("dev", []))


def installed_versions() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def plan(requirements: list[str], installed: dict[str, str]) -> tuple[list[str], list[str]]:
    """(requirements to install, constraints) for a Python with `installed` {name: version}.

    torch is never in the first list: missing, or outside the project's range, is an error to fix
    by hand (the right build depends on the machine's CUDA).
    """
    missing = []
    for line in requirements:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        have = installed.get(name)
        if name == "torch":
            if have is None:
                raise SystemExit("error: torch is not installed; install the CUDA build of torch for this machine "
                                 "first (this script never installs or replaces torch)")
            if not req.specifier.contains(have, prereleases=True):
                raise SystemExit(f"error: the installed torch {have} is outside the project's range {req.specifier}; "
                                 "this script never replaces torch")
            continue
        if have is None or not req.specifier.contains(have, prereleases=True):
            missing.append(line)
    constraints = [f"{n}=={v}" for n, v in sorted(installed.items()) if PROTECTED.match(n)]
    return missing, constraints


def cmd_plan(args: argparse.Namespace) -> None:
    installed = installed_versions()
    missing, constraints = plan(project_requirements(), installed)
    optional = [o for o in args.optional if canonicalize_name(Requirement(o).name) not in installed]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, lines in (("missing.txt", missing), ("optional.txt", optional), ("constraints.txt", constraints)):
        (out / name).write_text("".join(f"{line}\n" for line in lines))
    print(f"python {sys.version.split()[0]}; kept as installed: {', '.join(constraints) or 'nothing protected'}")
    print(f"to install ({len(missing)}): {' '.join(missing) or 'nothing'}; optional ({len(optional)}): "
          f"{' '.join(optional) or 'nothing'}")


def cmd_wheels(args: argparse.Namespace) -> None:
    dest = Path(args.dir)
    dest.mkdir(parents=True, exist_ok=True)
    reqs = [r for r in project_requirements()
            if canonicalize_name(Requirement(r).name) not in ("torch", *NEEDS_TORCH)] + list(args.optional)
    target = ["--only-binary=:all:", "--python-version", args.python_version, "--implementation", "cp",
              "--abi", "cp" + args.python_version.replace(".", "")]
    for p in PLATFORMS:
        target += ["--platform", p]
    pip = [sys.executable, "-m", "pip", "--isolated", "download", "--dest", str(dest), *target]
    subprocess.run([*pip, *reqs], check=True)
    subprocess.run([*pip, "--no-deps", *NEEDS_TORCH], check=True)
    dropped = []
    if not args.full:
        for wheel in dest.glob("*.whl"):
            if canonicalize_name(wheel.name.split("-")[0]) in BIG:
                wheel.unlink()
                dropped.append(wheel.name.split("-")[0])
    size = sum(f.stat().st_size for f in dest.glob("*.whl")) / 2**20
    print(f"{dest}: {len(list(dest.glob('*.whl')))} wheels, {size:.1f} MiB"
          + (f"; left out (GPU images ship them; --full keeps them): {' '.join(sorted(dropped))}" if dropped else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("plan", help="write missing.txt and constraints.txt for this Python")
    a.add_argument("out_dir", help="folder for missing.txt and constraints.txt")
    a.add_argument("--optional", nargs="*", default=[], help="list these in optional.txt when absent (e.g. fla-core)")
    b = sub.add_parser("wheels", help="download wheels for an offline machine (needs internet)")
    b.add_argument("dir", help="the wheel folder to fill")
    b.add_argument("--python-version", default="3.12", help="the GPU machine's Python, e.g. 3.12")
    b.add_argument("--optional", nargs="*", default=["fla-core"], help="extra packages (default: fla-core)")
    b.add_argument("--full", action="store_true", help="keep the big libraries GPU images usually ship")
    args = p.parse_args()
    {"plan": cmd_plan, "wheels": cmd_wheels}[args.cmd](args)


if __name__ == "__main__":
    main()
