"""helpers.plots: gradient renderings, heatmaps and grids."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import plots  # noqa: E402


def test_gradient_image_maps_zero_to_grey_and_sign_to_brightness():
    g = torch.zeros(3, 8, 8)
    g[:, 0, 0], g[:, 1, 1] = 1.0, -1.0
    img = plots.gradient_image(g, percentile=100)
    assert img.shape == (8, 8, 3)
    assert np.allclose(img[4, 4], 0.5) and np.allclose(img[0, 0], 1.0) and np.allclose(img[1, 1], 0.0)
    assert np.allclose(plots.gradient_image(torch.zeros(1, 3, 4, 4)), 0.5)


def test_a_tensor_is_read_channels_first_also_where_its_shape_allows_both_readings():
    # a 3 x 3 patch [3, 3, 3] (a first-layer deconvnet reconstruction) and a 3-pixel-wide crop [3, 5, 3]
    for shape in ((3, 3, 3), (3, 5, 3), (1, 3, 3, 3)):
        g = torch.zeros(shape)
        g[..., 0, 0, 2] = 1.0                              # red, row 0, column 2
        for render in (plots.gradient_image(g, percentile=100), plots.grayscale(g, percentile=100)):
            lit = np.argwhere(render == render.max())
            assert lit.tolist() == ([[0, 2, 0]] if render.ndim == 3 else [[0, 2]]), (shape, lit.tolist())
    hwc = np.zeros((5, 4, 3))                              # an array ending in 3 is an [H, W, 3] image
    hwc[1, 2, 0] = 1.0
    assert np.argwhere(plots.gradient_image(hwc, percentile=100) == 1.0).tolist() == [[1, 2, 0]]


def test_percentile_clipping_keeps_the_picture_from_washing_out():
    g = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.01
    g[:, 0, 0] = 100.0  # one extreme pixel
    img = plots.gradient_image(g, percentile=99)
    assert img[1:, 1:].std() > 0.1  # the rest still shows contrast


def test_grayscale_and_positive_negative():
    g = torch.zeros(3, 4, 4)
    g[0, 0, 0], g[1, 0, 0] = 2.0, -2.0
    g[2, 3, 3] = -1.0
    gray = plots.grayscale(g, percentile=100)
    assert gray.shape == (4, 4) and gray[0, 0] == 1.0 and gray[3, 3] == 0.25 and gray[1, 1] == 0
    pos, neg = plots.positive_negative(g, percentile=100)
    assert pos[0, 0] == 0 and neg[3, 3] == 1.0 and pos.max() == 0  # channel sum at (0,0) is 0


def test_heatmap_uses_the_opencv_colormap():
    m = np.array([[0.0, 1.0]])
    rgb = plots.heatmap(m, "jet")
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 2, 3)
    assert rgb[0, 0, 2] > 100 and rgb[0, 0, 0] < 50  # jet: low is blue
    assert rgb[0, 1, 0] > 100 and rgb[0, 1, 2] < 50  # high is red


def test_overlay_resizes_and_blends():
    image = np.full((20, 30, 3), 100, np.uint8)
    out = plots.overlay(image, np.zeros((5, 5)), alpha=0.0)
    assert out.shape == (20, 30, 3) and (out == 100).all()
    out = plots.overlay(image, np.ones((5, 5)), alpha=1.0)
    assert (out == plots.heatmap(np.ones((20, 30)))).all()


def test_a_batch_of_maps_or_a_tensor_image_is_refused_with_what_to_do():
    """What cam.grad_cam returns for two images is [2, H, W]: index it first (it was an OpenCV
    type error); a normalised [3, H, W] tensor as the picture points to images.to_image."""
    maps = torch.rand(2, 16, 16)
    image = np.full((16, 16, 3), 100, np.uint8)
    for call in (lambda: plots.heatmap(maps), lambda: plots.overlay(image, maps)):
        with pytest.raises(ValueError, match=r"one map \[H, W\] at a time: got a batch of 2 maps; index it first"):
            call()
    assert plots.overlay(image, maps[:1]).shape == (16, 16, 3)      # [1, H, W] is one map
    with pytest.raises(ValueError, match=r"one RGB picture \[H, W, 3\].*images.to_image"):
        plots.overlay(torch.rand(3, 16, 16), maps[0])
    with pytest.raises(ValueError, match="unknown colormap 'jett'; the names: .*jet"):
        plots.heatmap(maps[0], "jett")


def test_outline_draws_the_mask_border_only():
    img = np.zeros((20, 20, 3), np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    out = plots.outline(img, mask, color=(255, 0, 0))
    assert out[5, 10, 0] == 255 and out[10, 10, 0] == 0 and img.max() == 0


def test_grid_rows_and_titles():
    rows = [[np.zeros((4, 4)), np.ones((4, 4, 3))], [np.zeros((4, 4)), None]]
    fig = plots.grid(rows, titles=["a (1)", "b (2)"], row_titles=["vanilla", "guided"])
    axes = fig.axes
    assert len(axes) == 4
    assert axes[0].get_title() == "a (1)" and axes[0].get_ylabel() == "vanilla"
    assert axes[0].get_xticks().size == 0
    plt.close(fig)
    fig = plots.grid([np.zeros((4, 4))] * 7, ncols=3)
    assert len(fig.axes) == 9
    plt.close(fig)
    # a row whose first cell is empty keeps its title (chapter 03: the overlay row under the image)
    fig = plots.grid([[np.zeros((4, 4)), np.zeros((4, 4))], [None, np.zeros((4, 4))]], row_titles=["map", "overlay"])
    first = fig.axes[2]
    assert first.get_ylabel() == "overlay" and first.axison and first.yaxis.label.get_visible()
    assert not any(s.get_visible() for s in first.spines.values()) and not first.images
    assert not fig.axes[3].get_ylabel()
    plt.close(fig)


def test_signed_map_with_a_diverging_colormap_puts_zero_at_the_middle_colour():
    signed = np.array([[-1.0, 0.0], [5.0, 13.0]])                 # like a CAM: mostly positive
    fig = plots.grid([signed, signed, np.array([[0.0, 0.5], [0.25, 1.0]])], cmap="coolwarm")
    im = fig.axes[0].get_images()[0]
    assert im.get_clim() == (-13.0, 13.0)                          # white is zero, not the middle of [-1, 13]
    plt.close(fig)
    fig = plots.grid([signed], cmap="viridis")                     # a sequential colormap keeps the data range
    assert fig.axes[0].get_images()[0].get_clim() == (-1.0, 13.0)
    plt.close(fig)
    # no negative values: still centred, so that its zeros look like the zeros of a signed panel beside
    # it (a ReLU'd map next to the signed sum), not like the most negative value
    fig = plots.grid([np.array([[0.0, 0.5], [0.25, 2.0]]), np.zeros((2, 2))], cmap="coolwarm")
    assert fig.axes[0].get_images()[0].get_clim() == (-2.0, 2.0)
    assert fig.axes[1].get_images()[0].get_clim() == (-1.0, 1.0)     # all zeros: the middle colour
    plt.close(fig)


def test_grid_takes_one_colormap_per_cell():
    act, grad = np.random.rand(4, 4), np.random.randn(4, 4)
    fig = plots.grid([act, grad], cmap=["viridis", "coolwarm"], colorbar=True)
    a, g = [ax for ax in fig.axes if ax.images]
    assert a.images[0].get_cmap().name == "viridis" and a.images[0].get_clim() == (0, 1)
    assert g.images[0].get_cmap().name == "coolwarm"
    lo, hi = g.images[0].get_clim()
    assert lo == -hi == -np.abs(grad).max()              # the diverging cell is centred on zero
    plt.close(fig)
    fig = plots.grid([[act, act], [act]], cmap=[["gray", None], ["magma"]])
    assert [ax.images[0].get_cmap().name for ax in fig.axes if ax.images] == ["gray", "inferno", "magma"]
    plt.close(fig)
    with pytest.raises(ValueError, match="one per image"):
        plots.grid([[act, act]], cmap=["gray", "gray"])


def test_grid_rows_are_as_tall_as_their_pictures():
    wide, square = np.zeros((64, 128, 3)), np.zeros((64, 64))
    fig = plots.grid([[wide, wide], [wide, wide]], size=2.0)        # two rows of 2:1 pictures
    assert abs(fig.get_size_inches()[1] - (2 * 2.0 * 0.5 + 0.35)) < 1e-6
    plt.close(fig)
    fig = plots.grid([[square, wide]], size=2.0)                    # the most upright picture sets the row
    assert abs(fig.get_size_inches()[1] - (2.0 + 0.35)) < 1e-6
    plt.close(fig)


def test_titles_of_a_lower_row_stay_clear_of_the_row_above():
    """Every row of two-line titles gets its own room: no title overlaps the pictures above it."""
    pictures = [[np.zeros((128, 128, 3))] * 6] * 2
    titles = [[f"{k}% deleted\np = 0.98" for k in range(6)], [f"{k}% inserted\np = 0.07" for k in range(6)]]
    fig = plots.grid(pictures, titles, row_titles=["deletion", "insertion"], size=1.7)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.images]
    for above, below in zip(axes[:6], axes[6:]):
        title_top = below.title.get_window_extent(renderer).y1
        assert title_top < above.get_window_extent(renderer).y0, "a title runs into the picture above it"
    plt.close(fig)
