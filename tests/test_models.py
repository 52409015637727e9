"""Model families: the registry contract, the seeds' layer lists, Grad-CAM hooks and loading local weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.visualize import GradCAM
from safetensors.torch import save_file
from torch import nn

from covidxray.models import (
    Classifier,
    PretrainedWeightsError,
    XRayNet,
    create_model,
    list_models,
    load_pretrained,
)
from covidxray.models.mobilenet import MobileNetV2Backbone
from covidxray.models.seed_cnns import MixStyle, PatchClassifier, seed_cnn6

SIZE = 64
EXPECTED = {
    "seed_cnn6",
    "seed_cnn6_in",
    "seed_cnn6_gap",
    "seed_cnn6_mixstyle",
    "seed_cnn6_patch",
    "seed_cnn422k",
    "seed_cnn2",
    "densenet121",
    "resnet18",
    "resnet50",
    "efficientnet_b0",
    "vgg16",
    "mobilenet_v2",
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP spin-waiting costs more than it gains."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def layer_list(seq: nn.Module) -> list[str]:
    """``Conv2d(16)``, ``ReLU``, ``MaxPool2d``, ``Linear(64)``, ``Dropout(0.5)`` ... for each child module."""
    out = []
    for m in seq.children():
        if isinstance(m, nn.Conv2d):
            out.append(f"Conv2d({m.out_channels})")
        elif isinstance(m, nn.Linear):
            out.append(f"Linear({m.out_features})")
        elif isinstance(m, nn.Dropout):
            out.append(f"Dropout({m.p})")
        else:
            out.append(type(m).__name__)
    return out


def test_registry_has_every_family() -> None:
    assert set(list_models()) == EXPECTED
    with pytest.raises(ValueError, match="unknown model 'vgg19'"):
        create_model("vgg19")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_model_contract_train_gradcam_freeze(name: str) -> None:
    torch.manual_seed(0)
    # both channel counts and both head sizes, in two builds (vgg16 alone has 138 M parameters)
    binary = create_model(name, num_classes=1, in_channels=3, image_size=SIZE)
    with torch.no_grad():
        assert binary.eval()(torch.rand(1, 3, SIZE, SIZE)).shape == (1, 1)
    del binary

    model = create_model(name, num_classes=3, in_channels=1, image_size=SIZE)
    assert isinstance(model, Classifier)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 3
    x = torch.rand(2, 1, SIZE, SIZE)
    model.eval()
    with torch.no_grad():
        assert model.features(x).shape == (2, model.head.in_features)
        assert model(x).shape == (2, 3)

    # one "epoch" of two batches: the loss is finite and every trainable parameter group moves
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = model.head.weight.detach().clone()
    first = next(p for p in model.parameters()).detach().clone()
    for batch in range(2):
        xb = torch.rand(2, 1, SIZE, SIZE)
        yb = torch.tensor([batch, 2])
        loss = nn.functional.cross_entropy(model(xb), yb)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(model.head.weight, before)
    assert not torch.equal(next(p for p in model.parameters()), first)

    # Grad-CAM hooks the named layer through the XRayNet wrapper
    target = model.get_submodule(model.gradcam_layer)
    assert not isinstance(target, nn.Linear)
    wrapped = XRayNet(model, mean=0.5, std=0.25, num_outputs=3).eval()
    cam = GradCAM(nn_module=wrapped, target_layers="net." + model.gradcam_layer)
    heat = cam(torch.rand(1, 1, SIZE, SIZE))
    assert heat.shape == (1, 1, SIZE, SIZE)
    assert torch.isfinite(heat).all()

    model.freeze_backbone()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}


def test_seed_cnn6_layers_follow_seed_000() -> None:
    model = create_model("seed_cnn6", num_classes=2, in_channels=3, image_size=256)
    assert layer_list(model.conv) == [
        "Conv2d(16)", "ReLU", "Conv2d(16)", "ReLU", "MaxPool2d",
        "Conv2d(32)", "ReLU", "Conv2d(32)", "ReLU", "MaxPool2d",
        "Conv2d(64)", "ReLU", "Conv2d(64)", "ReLU", "MaxPool2d",
    ]  # fmt: skip
    assert all(m.kernel_size == (3, 3) for m in model.conv if isinstance(m, nn.Conv2d))
    assert layer_list(model.fc) == ["Linear(64)", "ReLU", "Dropout(0.5)"]
    assert model.head.out_features == 2
    # the seed's "64 features, each represented by a 32*32 array"
    assert model.conv(torch.zeros(1, 3, 256, 256)).shape == (1, 64, 32, 32)
    assert create_model("seed_cnn6", image_size=128).flat_features == 64 * 16 * 16


def test_seed_cnn6_in_ignores_brightness_and_contrast_that_seed_cnn6_sees() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 1, SIZE, SIZE)
    darker_flatter = 0.4 * x + 0.3  # another exposure / window of the same image
    for name, invariant in (("seed_cnn6_in", True), ("seed_cnn6", False)):
        model = create_model(name, num_classes=3, image_size=SIZE).eval()
        with torch.no_grad():
            a, b = model(x), model(darker_flatter)
        assert torch.allclose(a, b, atol=1e-4) is invariant, name
    model = create_model("seed_cnn6_in", num_classes=3, image_size=SIZE)
    assert layer_list(model.conv)[:4] == ["Conv2d(16)", "InstanceNorm2d", "ReLU", "Conv2d(16)"]
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in model.conv) == 4


def test_seed_cnn6_gap_pools_away_position_and_takes_any_size() -> None:
    torch.manual_seed(0)
    model = create_model("seed_cnn6_gap", num_classes=3, image_size=96).eval()
    assert model.flat_features == 64 and model.fc.dense.in_features == 64
    assert create_model("seed_cnn6", image_size=96).flat_features == 64 * 12 * 12
    with torch.no_grad():  # the same weights read a larger image: nothing in it is tied to a position
        assert model(torch.rand(2, 1, 128, 128)).shape == (2, 3)
        # a pattern moved by a multiple of the pooling stride (8 px) inside a blank frame: same output
        x = torch.zeros(1, 1, 96, 96)
        x[..., 16:40, 16:40] = torch.rand(24, 24)
        moved = torch.roll(x, shifts=(32, 24), dims=(2, 3))
        assert torch.allclose(model(x), model(moved), atol=1e-5)
        flat = create_model("seed_cnn6", num_classes=3, image_size=96).eval()
        assert not torch.allclose(flat(x), flat(moved), atol=1e-5)


@pytest.mark.parametrize("size", [64, 96, 160])
def test_seed_cnn6_patch_trains_on_one_random_patch_and_predicts_with_the_lattices_mean_logit(
    size: int,
) -> None:
    torch.manual_seed(0)
    model = create_model("seed_cnn6_patch", num_classes=3, image_size=size)
    half = size // 2
    offs = model.offsets(size)
    assert model.patch == half and offs[0] == 0 and offs[-1] == half and len(set(offs)) == 3
    assert all(o % 8 == 0 for o in offs)
    x = torch.rand(3, 1, size, size)

    def patch_logits(a: int, b: int) -> torch.Tensor:
        return model.head(model.patch_net.features(x[:, :, a : a + half, b : b + half]))

    with torch.no_grad():
        model.eval()
        lattice = torch.stack([patch_logits(a, b) for a in offs for b in offs]).mean(0)
        assert torch.allclose(model(x), lattice, atol=1e-6)
        assert not torch.allclose(
            model(x), patch_logits(offs[1], offs[1]), atol=1e-4
        )  # not one patch's answer
        assert torch.equal(
            model(x[:, :, :half, :half]), patch_logits(0, 0)
        )  # a patch-sized input is one patch
        # training: one patch per image at a place drawn from torch's generator (dropout off to compare)
        model.train()
        model.patch_net.fc.dropout.p = 0.0
        torch.manual_seed(5)
        out = model(x)
        torch.manual_seed(5)
        at = torch.randint(0, half + 1, (3, 2)).tolist()
        one = [
            model.head(model.patch_net.features(x[i : i + 1, :, a : a + half, b : b + half]))
            for i, (a, b) in enumerate(at)
        ]
        assert torch.allclose(out, torch.cat(one), atol=1e-6)
        assert len({tuple(a) for a in at}) > 1
        # other sizes are refused with what to do, in both modes
        for mode in (True, False):
            with pytest.raises(ValueError, match=f"takes square {size} px images"):
                model.train(mode)(torch.rand(1, 1, size + 8, size + 8))
    with pytest.raises(ValueError, match="multiple of 16"):
        create_model("seed_cnn6_patch", image_size=100)


def test_patch_classifier_refuses_a_lattice_that_does_not_fit_its_network() -> None:
    with pytest.raises(ValueError, match="stride 4 does not match"):
        PatchClassifier(seed_cnn6(3, 1, image_size=32), image_size=64, stride=4)
    with pytest.raises(ValueError, match="multiples of the conv stack's downsampling"):
        PatchClassifier(seed_cnn6(3, 1, image_size=36), image_size=72)
    with pytest.raises(ValueError, match="too small for a 3 x 3 lattice"):
        PatchClassifier(seed_cnn6(3, 1, image_size=32), image_size=40)
    with pytest.raises(ValueError, match="larger than the image"):
        PatchClassifier(seed_cnn6(3, 1, image_size=64), image_size=32)


def test_seed_cnn6_patch_gradcam_puts_each_patch_at_its_place_and_averages_overlaps() -> None:
    """Grad-CAM on the stitched canvas equals the one computed by hand from each patch's own maps and gradients
    (hooked on the patch network), laid at the patch's place (rows and columns) and divided by how many patches
    cover each cell."""
    torch.manual_seed(0)
    model = create_model("seed_cnn6_patch", num_classes=3, image_size=64).eval()  # 32 px patches: 4 x 4 cells
    wrapped = XRayNet(model, 0.5, 0.25, 3).eval()
    cam = GradCAM(nn_module=wrapped, target_layers="net.stitch")
    x = torch.rand(1, 1, 64, 64)
    assert cam(x).shape == (1, 1, 64, 64)
    places = [(a // 8, b // 8) for a in model.offsets(64) for b in model.offsets(64)]  # cells (0, 2, 4)
    cover = torch.zeros(8, 8)
    for a, b in places:
        cover[a : a + 4, b : b + 4] += 1
    assert cover.max() == 4 and cover.min() == 1
    kept = {}
    lit = 0
    hook = model.patch_net.conv.register_forward_hook(lambda m, i, o: kept.update(maps=o) or o.retain_grad())
    try:
        for k in range(3):
            wrapped.zero_grad()
            wrapped(x)[0, k].backward()
            a_all, g_all = kept["maps"].detach(), kept["maps"].grad  # (9, 64, 4, 4): each patch's own
            acts, grads = torch.zeros(9, 64, 8, 8), torch.zeros(9, 64, 8, 8)
            for j, (a, b) in enumerate(places):
                acts[j, :, a : a + 4, b : b + 4] = a_all[j] / cover[a : a + 4, b : b + 4]
                grads[j, :, a : a + 4, b : b + 4] = g_all[j] * cover[a : a + 4, b : b + 4]
            weights = grads.mean(dim=(2, 3), keepdim=True)
            expected = torch.relu((weights * acts).sum(dim=(0, 1)))
            got = cam.compute_map(x, class_idx=k)[0, 0]
            assert torch.allclose(
                got, expected, rtol=1e-4, atol=1e-12 + 1e-4 * float(expected.abs().max())
            ), k
            # transposed placement would not match (the check sees rows from columns)
            if float(expected.abs().max()) > 0:
                lit += 1
                assert not torch.allclose(got, expected.T, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    finally:
        hook.remove()
    assert lit >= 1  # at least one class has evidence somewhere, so placement was checked


def test_mixstyle_restyles_shallow_features_in_training_only() -> None:
    torch.manual_seed(0)
    mix = MixStyle(p=1.0, alpha=0.1)
    x = torch.randn(4, 8, 12, 12) * torch.tensor([0.5, 1.0, 2.0, 4.0]).view(4, 1, 1, 1) + torch.arange(
        4.0
    ).view(4, 1, 1, 1)

    def standardised(t: torch.Tensor) -> torch.Tensor:
        return (t - t.mean(dim=(2, 3), keepdim=True)) / t.std(dim=(2, 3), keepdim=True)

    mixed = mix.train()(x)
    # the styles (channel means) move toward other images'; the content (the standardised maps) stays
    assert not torch.allclose(mixed.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-3)
    assert torch.allclose(standardised(mixed), standardised(x), atol=1e-3)
    assert torch.equal(mix.eval()(x), x)
    # in the network: the same weights give seed_cnn6's output at inference
    torch.manual_seed(1)
    model = create_model("seed_cnn6_mixstyle", num_classes=3, image_size=SIZE)
    torch.manual_seed(1)
    plain = create_model("seed_cnn6", num_classes=3, image_size=SIZE)
    assert sum(isinstance(m, MixStyle) for m in model.conv) == 2
    xb = torch.rand(3, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(model.eval()(xb), plain.eval()(xb))


def test_seed_cnn422k_matches_seed_002_summary() -> None:
    model = create_model("seed_cnn422k", num_classes=1, in_channels=3, image_size=256)
    assert sum(p.numel() for p in model.parameters()) == 422_177
    assert layer_list(model.conv) == [
        "Conv2d(64)", "ReLU", "MaxPool2d", "Dropout(0.25)",
        "Conv2d(32)", "ReLU", "MaxPool2d", "Dropout(0.25)",
    ]  # fmt: skip
    assert [m.stride for m in model.conv if isinstance(m, nn.Conv2d)] == [(3, 3), (3, 3)]
    # the Keras summary's output shapes and per-layer parameter counts
    x = torch.zeros(1, 3, 256, 256)
    shapes = []
    for m in model.conv:
        x = m(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes[0] == (64, 85, 85) and shapes[2] == (64, 42, 42)
    assert shapes[4] == (32, 14, 14) and shapes[6] == (32, 7, 7)
    assert model.flat_features == 1568
    counts = [
        sum(p.numel() for p in m.parameters()) for m in (model.conv.conv1, model.conv.conv2, model.fc.dense)
    ]
    assert counts == [1792, 18464, 401664]
    assert sum(p.numel() for p in model.head.parameters()) == 257


def test_seed_cnn2_layers_follow_seeds_003_004() -> None:
    model = create_model("seed_cnn2", num_classes=1, in_channels=1, image_size=64)
    assert layer_list(model.conv) == ["Conv2d(32)", "ReLU", "MaxPool2d", "Conv2d(32)", "ReLU", "MaxPool2d"]
    assert layer_list(model.fc) == ["Linear(256)", "ReLU"]
    assert model.head.out_features == 1
    assert model.flat_features == 32 * 14 * 14


def test_seed_flatten_follows_image_size_and_rejects_tiny_inputs() -> None:
    small = create_model("seed_cnn2", image_size=64)
    large = create_model("seed_cnn2", image_size=128)
    assert large.flat_features == 32 * 30 * 30 != small.flat_features
    assert large(torch.rand(1, 1, 128, 128)).shape == (1, 3)  # the registry's default: three classes
    with pytest.raises(ValueError, match="image_size=8 is too small"):
        create_model("seed_cnn422k", image_size=8)


def test_seed_cnn2_learns_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = create_model("seed_cnn2", num_classes=3, in_channels=1, image_size=32)
    x = torch.rand(12, 1, 32, 32)
    y = torch.arange(12) % 3
    x[y == 1] += 0.5  # classes differ in brightness
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_load_pretrained_adapts_rgb_stem_and_keeps_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model("resnet18", num_classes=5, in_channels=3)
    path = tmp_path / "rgb.pth"
    torch.save(source.state_dict(), path)
    model = create_model("resnet18", num_classes=3, in_channels=1)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}

    report = load_pretrained(model, path)

    src, dst = source.state_dict(), model.state_dict()
    assert torch.allclose(dst["backbone.conv1.weight"], src["backbone.conv1.weight"].sum(dim=1, keepdim=True))
    for key, value in src.items():
        if key.startswith("backbone.") and key != "backbone.conv1.weight":
            assert torch.equal(dst[key], value), key
    assert all(torch.equal(model.head.state_dict()[k], v) for k, v in head_before.items())
    assert report.adapted == ["backbone.conv1.weight"]
    assert sorted(report.skipped_head) == ["head.bias", "head.weight"]
    assert not report.missing and not report.unexpected


def test_load_pretrained_reads_torchvision_layout_and_bundles(tmp_path: Path) -> None:
    # an ImageNet-style file: torchvision's key names (no "backbone." prefix) and a 1000-class classifier
    torch.manual_seed(0)
    imagenet = MobileNetV2Backbone(in_channels=3).state_dict()
    imagenet["classifier.1.weight"] = torch.randn(1000, 1280)
    imagenet["classifier.1.bias"] = torch.randn(1000)
    save_file({k: v.contiguous() for k, v in imagenet.items()}, tmp_path / "mobilenet_v2.safetensors")
    model = create_model("mobilenet_v2", num_classes=1, in_channels=1)
    report = load_pretrained(model, tmp_path / "mobilenet_v2.safetensors")
    assert sorted(report.skipped_head) == ["classifier.1.bias", "classifier.1.weight"]
    assert torch.equal(model.backbone.features[5].conv[0][0].weight, imagenet["features.5.conv.0.0.weight"])

    # a covidxray XRayNet state dict (as in a bundle's model.safetensors) loads into a bare classifier
    wrapped = XRayNet(create_model("seed_cnn2", num_classes=3, image_size=32), 0.5, 0.25, 3)
    torch.save(wrapped.state_dict(), tmp_path / "run.pt")
    plain = create_model("seed_cnn2", num_classes=1, image_size=32)
    report = load_pretrained(plain, tmp_path / "run.pt")
    assert sorted(report.ignored) == ["mean", "std"]
    assert torch.equal(plain.fc.dense.weight, wrapped.net.fc.dense.weight)


def test_load_pretrained_explains_a_misfit(tmp_path: Path) -> None:
    torch.save(create_model("seed_cnn2", image_size=64).state_dict(), tmp_path / "seed.pt")
    with pytest.raises(PretrainedWeightsError, match=r"seed\.pt does not fit") as err:
        load_pretrained(create_model("resnet18"), tmp_path / "seed.pt")
    assert "missing in the file" in str(err.value) and "backbone.conv1.weight" in str(err.value)
    assert "unexpected in the file" in str(err.value) and "conv.conv1.weight" in str(err.value)

    other_size = create_model("seed_cnn2", image_size=128)
    with pytest.raises(PretrainedWeightsError, match=r"shape mismatch \(1\): fc\.dense\.weight"):
        load_pretrained(other_size, tmp_path / "seed.pt")
    report = load_pretrained(other_size, tmp_path / "seed.pt", strict_backbone=False)
    assert "conv.conv1.weight" in report.loaded and "fc.dense.weight" not in report.loaded

    (tmp_path / "notes.pt").write_text("not a state dict")
    with pytest.raises(PretrainedWeightsError, match=r"cannot read weights file .*notes\.pt"):
        load_pretrained(create_model("seed_cnn2"), tmp_path / "notes.pt")
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        load_pretrained(create_model("seed_cnn2"), tmp_path / "absent.pth")


@pytest.mark.parametrize("scheme", ["glorot", "he"])
def test_init_schemes_are_seeded_and_keep_seed_cnn6_signal_alive(scheme: str) -> None:
    from covidxray.models.init import initialize

    def conv_output_std(s: str) -> tuple[float, dict]:
        torch.manual_seed(0)
        model = initialize(create_model("seed_cnn6", num_classes=3, image_size=SIZE), s)
        x = torch.randn(8, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            return float(model.conv(x).std()), model.state_dict()

    default_std, _ = conv_output_std("default")
    std, state = conv_output_std(scheme)
    _, again = conv_output_std(scheme)
    assert all(torch.equal(state[k], again[k]) for k in state)  # same seed, same weights
    assert all(float(v.abs().max()) == 0 for k, v in state.items() if k.endswith("bias"))
    # PyTorch's default init leaves ~2 % of unit scale after six ReLU convs; Glorot/He keep far more of it
    assert default_std < 0.05 and std > 2 * default_std


def test_init_rejects_an_unknown_scheme() -> None:
    from covidxray.models.init import initialize

    with pytest.raises(ValueError, match="must be one of"):
        initialize(create_model("seed_cnn2"), "lecun")


def test_xraynet_checks_its_input_range_in_eval_and_on_the_first_training_batch_only() -> None:
    import warnings

    torch.manual_seed(0)
    model = XRayNet(create_model("seed_cnn2", num_classes=3, in_channels=1, image_size=32), 0.5, 0.25, 3)
    raw = torch.full((2, 1, 32, 32), 255.0)  # raw pixel values: the caller forgot to preprocess
    with pytest.warns(UserWarning, match=r"\[0, 1\] is expected"):
        model.train()(raw)  # the first training batch is checked
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(raw)  # later training batches are not: no min/max on every step
    model.eval()
    with torch.no_grad(), pytest.warns(UserWarning, match=r"\[0, 1\] is expected"):
        model(raw)
    with torch.no_grad(), pytest.warns(UserWarning, match=r"\[0, 1\] is expected"):
        model.probabilities_and_features(raw)  # every eval call
