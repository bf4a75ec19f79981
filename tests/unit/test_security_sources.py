"""Issue 12, finding 4 (local-path part): ``pkg://`` resolves only inside the named package.

``rayrelay_workloads.modeling.resolve_source`` turns ``pkg://<package>/<folder>``
into a folder of an installed package. A folder with ``..`` (or an absolute one)
must not reach the rest of the file system.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from rayrelay_workloads.modeling import ModelSourceError, resolve_source


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """An importable package holding ``model/config.json``, next to a folder that is not its own."""
    name = f"rrpkg_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "site"
    (root / name / "model").mkdir(parents=True)
    (root / name / "__init__.py").write_text("")
    (root / name / "model" / "config.json").write_text("{}")
    # Outside the package, but a valid save_pretrained-looking folder: only the path check stops it.
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(root))
    return name, tmp_path


def test_a_folder_inside_the_package_resolves(package: tuple[str, Path]) -> None:
    name, _ = package
    assert Path(resolve_source(f"pkg://{name}/model")).name == "model"


@pytest.mark.parametrize("folder", ["../../private", "../private", "model/../../private", "/{tmp}/private"])
def test_pkg_folder_outside_the_package_is_refused(package: tuple[str, Path], folder: str) -> None:
    name, tmp = package
    source = f"pkg://{name}/{folder.format(tmp=str(tmp).lstrip('/'))}"
    with pytest.raises(ModelSourceError, match="leaves the package"):
        resolve_source(source)


def test_a_symlink_out_of_the_package_is_refused(package: tuple[str, Path]) -> None:
    name, tmp = package
    (tmp / "site" / name / "link").symlink_to(tmp / "private")
    with pytest.raises(ModelSourceError, match="leaves the package"):
        resolve_source(f"pkg://{name}/link")


@pytest.mark.parametrize("package_name", ["..", ".rel", "a/b", ""])
def test_a_package_name_that_is_not_one_is_refused(package_name: str) -> None:
    with pytest.raises(ModelSourceError, match="is not installed"):
        resolve_source(f"pkg://{package_name}/model")
