import pytest
import torch

from captcha.cli import main
from captcha.constants import INPUT_SIZE, READ_SIZE
from captcha.models import count_parameters, create_model, default_input_size, list_models, supports_head


def _count(name, classes, channels, length=4, head="fixed"):
    return count_parameters(create_model(name, num_classes=classes, length=length, in_channels=channels, head=head))


def test_reports_parameter_counts_exactly():
    assert _count("resnet18_mod", 19, 3) == 95_164
    assert _count("resnet18", 19, 1) == 11_209_228


def test_course_baselines_land_near_their_reported_sizes():
    assert abs(_count("baseline", 19, 3) - 4_845_196) / 4_845_196 < 0.02
    assert abs(_count("simplecnn", 19, 3) - 12_674_508) / 12_674_508 < 0.02


@pytest.mark.parametrize("head", ["fixed", "attention", "ctc"])
def test_resnet18_mod_stays_under_the_budget_up_to_62_symbols(head):
    for classes in (10, 19, 36, 62):
        assert _count("resnet18_mod", classes, 3, head=head) <= 1_000_000
    assert _count("resnet18_mod", 62, 3, head=head) <= 100_000 or head == "fixed"


@pytest.mark.parametrize("head", ["fixed", "attention", "ctc"])
@pytest.mark.parametrize("channels", [1, 3])
def test_sepnet_stays_under_100k_parameters_up_to_62_symbols(head, channels):
    assert _count("sepnet", 62, channels, head=head) <= 100_000


def test_sepnet_keeps_columns_for_the_position_aware_heads():
    body = create_model("sepnet", num_classes=36, in_channels=1, head="attention").backbone
    features = body(torch.zeros(1, 1, 50, 130))
    assert features.shape[1] == body.out_features and features.shape[3] >= 30  # 33 columns for 4 characters


def test_sepnet_runs_its_height_halving_depthwise_convolutions_in_float32_under_cpu_autocast():
    from captcha.models.sepnet import CPUFloat32Conv2d

    model = create_model("sepnet", num_classes=36, in_channels=1, head="attention")
    chosen = [m for m in model.modules() if isinstance(m, CPUFloat32Conv2d)]
    assert [m.stride for m in chosen] == [(2, 1), (2, 1)] and all(m.groups == m.in_channels for m in chosen)
    conv = chosen[0]
    x = torch.randn(2, conv.in_channels, 12, 20)
    plain = torch.nn.functional.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    assert torch.equal(conv(x), plain)  # outside autocast: the plain convolution
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x.bfloat16())
    assert out.dtype == torch.bfloat16  # the caller's dtype comes back
    expected = torch.nn.functional.conv2d(x.bfloat16().float(), conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    torch.testing.assert_close(out.float(), expected.bfloat16().float())  # computed in float32, then rounded once
    out.float().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("name", list_models("recognition"))
@pytest.mark.parametrize("head", ["fixed", "attention"])
def test_every_model_gives_one_logit_row_per_character(name, head):
    if not supports_head(name, head):
        assert name in ("baseline", "simplecnn")  # the dense models; every other recognizer has columns
        with pytest.raises(ValueError, match="supports only --head fixed"):
            create_model(name, num_classes=7, length=5, in_channels=1, head=head)
        return
    model = create_model(name, num_classes=7, length=5, in_channels=1, head=head)
    assert model(torch.zeros(2, 1, 50, 130)).shape == (2, 5, 7)


def test_ctc_head_gives_enough_columns_for_long_labels():
    model = create_model("resnet18_mod", num_classes=10, in_channels=1, head="ctc")
    logits = model(torch.zeros(1, 1, 50, 130))
    assert logits.shape[-1] == 11 and logits.shape[1] >= 2 * 8 - 1


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope", num_classes=3)


def test_models_command_prints_counts(capsys):
    assert main(["models", "--classes", "19", "--channels", "3"]) == 0
    out = capsys.readouterr().out
    assert "resnet18_mod" in out and "95,164" in out
    assert main(["models", "--classes", "19", "--channels", "1"]) == 0
    assert "11,209,228" in capsys.readouterr().out


def test_each_model_declares_the_size_it_reads_and_training_follows_it():
    from dataclasses import replace

    from captcha.train_config import TrainConfig

    assert default_input_size("sepnet") == READ_SIZE  # about twice the course size: thin strokes survive the stem
    assert default_input_size("resnet18_mod") == default_input_size("baseline") == INPUT_SIZE  # the course's size
    config = TrainConfig()
    assert config.input_size is None and config.read_size == READ_SIZE
    assert replace(config, model="resnet18_mod").read_size == INPUT_SIZE  # a sweep row reads at its own model's size
    assert TrainConfig(model="resnet18_mod", input_size=[60, 150]).read_size == (60, 150)  # --input-size wins
