"""fastconv._env: the per-call reads of the environment see every change os.environ makes."""
import os

from fastconv import _env


def test_get_follows_os_environ(monkeypatch):
    monkeypatch.delenv("FASTCONV_TEST_KNOB", raising=False)
    assert _env.get("FASTCONV_TEST_KNOB") is None and _env.get("FASTCONV_TEST_KNOB", "d") == "d"
    monkeypatch.setenv("FASTCONV_TEST_KNOB", "é1")
    assert _env.get("FASTCONV_TEST_KNOB") == "é1" == os.environ.get("FASTCONV_TEST_KNOB")
    os.environ["FASTCONV_TEST_KNOB"] = "2"
    assert _env.get("FASTCONV_TEST_KNOB") == "2"
    del os.environ["FASTCONV_TEST_KNOB"]
    assert _env.get("FASTCONV_TEST_KNOB", "gone") == "gone"
