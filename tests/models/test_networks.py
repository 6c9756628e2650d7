import re

import pytest
import torch
from monai.networks.nets import BasicUNet, BasicUNetPlusPlus

from pipelines.models import ARCHS, NetConfig, build, build_from

FEATURES = (4, 8, 16, 32, 64)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_have_the_input_size_and_n_classes(arch: str, x: torch.Tensor) -> None:
    net = build(arch, features=FEATURES, n_classes=3, seed=0)
    assert net(x).shape == (2, 3, 32, 32)
    wide = torch.rand(1, 1, 16, 48)
    assert build(arch, features=(4, 8, 16), seed=0)(wide).shape == (1, 2, 16, 48)


@pytest.mark.parametrize("arch", ARCHS)
def test_encoder_maps_go_shallow_to_deep_with_the_declared_channels(
    arch: str, x: torch.Tensor
) -> None:
    net = build(arch, features=FEATURES, seed=0)
    maps = net.encoder(x)
    assert net.encoder_channels == FEATURES
    assert [m.shape[1] for m in maps] == list(net.encoder_channels)
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4, 2]


def test_an_encoder_loads_into_every_architecture(x: torch.Tensor) -> None:
    nets = {arch: build(arch, features=FEATURES, seed=i).eval() for i, arch in enumerate(ARCHS)}
    for source in ARCHS:
        for target in ARCHS:
            a, b = nets[source], build(target, features=FEATURES, seed=9).eval()
            assert not torch.equal(a.encoder(x)[-1], b.encoder(x)[-1])
            b.encoder.load_state_dict(a.encoder.state_dict())
            assert all(torch.equal(p, q) for p, q in zip(a.encoder(x), b.encoder(x), strict=True))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_rebuilt_from_its_config_with_the_state_dict_gives_identical_logits(
    arch: str, norm: str, x: torch.Tensor
) -> None:
    net = build(arch, features=FEATURES, norm=norm, seed=1).eval()
    card = net.config.to_dict()
    again = build_from(NetConfig.from_dict(card), seed=2).eval()
    assert again.config == net.config
    again.load_state_dict(net.state_dict())
    assert torch.equal(net(x), again(x))


def test_a_seed_fixes_the_initial_weights_without_touching_the_global_rng() -> None:
    state = torch.get_rng_state()
    a, b = build("fcn", features=FEATURES, seed=3), build("fcn", features=FEATURES, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arch": "segnet"}, "segnet"),
        ({"arch": "unet", "features": (8, 16)}, "features"),
        ({"arch": "unet", "norm": "layer"}, "layer"),
    ],
)
def test_bad_settings_raise_value_error_naming_them(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(**kwargs)


@pytest.mark.parametrize("arch", ARCHS)
def test_sizes_not_divisible_by_16_are_refused(arch: str) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        build(arch, features=FEATURES)(torch.zeros(1, 1, 32, 40))


def _monai_to_ours(key: str) -> str:
    key = re.sub(r"^conv_0\.|^conv_0_0\.", "encoder.stages.0.", key)
    key = re.sub(r"^(?:down_|conv_)(\d)(?:_0)?\.", r"encoder.stages.\1.", key)
    key = re.sub(r"^upcat_(\d)\.", lambda m: f"ups.{int(m.group(1)) - 1}.", key)
    key = re.sub(r"^upcat_(\d)_(\d)\.", r"nodes.\1_\2.", key)
    return re.sub(r"^final_conv(?:_0_4)?\.", "head.", key)


@pytest.mark.parametrize("arch", ["unet", "unetpp"])
def test_unet_and_unetpp_compute_what_monai_s_basic_networks_compute(
    arch: str, x: torch.Tensor
) -> None:
    ref = (BasicUNet if arch == "unet" else BasicUNetPlusPlus)(2, 1, 2, (*FEATURES, 4)).eval()
    ours = build(arch, features=FEATURES).eval()
    state = {_monai_to_ours(k): v for k, v in ref.state_dict().items()
             if not re.match(r"final_conv_0_[123]\.", k)}  # UNet++'s deep-supervision heads
    ours.load_state_dict(state)
    expected = ref(x)
    expected = expected[0] if isinstance(expected, list) else expected
    assert torch.allclose(ours(x), expected, atol=1e-5)
