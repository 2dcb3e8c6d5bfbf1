"""training.losses against a plain PyTorch version of the release's loss, plus hand-made cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psta_jax.training import losses


# --- A straightforward PyTorch reference (the release's CrossEntropyLabelSmooth and batch-hard
# --- TripletLoss with MarginRankingLoss), written for this test. torch is optional (the
# --- `torch` extra): the tests that compare with it import it through pytest.importorskip.
def torch_ce_label_smooth(logits, labels, num_classes, epsilon=0.1):
    import torch
    from torch.nn import functional as F

    log_probs = F.log_softmax(logits, dim=1)
    onehot = torch.zeros_like(log_probs).scatter_(1, labels.unsqueeze(1), 1.0)
    targets = (1 - epsilon) * onehot + epsilon / num_classes
    return (-targets * log_probs).mean(0).sum()


def torch_distance(x, distance):
    from torch.nn import functional as F

    if distance == "cosine":
        x = F.normalize(x, dim=1)
        return -(x @ x.t())
    sq = (x * x).sum(1, keepdim=True)
    dist = sq + sq.t() - 2 * (x @ x.t())
    return dist.clamp(min=1e-12).sqrt()


def torch_triplet(features, labels, margin=0.3, distance="cosine"):
    import torch

    dist = torch_distance(features, distance)
    n = len(labels)
    d_ap, d_an = [], []
    for i in range(n):
        same = labels == labels[i]
        d_ap.append(dist[i][same].max())
        d_an.append(dist[i][~same].min())
    d_ap, d_an = torch.stack(d_ap), torch.stack(d_an)
    ranking = torch.nn.MarginRankingLoss(margin=margin)
    return ranking(d_an, d_ap, torch.ones_like(d_an))


def _random_batch(seed, batch=8, dim=6, num_classes=5, heads=3):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(batch // 2), 2) % num_classes
    logits = [rng.normal(size=(batch, num_classes)).astype(np.float32) for _ in range(heads)]
    features = [rng.normal(size=(batch, dim)).astype(np.float32) for _ in range(heads)]
    return logits, features, labels.astype(np.int32)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_psta_loss_matches_torch_reference(distance):
    torch = pytest.importorskip("torch")
    logits, features, labels = _random_batch(0)
    total, parts = losses.psta_loss(
        tuple(map(jnp.asarray, logits)),
        tuple(map(jnp.asarray, features)),
        jnp.asarray(labels),
        num_classes=5,
        distance=distance,
    )
    t_labels = torch.as_tensor(labels, dtype=torch.long)
    ce = sum(torch_ce_label_smooth(torch.as_tensor(x), t_labels, 5) for x in logits) / 3
    tri = sum(torch_triplet(torch.as_tensor(f), t_labels, distance=distance) for f in features) / 3
    np.testing.assert_allclose(parts["ce"], ce.item(), rtol=1e-6)
    np.testing.assert_allclose(parts["triplet"], tri.item(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total, (ce + tri).item(), rtol=1e-5)
    assert parts["triplet"] > 0  # random features: the margin is violated somewhere


def test_cross_entropy_label_smooth_closed_form():
    # Uniform logits: CE is log(C) whatever the smoothing.
    ce = losses.cross_entropy_label_smooth(jnp.zeros((3, 4)), jnp.array([0, 1, 3]), num_classes=4)
    np.testing.assert_allclose(ce, np.log(4.0), rtol=1e-6)
    # One confident logit: -(1 - eps + eps/C) log p_y - (eps/C) sum_{j != y} log p_j.
    logits = jnp.array([[2.0, 0.0]])
    p = np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum()
    expected = -(0.95 * np.log(p[0]) + 0.05 * np.log(p[1]))
    ce = losses.cross_entropy_label_smooth(logits, jnp.array([0]), num_classes=2, epsilon=0.1)
    np.testing.assert_allclose(ce, expected, rtol=1e-6)


def test_batch_hard_triplet_obvious_hardest_negative():
    # 1-D points: ids 0 at {0, 1}, id 1 at {1.2, 5}. Euclidean distances are |x - y|.
    features = jnp.array([[0.0], [1.0], [1.2], [5.0]])
    labels = jnp.array([0, 0, 1, 1])
    # anchor 0: ap 1, an 1.2; anchor 1: ap 1, an 0.2; anchor 2: ap 3.8, an 0.2;
    # anchor 3: ap 3.8, an 4.
    expected = np.mean([max(0, 1 - 1.2 + 0.3), 1 - 0.2 + 0.3, 3.8 - 0.2 + 0.3, 3.8 - 4 + 0.3])
    loss = losses.batch_hard_triplet(features, labels, margin=0.3, distance="euclidean")
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_batch_hard_triplet_zero_when_well_separated_and_cosine_range():
    features = jnp.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    labels = jnp.array([7, 7, 3, 3])
    # cosine: d_ap = -1 (identical directions), d_an = 0 (orthogonal): max(0, -1 - 0 + 0.3) = 0.
    assert losses.batch_hard_triplet(features, labels, distance="cosine") == 0.0
    np.testing.assert_allclose(
        losses.batch_hard_triplet(features, labels, margin=1.5, distance="cosine"), 0.5, rtol=1e-6
    )


def test_single_identity_batch_has_zero_triplet():
    loss = losses.batch_hard_triplet(jnp.ones((4, 3)), jnp.zeros(4, jnp.int32))
    assert np.isfinite(loss) and loss == 0.0


def test_euclidean_gradient_finite_with_duplicate_features():
    features = jnp.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [0.0, 1.0]])
    labels = jnp.array([0, 0, 1, 1])

    def loss_fn(x):
        return losses.batch_hard_triplet(x, labels, distance="euclidean")

    grad = jax.jit(jax.grad(loss_fn))(features)
    assert np.all(np.isfinite(grad))
    assert np.any(grad != 0)


def test_loss_is_float32_for_bfloat16_inputs_and_jits():
    logits, features, labels = _random_batch(1, heads=1)
    fn = jax.jit(lambda lg, ft, lb: losses.psta_loss(lg, ft, lb, num_classes=5))
    total32, _ = fn(jnp.asarray(logits[0]), jnp.asarray(features[0]), jnp.asarray(labels))
    total16, parts = fn(
        jnp.asarray(logits[0], jnp.bfloat16),
        jnp.asarray(features[0], jnp.bfloat16),
        jnp.asarray(labels),
    )
    assert total16.dtype == jnp.float32 and parts["ce"].dtype == jnp.float32
    np.testing.assert_allclose(total16, total32, rtol=2e-2)


def test_bad_inputs_raise():
    logits, features, labels = _random_batch(2, heads=1)
    with pytest.raises(ValueError, match="distance must be one of"):
        losses.psta_loss(logits[0], features[0], labels, num_classes=5, distance="manhattan")
    with pytest.raises(ValueError, match="expected 5 classes"):
        losses.psta_loss(logits[0][:, :4], features[0], labels, num_classes=5)
    with pytest.raises(ValueError, match="features: expected shape"):
        losses.psta_loss(logits[0], features[0][:5], labels, num_classes=5)
    with pytest.raises(ValueError, match="logits: expected shape"):
        losses.psta_loss(logits[0][:5], features[0], labels, num_classes=5)
    with pytest.raises(ValueError, match="one feature array per logits array"):
        losses.psta_loss((logits[0], logits[0]), (features[0],), labels, num_classes=5)
    with pytest.raises(ValueError, match="labels: expected shape"):
        losses.psta_loss(logits[0], features[0], labels[:, None], num_classes=5)
