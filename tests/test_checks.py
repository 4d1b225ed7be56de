import numpy as np
import pytest

from dlt.checks import check, summary


def test_pass_and_row(capsys):
    summary()
    assert check("a", 1.0, 1.0 + 1e-13, rtol=1e-12)
    assert check("b", 1.1, 1.0, stderr=0.05)  # 2 se
    out = capsys.readouterr().out
    assert "PASS" in out and "2.00 se" in out
    res = summary()
    assert [r.name for r in res] == ["a", "b"] and all(r.passed for r in res)
    assert summary() == []


def test_fail_raises_with_numbers():
    with pytest.raises(AssertionError, match="measured 1.5"):
        check("c", 1.5, 1.0, stderr=0.1)
    with pytest.raises(AssertionError):
        check("d", np.array([1.0, 2.0]), np.array([1.0, 2.1]), rtol=1e-3)
    summary()


def test_arrays_and_combined_tolerance():
    assert check("e", np.ones(3), np.ones(3) * 1.01, stderr=0.001, rtol=0.02)
    summary()


@pytest.mark.parametrize("kw", [{}, {"stderr": 0.0}, {"stderr": -1.0}, {"rtol": -1.0}])
def test_bad_tolerance(kw):
    with pytest.raises(ValueError):
        check("f", 1.0, 1.0, **kw)


def test_nonfinite():
    with pytest.raises(ValueError, match="not finite"):
        check("g", np.nan, 1.0, rtol=1.0)


def test_per_element_tolerance():
    assert check("h", [1.0, 2.0], [1.05, 2.0], atol=[0.1, 1e-12])
    with pytest.raises(AssertionError):
        check("i", [1.0, 2.0], [1.0, 2.05], atol=[0.1, 1e-12])
    summary()
