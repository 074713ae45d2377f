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
