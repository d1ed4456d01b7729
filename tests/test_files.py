import os

import pytest

from heartmula.files import atomic_output


def test_result_appears_only_on_success_with_normal_permissions(tmp_path):
    target = tmp_path / "out" / "result.txt"
    with atomic_output(target) as tmp:
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failure_leaves_nothing(tmp_path):
    target = tmp_path / "result.txt"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
