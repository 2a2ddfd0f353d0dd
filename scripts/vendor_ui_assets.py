"""Vendor the UI's JavaScript libraries from their npm packages into the Python package.

Each package is fetched at a pinned version with ``npm pack`` (the ordinary npm client, so the
configured registry is used), its tarball checked against a pinned SHA-256, and the files the
UI needs copied with their LICENSE into ``src/bastion/ui/static/vendor/``. The copies are
committed: installing or running Bastion never needs Node or the network.

    python scripts/vendor_ui_assets.py          # fetch, check, copy
    python scripts/vendor_ui_assets.py --check  # only check the committed copies

To move to a new version: change ``version``, run once with ``--print-hashes`` to see the new
tarball's and files' hashes, review the upstream changes, and pin those hashes here.
tests/ui/test_vendored_assets.py checks the committed files against these pins.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

VENDOR_DIR = Path(__file__).resolve().parents[1] / "src" / "bastion" / "ui" / "static" / "vendor"


@dataclass(frozen=True)
class VendoredPackage:
    """One npm package: its pinned tarball and the files taken from it."""

    name: str
    version: str
    tarball_sha256: str
    # path inside the tarball -> (file name under vendor/, its SHA-256)
    files: dict[str, tuple[str, str]]


PACKAGES = (
    VendoredPackage(
        name="htmx.org",
        version="2.0.11",
        tarball_sha256="165a2655073e9e6e55e307a7c74e8ebcdb76afb7701f9c16cfd106a13add408e",
        files={
            "package/dist/htmx.min.js": (
                "htmx.min.js",
                "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717",
            ),
            "package/LICENSE": (
                "htmx.LICENSE.txt",
                "d3d2456f76414f2456104660ebd65aff1c04cd7966b942bdabd63f3cdb316a38",
            ),
        },
    ),
    VendoredPackage(
        name="uplot",
        version="1.6.32",
        tarball_sha256="4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d",
        files={
            "package/dist/uPlot.iife.min.js": (
                "uPlot.iife.min.js",
                "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f",
            ),
            "package/dist/uPlot.min.css": (
                "uPlot.min.css",
                "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04",
            ),
            "package/LICENSE": (
                "uPlot.LICENSE.txt",
                "8f989229699b4fe2f1a0432d0e9edc338a8a911e250e2d1b01ecd770a5f5b1bd",
            ),
        },
    ),
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_tarball(package: VendoredPackage, workdir: Path) -> bytes:
    """The package's tarball, by ``npm pack name@version``."""
    spec = f"{package.name}@{package.version}"
    done = subprocess.run(
        ["npm", "pack", spec, "--silent", "--pack-destination", str(workdir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"npm pack {spec} failed:\n{done.stderr}")
    tarballs = sorted(workdir.glob("*.tgz"))
    if len(tarballs) != 1:
        raise SystemExit(f"npm pack {spec} left {len(tarballs)} tarballs in {workdir}")
    data = tarballs[0].read_bytes()
    tarballs[0].unlink()
    return data


def extract(package: VendoredPackage, tarball: bytes) -> dict[str, bytes]:
    """The package's wanted files by their vendored name, from a checked tarball."""
    found = sha256(tarball)
    if found != package.tarball_sha256:
        raise SystemExit(
            f"{package.name}@{package.version}: tarball SHA-256 {found} is not the pinned "
            f"{package.tarball_sha256}; refusing to vendor it"
        )
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for inner, (target, _) in package.files.items():
            member = archive.extractfile(inner)
            if member is None:
                raise SystemExit(f"{package.name}: {inner} is not a file in the tarball")
            out[target] = member.read()
    return out


def check_committed() -> list[str]:
    """Problems with the committed copies: a file missing or not matching its pin."""
    problems = []
    for package in PACKAGES:
        for target, pinned in package.files.values():
            path = VENDOR_DIR / target
            if not path.is_file():
                problems.append(f"{target}: missing (run scripts/vendor_ui_assets.py)")
            elif sha256(path.read_bytes()) != pinned:
                problems.append(f"{target}: does not match its pinned SHA-256 {pinned}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the committed copies")
    parser.add_argument(
        "--print-hashes", action="store_true", help="print the hashes to pin, copy nothing"
    )
    args = parser.parse_args()
    if args.check:
        problems = check_committed()
        print("\n".join(problems) or "vendored files match their pins")
        return 1 if problems else 0
    VENDOR_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        for package in PACKAGES:
            tarball = fetch_tarball(package, Path(workdir))
            if args.print_hashes:
                print(f"{package.name}@{package.version} tarball {sha256(tarball)}")
                package = VendoredPackage(
                    package.name, package.version, sha256(tarball), package.files
                )
            for target, data in extract(package, tarball).items():
                pinned = dict(package.files.values())[target]
                if args.print_hashes:
                    print(f"  {target} {sha256(data)}")
                elif sha256(data) != pinned:
                    raise SystemExit(f"{target}: SHA-256 {sha256(data)} is not the pinned {pinned}")
                else:
                    (VENDOR_DIR / target).write_bytes(data)
                    print(f"vendored {target} from {package.name}@{package.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
