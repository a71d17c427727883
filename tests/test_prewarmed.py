"""The tests' prewarmed runner (prewarmed.py) serves the commands it can run as a fresh interpreter would, and
only those."""

import os

from conftest import _PREWARMED, run_cli
from prewarmed import HERE, read_at_import


def test_the_environment_of_a_test_is_served_after_the_libraries_have_set_their_own_variables():
    import lightning.pytorch  # noqa: F401  (sets variables of its own, as torch and MLflow do)

    env = dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0")
    assert read_at_import(env) == read_at_import(_PREWARMED.env)  # else every command runs fresh, at 8 s of imports each
    assert _PREWARMED.serves(env) and _PREWARMED.serves(dict(env, PYTHONPATH=HERE))
    assert not _PREWARMED.serves(dict(env, ATEN_CPU_CAPABILITY="default"))
    assert not _PREWARMED.serves(dict(env, DENSBENCH_NUMERICS="native"))
    assert not _PREWARMED.serves(dict(env, PYTHONPATH="/elsewhere"))  # a module there could shadow an imported one


def test_a_refused_command_says_the_same_and_exits_the_same_in_a_fork(tmp_path):
    fork = run_cli(["loss=nlll"], cwd=tmp_path)
    fresh = run_cli(["loss=nlll"], cwd=tmp_path, fresh=True)
    assert (fork.returncode, fork.stdout, fork.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert fork.returncode == 1 and "did you mean nll?" in fork.stderr
