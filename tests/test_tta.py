"""Test-time augmentation: shifted views, their average, and where the model reads them."""

import pytest
import torch

from captcha.checkpoint import build_model, load_model
from captcha.models import create_model
from captcha.train import TrainConfig
from captcha.tta import TTA_VIEWS, average_readings, read_views, shifted_views, views_for


def test_each_view_is_the_image_moved_by_its_shift_with_edges_repeated():
    x = torch.arange(4 * 6, dtype=torch.float32).reshape(1, 1, 4, 6)
    right, down = shifted_views(x, ((1, 0), (0, 1)))
    assert torch.equal(right[0, :, 1:], x[0, 0, :, :-1]) and torch.equal(right[0, :, 0], x[0, 0, :, 0])
    assert torch.equal(down[0, 1:], x[0, 0, :-1]) and torch.equal(down[0, 0], x[0, 0, 0])
    assert torch.equal(shifted_views(x, TTA_VIEWS[1]), x)


def test_readings_average_probabilities_per_image():
    a = torch.tensor([[[4.0, 0.0]], [[0.0, 0.0]]])  # two images, one character, two classes
    b = torch.tensor([[[0.0, 4.0]], [[0.0, 2.0]]])
    out = average_readings(torch.cat([a, b]), views=2)  # view-major: all images of view 1, then view 2
    want = (a.softmax(-1) + b.softmax(-1)) / 2
    assert torch.allclose(out.exp(), want, atol=1e-6)
    assert torch.isfinite(average_readings(torch.tensor([[[1e4, -1e4]]]), views=1)).all()  # floored, never -inf


def test_a_recognizer_reads_views_in_eval_mode_only():
    torch.manual_seed(0)
    model = create_model("sepnet", num_classes=5, length=3, in_channels=1, head="attention")
    x = torch.randn(2, 1, 50, 130)
    model.test_shifts = views_for(5)
    model.train()
    assert torch.allclose(model(x), model.head(model.backbone(x)))  # training reads each image once, as it is
    model.eval()
    with torch.no_grad():
        tta = model(x)
        views = shifted_views(x, views_for(5))
        model.test_shifts = ()
        each = model(views).softmax(-1).reshape(5, 2, 3, 5).mean(0)
    assert tta.shape == (2, 3, 5)
    assert torch.allclose(tta.exp(), each, atol=1e-5)


def test_the_checkpoint_says_how_many_views_a_model_reads(trained_run):
    model, meta = load_model(trained_run)
    assert meta["tta"] == TrainConfig().tta == 5 and model.test_shifts == views_for(5)
    assert build_model({**meta, "tta": 1}).test_shifts == ()
    older = {k: v for k, v in meta.items() if k != "tta"}  # checkpoints written before the field: one view
    assert build_model(older).test_shifts == ()


def test_an_unsupported_view_count_is_refused():
    with pytest.raises(ValueError, match="--tta"):
        TrainConfig(tta=3)
    model = create_model("sepnet", num_classes=5, length=2)
    for count in (0, 3):
        with pytest.raises(ValueError, match="--tta"):
            read_views(model, count)
    assert model.test_shifts == ()


def test_reading_passes_share_their_images_among_the_views_and_batch_size_changes_nothing():
    from captcha.runtime import EVAL_IMAGES_PER_PASS, eval_batch, predict_logits

    torch.manual_seed(0)
    model = create_model("sepnet", num_classes=5, length=3, in_channels=1, head="attention").eval()
    model.to(memory_format=torch.channels_last)  # as fit trains and saves it
    cpu = torch.device("cpu")
    read_views(model, 1)
    assert eval_batch(model, cpu) == EVAL_IMAGES_PER_PASS["cpu"]
    read_views(model, 5)
    assert eval_batch(model, cpu) == EVAL_IMAGES_PER_PASS["cpu"] // 5
    assert eval_batch(model, torch.device("cuda")) == EVAL_IMAGES_PER_PASS["cuda"] // 5
    assert eval_batch(torch.nn.Linear(2, 2), cpu) == EVAL_IMAGES_PER_PASS["cpu"]  # a model without views
    images = torch.randint(0, 256, (13, 1, 50, 130), dtype=torch.uint8)
    default = predict_logits(model, images)
    for batch in (1, 4, 512):
        assert torch.allclose(predict_logits(model, images, batch), default, atol=1e-5)
    with pytest.raises(ValueError, match="eval_batch_size"):
        TrainConfig(eval_batch_size=0)
