"""The UI builds on the webui hosts' gradio versions (slow: a venv per version; CE_GRADIO_MATRIX=0 skips it)."""
import os

import pytest

from gradio_matrix import HOST_VERSIONS, build_under


@pytest.mark.skipif(os.environ.get("CE_GRADIO_MATRIX") == "0", reason="CE_GRADIO_MATRIX=0 was set (it installs "
                    "gradio 3.41.2 and 4.40.0 into temporary venvs)")
@pytest.mark.parametrize("version", HOST_VERSIONS)
def test_builds_on_host_gradio(version):
    ok, seconds, output = build_under(version)
    assert ok, output
