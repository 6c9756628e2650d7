import dataclasses

import pytest

from pipelines.recipe import Recipe


def test_defaults_and_stable_id() -> None:
    r = Recipe()
    assert (r.size, r.keep_aspect, r.window, r.dtype) == (512, True, None, "float16")
    assert r.recipe_id == Recipe().recipe_id
    assert r.recipe_id.startswith("default@1#")


def test_id_changes_with_any_parameter() -> None:
    ids = {Recipe().recipe_id, Recipe(size=256).recipe_id, Recipe(keep_aspect=False).recipe_id,
           Recipe(window="header").recipe_id, Recipe(window=(40, 400)).recipe_id,
           Recipe(version="2").recipe_id}
    assert len(ids) == 6


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Recipe().size = 3  # type: ignore[misc]


def test_from_mapping() -> None:
    r = Recipe.from_mapping({"name": "ct", "version": 2, "size": 256, "window": [40, 400]})
    assert r == Recipe("ct", "2", 256, True, (40.0, 400.0))
    assert Recipe.from_mapping({"size": "native", "window": "none"}).size is None
    assert Recipe.from_mapping({"window": "header"}).window == "header"


@pytest.mark.parametrize(("mapping", "key"), [
    ({"sise": 512}, "sise"),
    ({"size": 4}, "size"),
    ({"size": "big"}, "size"),
    ({"keep_aspect": "yes"}, "keep_aspect"),
    ({"window": [40]}, "window"),
    ({"window": [40, 0]}, "window"),
    ({"window": "soft"}, "window"),
    ({"dtype": "int8"}, "dtype"),
    ({"name": ""}, "name"),
    ({"version": "1@2"}, "version"),
])
def test_from_mapping_rejects_naming_the_key(mapping: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"'{key}'"):
        Recipe.from_mapping(mapping)
