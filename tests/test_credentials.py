"""One redaction for every file, log and report: the whole user-info part goes."""

import pytest

from ablationlab.credentials import redact


@pytest.mark.parametrize(
    "text, expected",
    [
        ("https://alice:s3cret@mlflow.example.org:5000/x", "https://***@mlflow.example.org:5000/x"),
        ("https://ghp_t0ken@mlflow.example.org/", "https://***@mlflow.example.org/"),  # a token as the user name
        ("POST https://u:p@ss@h/api failed", "POST https://***@h/api failed"),
        ("postgresql://u:pw@db/m?password=zz&x=1", "postgresql://***@db/m?password=***&x=1"),
        ("https://h/?api_token=tok123&x=1", "https://h/?api_token=***&x=1"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:///results/mlflow.db", "sqlite:///results/mlflow.db"),
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected
