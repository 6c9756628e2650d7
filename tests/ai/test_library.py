"""The model library: save, list, show, load into each architecture, export, import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from node.ai.library import Library
from node.api import Node
from node.cli import app
from node.errors import LibraryError
from pipelines.models import ARCHS, build

runner = CliRunner()
FEATURES = (4, 8, 16)


@pytest.fixture
def library(node_api: Node) -> Library:
    return Library(node_api.core.fs, node_api.core.catalog)


def test_a_pretrained_encoder_loads_into_every_architecture(library: Library) -> None:
    source = build("unet", features=FEATURES, seed=1)
    entry = library.save("unet", "pretrain", {"encoder": source.encoder.state_dict()},
                         {"net": source.config.to_dict(), "data": {"count": 3}})
    assert entry.id == "unet/1" and entry.card["parameters"]["encoder"] > 0
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = [f.clone() for f in source.encoder.eval()(x)]
    for arch in ARCHS:
        target = build(arch, features=FEATURES, seed=2)
        library.load_into(target, entry.id)
        with torch.no_grad():
            got = target.encoder.eval()(x)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True)), arch


def test_a_trained_network_comes_back_identical(library: Library) -> None:
    for arch in ARCHS:
        model = build(arch, features=FEATURES, seed=3).eval()
        entry = library.save(arch, "segment", {"model": model.state_dict()},
                             {"net": model.config.to_dict(), "metrics": {"val_dice": 0.5}})
        again = library.build(entry.id).eval()
        x = torch.rand(1, 1, 32, 32)
        with torch.no_grad():
            assert torch.equal(model(x), again(x))
    assert [e.id for e in library.entries()] == ["fcn/1", "unet/1", "unetpp/1"]


def test_versions_count_up_and_bad_ids_are_clear(library: Library) -> None:
    model = build("fcn", features=FEATURES, seed=4)
    ids = [library.save("fcn", "pretrain", {"encoder": model.encoder.state_dict()},
                        {"net": model.config.to_dict()}).id for _ in range(3)]
    assert ids == ["fcn/1", "fcn/2", "fcn/3"]
    with pytest.raises(LibraryError, match="no library entry 'fcn/9'"):
        library.get("fcn/9")
    with pytest.raises(LibraryError, match="not a library entry id"):
        library.get("../keys")
    with pytest.raises(LibraryError, match="does not fit"):
        library.load_into(build("fcn", features=(4, 8, 16, 32)), "fcn/1")


def test_cli_lists_shows_exports_and_imports(node_api: Node, library: Library,
                                             tmp_path: Path) -> None:
    model = build("unetpp", features=FEATURES, seed=5)
    library.save("unetpp", "segment", {"model": model.state_dict()},
                 {"net": model.config.to_dict(), "metrics": {"val_dice": 0.91},
                  "data": {"count": 12, "digest": "ab"}})
    home = str(node_api.core.settings.home)

    listed = runner.invoke(app, ["library", "ls", "--home", home])
    assert listed.exit_code == 0 and "unetpp/1" in listed.output and "0.9100" in listed.output
    shown = runner.invoke(app, ["library", "show", "unetpp/1", "--home", home])
    card = json.loads(shown.stdout)
    assert card["net"]["arch"] == "unetpp" and card["code_version"]
    exported = runner.invoke(app, ["library", "export", "unetpp/1", "--out", str(tmp_path),
                                   "--home", home])
    assert exported.exit_code == 0, exported.output
    folder = tmp_path / "unetpp-1"
    assert json.loads((folder / "card.json").read_text())["id"] == "unetpp/1"
    imported = runner.invoke(app, ["library", "import", str(folder), "--home", home])
    assert imported.exit_code == 0 and "imported as unetpp/2" in imported.output
    assert library.get("unetpp/2").card["imported_from"] == "unetpp/1"
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(library.build("unetpp/1").eval()(x), library.build("unetpp/2").eval()(x))
    missing = runner.invoke(app, ["library", "show", "unet/7", "--home", home])
    assert missing.exit_code == 2 and "no library entry" in missing.output
    bad = runner.invoke(app, ["library", "import", str(tmp_path / "o"), "--home", home])
    assert bad.exit_code == 2 and "not an exported library entry" in bad.output


def test_export_then_import_of_the_out_folder_round_trips(node_api: Node, library: Library,
                                                         tmp_path: Path) -> None:
    model = build("fcn", features=FEATURES, seed=2)
    library.save("fcn", "segment", {"model": model.state_dict()},
                 {"net": model.config.to_dict()}, {"manifest.json": b'{"train": {}}'})
    home = str(node_api.core.settings.home)
    out = tmp_path / "models"
    exported = runner.invoke(app, ["library", "export", "fcn/1", "--out", str(out),
                                   "--home", home])
    assert exported.exit_code == 0, exported.output
    assert "card.json, manifest.json, weights.pt" in exported.output
    imported = runner.invoke(app, ["library", "import", str(out), "--home", home])
    assert imported.exit_code == 0, imported.output
    assert "imported as fcn/2" in imported.output
    assert library.get("fcn/2").card["imported_from"] == "fcn/1"
    assert node_api.core.fs.cat_file("_library/fcn/2/manifest.json") == b'{"train": {}}'
    # a second export into the same folder: import asks which one
    assert runner.invoke(app, ["library", "export", "fcn/2", "--out", str(out),
                               "--home", home]).exit_code == 0
    both = runner.invoke(app, ["library", "import", str(out), "--home", home])
    assert both.exit_code == 2 and "2 exported entries (fcn-1, fcn-2)" in both.output
    helped = runner.invoke(app, ["library", "export", "--help"])
    assert "manifest.json" in helped.output
