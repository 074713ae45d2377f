"""eecs598.vis: tensor_to_image round trip and the dataset grid's shape."""
import numpy as np
import torch

from eecs598.utils import reset_seed
from eecs598.vis import tensor_to_image, visualize_dataset


def test_tensor_to_image_round_trip():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (5, 7, 3), generator=g, dtype=torch.uint8)
    tensor = img.permute(2, 0, 1).float() / 255  # (3, H, W) in [0, 1]
    before = tensor.clone()
    out = tensor_to_image(tensor)
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, img.numpy())
    assert torch.equal(tensor, before), "input must not be modified"


def test_tensor_to_image_clamps_and_detaches():
    t = torch.tensor([-0.5, 0.0, 0.5, 1.0, 2.0]).view(1, 1, 5).expand(3, 1, 5).clone().requires_grad_()
    out = tensor_to_image(t)
    assert out.shape == (1, 5, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 128, 255, 255])
    assert out.min() >= 0 and out.max() <= 255


def test_visualize_dataset_shape_and_content():
    reset_seed(0)
    H = W = 32  # the label needs room: 2 cells of 32 px
    num_classes, per_class, spc = 3, 4, 5
    X = torch.cat([torch.full((per_class, 3, H, W), (k + 1) / 4) for k in range(num_classes)])
    y = torch.arange(num_classes).repeat_interleave(per_class)
    grid = visualize_dataset(X, y, spc, ["cat", "dog", "ship"])
    assert isinstance(grid, np.ndarray) and grid.dtype == np.uint8 and grid.ndim == 3
    assert grid.shape[0] == num_classes * H and grid.shape[2] == 3
    assert grid.shape[1] % W == 0 and grid.shape[1] >= spc * W
    for k in range(num_classes):  # each row ends with spc images of its own class (label on the left)
        row = grid[k * H:(k + 1) * H, -spc * W:]
        value = round(255 * (k + 1) / 4)
        assert (row == value).all()


def test_course_top_level_names():
    """The course's notebooks call eecs598.tensor_to_image and eecs598.visualize_dataset."""
    import eecs598
    assert eecs598.tensor_to_image is tensor_to_image and eecs598.visualize_dataset is visualize_dataset
    # the course's A4-A6 notebooks import them from eecs598.utils
    assert eecs598.utils.tensor_to_image is tensor_to_image
    assert eecs598.utils.visualize_dataset is visualize_dataset


def test_decode_captions_in_utils_drops_start_and_end():
    """The project's variant: the course's decode_captions keeps <START> and <END> ("<START> a dog
    <END>"); this one gives the words only (stopping at <END>), as BLEU and the plots want."""
    from eecs598.utils import decode_captions

    idx_to_word = ["<NULL>", "<START>", "<END>", "a", "dog"]
    captions = torch.tensor([[1, 3, 4, 2, 3, 0], [1, 4, 0, 0, 0, 0]])
    assert decode_captions(captions, idx_to_word) == ["a dog", "dog"]
    assert decode_captions(captions[0], dict(enumerate(idx_to_word))) == "a dog"


def test_detection_visualizer_draws_gt_red_predictions_green_and_points():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from eecs598.vis import detection_visualizer

    img = torch.rand(3, 40, 50)
    gt = torch.tensor([[1.0, 2.0, 20.0, 30.0, 0.0], [5.0, 5.0, 10.0, 10.0, 1.0]])
    pred = torch.tensor([[2.0, 3.0, 21.0, 29.0, 1.0, 0.875]])
    ax = detection_visualizer(img, {0: "cat", 1: "dog"}, gt, pred, points=torch.tensor([[3.0, 4.0]]))
    edges = [tuple(p.get_edgecolor()[:3]) for p in ax.patches]
    assert edges == [(1.0, 0.0, 0.0)] * 2 + [(0.0, 1.0, 0.0)]
    assert ax.patches[0].get_xy() == (1.0, 2.0) and ax.patches[0].get_width() == 19.0
    assert [t.get_text() for t in ax.texts] == ["cat", "dog", "dog 0.88"]
    assert len(ax.collections) == 1  # the points
    shown = ax.images[0].get_array()
    for same in (img.mul(255).round().to(torch.uint8), tensor_to_image(img)):  # CHW uint8, HWC array
        ax2 = detection_visualizer(same, {0: "cat"})
        np.testing.assert_array_equal(ax2.images[0].get_array(), shown)
    plt.close("all")


def test_attention_visualizer_blends_the_resized_map_under_a_banner():
    from eecs598.vis import attention_visualizer

    img = torch.full((3, 8, 60), 200, dtype=torch.uint8)
    attn = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # top-left quarter attended
    out = attention_visualizer(img, attn, "dog")
    assert out.shape == (8 + 25, 60, 3) and out.dtype == np.float32
    body = out[25:]
    np.testing.assert_allclose(body[0, 0], 0.5 * 200 / 255 + 0.5, rtol=1e-6)
    np.testing.assert_allclose(body[7, 59], 0.5 * 200 / 255, rtol=1e-6)
    assert out[:25].max() > 0  # the token is written on the banner


def test_pr_curves_plot_recall_across_and_precision_up():
    """Two detections, one right: recall 0.5 at precisions 1 then 0.5."""
    import matplotlib
    matplotlib.use("Agg")
    from eecs598 import detection_eval, vis
    gts = [{"boxes": torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float), "classes": torch.tensor([0, 0])}]
    preds = [{"boxes": torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float),
              "classes": torch.tensor([0, 0]), "scores": torch.tensor([0.9, 0.8])}]
    result = detection_eval.evaluate_detections(preds, gts, 1)
    assert result["ap_per_class"][0] == 0.5
    ax = vis.plot_pr_curves(result)
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [0.5, 0.5])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [1.0, 0.5])


def test_attention_map_is_laid_over_the_image_unrotated():
    """An attention map whose top-right cell holds all the weight lights the image's top right."""
    from eecs598.vis import attention_visualizer
    image = torch.zeros(3, 8, 60, dtype=torch.uint8)
    out = attention_visualizer(image, torch.tensor([[0.0, 1.0], [0.0, 0.0]]), "dog")[25:]
    assert out[0, 59, 0] == 0.5 and out[0, 0, 0] == 0 and out[7, 59, 0] == 0
