import mrl


def test_public_api_resolves():
    missing = [name for name in mrl.__all__ if not hasattr(mrl, name)]
    assert missing == []
