"""Build the wheel, install it in a fresh virtual environment, import every module.

The layer folders (canvas/, engine/, drivers/) sit at the top of the checkout,
and setuptools ``package-dir`` maps them into the one `stem` package. A
subpackage or data file missing from pyproject.toml is therefore left out of
the wheel without any error at build time. The editable install and the
checkout would hide that gap, so this test installs the wheel in a virtual
environment outside the checkout and imports from a neutral working directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parents[2]

#: Each layer folder of the checkout and the package path it installs as.
LAYERS = {
    "stem": "stem",
    "canvas": "stem/canvas",
    "engine": "stem/engine",
    "drivers": "stem/drivers",
}

#: Non-module files under the layer folders that must ship in the wheel.
DATA_SUFFIXES = (".lua",)
DATA_NAMES = ("py.typed",)

#: Patterns left out when copying the checkout: build output, caches, VCS data.
#: A stale build/lib could otherwise put files in the wheel that the current
#: configuration no longer ships.
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    ".venv",
)

#: Script for the virtual environment's Python. It imports every module of the
#: installed package, except that it only locates ``__main__`` modules, and
#: prints, as JSON, where each one was found.
IMPORT_ALL_MODULES = """
import importlib
import importlib.util
import json
import pkgutil
import sysconfig

import stem


def reraise(name):
    # walk_packages calls this inside its except block when a package fails
    # to import. Without it, an ImportError would be ignored silently.
    raise


files = {"stem": stem.__file__}
for info in pkgutil.walk_packages(stem.__path__, "stem.", onerror=reraise):
    if info.name.rpartition(".")[2] == "__main__":
        # Importing a __main__ module runs the program, so only locate it.
        files[info.name] = importlib.util.find_spec(info.name).origin
    else:
        files[info.name] = importlib.import_module(info.name).__file__
print(json.dumps({"purelib": sysconfig.get_paths()["purelib"], "files": files}))
"""

SUBPROCESS_TIMEOUT_S = 600


@dataclass(frozen=True)
class Installed:
    """Where the virtual environment's Python found the installed package."""

    #: The environment's site-packages folder.
    purelib: Path
    #: The file each module of the package was loaded from, by module name.
    files: dict[str, Path]


def clean_environment() -> dict[str, str]:
    """Return os.environ without variables that would change which stem is found."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


def run(command: list[str], cwd: Path) -> str:
    """Run a command and return its standard output. A non-zero exit fails the test."""
    result = subprocess.run(
        command,
        cwd=cwd,
        env=clean_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} failed with exit code {result.returncode}.\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    return result.stdout


def expected_wheel_files() -> dict[str, Path]:
    """Map each path the wheel must contain to its source file in the checkout."""
    expected: dict[str, Path] = {}
    for folder, package in LAYERS.items():
        root = CHECKOUT / folder
        for source in sorted(root.rglob("*")):
            if "__pycache__" in source.parts or not source.is_file():
                continue
            is_module = source.suffix == ".py"
            is_data = source.suffix in DATA_SUFFIXES or source.name in DATA_NAMES
            if is_module or is_data:
                expected[f"{package}/{source.relative_to(root).as_posix()}"] = source
    return expected


def module_name(wheel_path: str) -> str:
    """Turn a wheel path such as ``stem/canvas/__init__.py`` into ``stem.canvas``."""
    parts = wheel_path.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from a clean copy of the checkout, without downloads."""
    source = tmp_path_factory.mktemp("source") / "stem"
    shutil.copytree(CHECKOUT, source, ignore=COPY_IGNORE)
    dist = tmp_path_factory.mktemp("dist")

    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation"]
    run([*build, "--outdir", str(dist), str(source)], cwd=source)

    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == 1, f"Expected one wheel in {dist}, found {wheels}."
    return wheels[0]


@pytest.fixture(scope="module")
def venv_dir(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """Create a virtual environment outside the checkout and install the wheel.

    The environment uses the system site-packages for the dependencies. Those
    may also contain an editable install of this checkout, which is why the
    tests below check where each module was loaded from.
    """
    directory = tmp_path_factory.mktemp("venv") / "env"
    assert not is_inside(directory, CHECKOUT)

    run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(directory)],
        cwd=directory.parent,
    )
    python = str(directory / "bin" / "python")
    if sys.prefix != sys.base_prefix:
        share_dependencies(python, cwd=directory.parent)
    run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        cwd=directory.parent,
    )
    return directory


def share_dependencies(python: str, cwd: Path) -> None:
    """Put this test run's site-packages on the new environment's sys.path.

    When pytest itself runs in a virtual environment, the dependencies live
    there, and --system-site-packages reaches only the base interpreter's.
    A plain path in a .pth file is appended after the new environment's own
    site-packages, and .pth files inside it are not processed, so an editable
    install of this checkout there stays inactive.
    """
    purelib_code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    target = Path(run([python, "-I", "-c", purelib_code], cwd=cwd).strip())
    paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (target / "outer_environment.pth").write_text("\n".join(paths) + "\n")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, venv_dir: Path) -> Installed:
    """Import every module in the environment and record where each came from."""
    cwd = tmp_path_factory.mktemp("neutral-cwd")
    python = str(venv_dir / "bin" / "python")

    # -I leaves the working directory and PYTHON* variables out of sys.path.
    output = run([python, "-I", "-c", IMPORT_ALL_MODULES], cwd=cwd)

    report = json.loads(output.strip().splitlines()[-1])
    files = {name: Path(file) for name, file in report["files"].items()}
    return Installed(purelib=Path(report["purelib"]), files=files)


def test_wheel_contains_checkout_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())

    missing = sorted(path for path in expected_wheel_files() if path not in names)

    assert missing == [], (
        f"Files in the checkout's layer folders missing from {wheel.name}: {missing}. "
        "List each subpackage under [tool.setuptools] packages and package-dir, "
        "and each data file under [tool.setuptools.package-data] in pyproject.toml."
    )


def test_wheel_installs_only_stem(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/")[0] for name in archive.namelist()}

    unexpected = sorted(
        name for name in top_level if name != "stem" and not name.endswith(".dist-info")
    )

    assert "stem" in top_level
    assert unexpected == [], (
        f"{wheel.name} installs more than the stem package: {unexpected}."
    )


def test_installed_stem_comes_from_venv(venv_dir: Path, installed: Installed) -> None:
    stem_file = installed.files["stem"]

    assert is_inside(installed.purelib, venv_dir), (
        f"{installed.purelib} is not inside {venv_dir}."
    )
    assert is_inside(stem_file, installed.purelib), (
        f"stem was imported from {stem_file}, not from {installed.purelib}."
    )
    assert not is_inside(stem_file, CHECKOUT), (
        f"stem was imported from the checkout: {stem_file}."
    )


@pytest.mark.parametrize("layer", ["stem.canvas", "stem.engine", "stem.drivers"])
def test_layer_resolves_inside_venv(layer: str, installed: Installed) -> None:
    assert layer in installed.files, (
        f"{layer} was not found when walking the installed package."
    )
    layer_file = installed.files[layer]
    assert is_inside(layer_file, installed.purelib), (
        f"{layer} was imported from {layer_file}, not from {installed.purelib}."
    )
    assert not is_inside(layer_file, CHECKOUT), (
        f"{layer} was imported from the checkout: {layer_file}."
    )


def test_every_checkout_module_imports(installed: Installed) -> None:
    expected = {
        module_name(path) for path in expected_wheel_files() if path.endswith(".py")
    }
    walked = set(installed.files)

    missing = sorted(expected - walked)
    unexpected = sorted(walked - expected)

    assert missing == [], (
        f"Modules of the checkout not importable from the wheel: {missing}."
    )
    assert unexpected == [], (
        f"Modules in the wheel with no source in the checkout: {unexpected}."
    )
