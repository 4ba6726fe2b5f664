"""Errors the learners raise besides ``ValueError`` and ``TypeError``."""

from __future__ import annotations


class NotFittedError(ValueError, AttributeError):
    """An estimator or agent was used before ``fit``.

    A ``ValueError`` and an ``AttributeError`` (as scikit-learn's ``NotFittedError``), so
    ``hasattr(estimator, "theta_hat")`` is ``False`` before fitting.
    """


def not_fitted(owner: object, attribute: str) -> NotFittedError:
    """The error for reading ``attribute`` of an unfitted ``owner``."""
    return NotFittedError(f"this {type(owner).__name__} is not fitted yet: call fit(dataset, mdp) before using "
                          f"{attribute}")
