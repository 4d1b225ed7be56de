import numpy as np
import pytest

from dlt.stats import cumulant, jackknife, mean_se, neuron_moments


def test_mean_se_matches_formula():
    x = np.random.default_rng(0).normal(size=(1000, 3))
    m, se = mean_se(x)
    assert np.allclose(m, x.mean(0)) and np.allclose(se, x.std(0, ddof=1) / np.sqrt(1000))
    m1, se1 = mean_se(x.T, axis=1)
    assert np.allclose(m1, m) and np.allclose(se1, se)


def test_jackknife_of_mean_equals_standard_error():
    # For a linear statistic with equal batches the jackknife reproduces the batch-means SE.
    x = np.random.default_rng(1).normal(size=2000)
    v, se = jackknife(np.mean, x, n_batches=50)
    b = x.reshape(50, 40).mean(1)
    assert np.isclose(v, x.mean()) and np.isclose(se, b.std(ddof=1) / np.sqrt(50))


def test_cumulants_of_known_distributions():
    rng = np.random.default_rng(2)
    S = 400_000
    # exponential(1): cumulants kappa_r = (r-1)!, mean 1 (tests the non-zero-mean Moebius formula)
    x = rng.exponential(size=S)
    for idx, exact in [((0, 0), 1.0), ((0, 0, 0), 2.0), ((0, 0, 0, 0), 6.0)]:
        v, se = cumulant(x, idx)
        assert abs(v - exact) < 4 * se, (idx, v, exact, se)
    # Gaussian pair: connected four-point function vanishes, covariance recovered
    K = np.array([[1.0, 0.6], [0.6, 2.0]])
    z = rng.multivariate_normal([0.0, 0.0], K, size=S)
    v, se = cumulant(z, (0, 1, 0, 1))
    assert abs(v) < 4 * se
    v, se = cumulant(z, (0, 1))
    assert abs(v - 0.6) < 4 * se


def test_neuron_moments_unbiased_for_gaussian():
    rng = np.random.default_rng(3)
    z = rng.normal(scale=np.sqrt(2.0), size=(200_000, 5))
    est = neuron_moments(z)
    for key, exact in [("G2", 2.0), ("G4", 4.0), ("G6", 8.0)]:
        m, se = mean_se(est[key])
        assert abs(m - exact) < 4 * se, (key, m, exact, se)


def test_bad_input():
    with pytest.raises(ValueError):
        mean_se(np.ones(1))
    with pytest.raises(ValueError):
        jackknife(np.mean, np.ones(10), n_batches=20)
    with pytest.raises(ValueError):
        jackknife(lambda a, b: 0.0, np.ones(10), np.ones(11), n_batches=2)
    with pytest.raises(ValueError):
        cumulant(np.ones((10, 2)), (0, 2))
    with pytest.raises(ValueError):
        neuron_moments(np.ones((10, 1)))


def test_cumulant_list_matches_single_and_direct_jackknife():
    from dlt.gaussian import connected_from_moments
    z = np.random.default_rng(4).normal(size=(5000, 2)) + [0.3, -0.1]
    idx_list = [(0, 0), (0, 1, 1), (0, 0, 1, 1)]
    vals, ses = cumulant(z, idx_list, n_batches=25)
    for ix, v, s in zip(idx_list, vals, ses):
        assert (v, s) == pytest.approx(cumulant(z, ix, n_batches=25), rel=1e-12)
        direct = jackknife(lambda a: connected_from_moments(
            lambda b: np.mean(np.prod(a[:, list(b)], axis=1)), ix), z, n_batches=25)
        assert np.allclose((v, s), direct, rtol=1e-9)
