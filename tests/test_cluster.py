"""Sampling on Ray workers (canopy.cluster): the same store as one process, bit for bit;
a killed worker loses and duplicates nothing; bad input fails fast with one line.

Needs the optional ``ray`` package (canopy[ray]): skipped with a visible reason when it is
missing, a failure under CI=true. One local Ray instance (2 CPUs) serves the module.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

import canopy.cluster as cluster
from canopy.models import resolve_spec
from canopy.prompts import Prompt
from canopy.sampling import Runtime, SamplingConfig, plan_batches
from canopy.run import sample_to_store
from canopy.store import load_rollouts
from sampling_tiny import tiny_model, tiny_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "a b c d e f g h i j k l m".split()
PROMPTS = [Prompt("t" if i % 3 else "u", f"p{i}", " ".join(WORDS[i % 13: i % 13 + 1 + i % 4]))
           for i in range(12)]
# 2 rollouts, batches of 4 rows: two prompts share each batch (units of 2 prompts)
CFG = SamplingConfig(rollouts=2, max_new_tokens=12, top_k=10, seed=5, batch_size=4)
# one CPU thread, as each of the 2 Ray workers on 2 CPUs (threads are in the config hash)
CPU1 = Runtime(device="cpu", threads=1)
ON_RAY = dict(runtime=CPU1, ray=True, workers=2)


def _ray_or_skip():
    try:
        import ray
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("ray is not installed under CI: install canopy[ray] (make env)")
        pytest.skip("ray not installed: pip install 'canopy[ray]' to run the Ray tests")
    return ray


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance of 2 CPUs for the module (sample_on_ray reuses it)."""
    ray = _ray_or_skip()
    import logging
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, object_store_memory=128 * 2 ** 20,
             namespace="canopy-test")
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CANOPY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny-chat"
    tiny_model("llama", scale=8.0, eos=[1, 15]).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def spec(model_dir):
    return resolve_spec(str(model_dir), variant="fine-tuned")


def canonical(table: pd.DataFrame) -> pd.DataFrame:
    table = table.sort_values(["model", "task", "prompt_id", "rollout_id"])
    table = table.reset_index(drop=True)
    return table.apply(lambda col: col.map(
        lambda v: v.tolist() if hasattr(v, "tolist") and not isinstance(v, (int, float)) else v))


@pytest.fixture(scope="module")
def single(model_dir, tmp_path_factory):
    """The single-process run (1 thread, as each of the 2 Ray workers on 2 CPUs)."""
    out = tmp_path_factory.mktemp("single")
    table = sample_to_store(spec(model_dir), PROMPTS, CFG, out, runtime=CPU1, progress=False)
    return out, table


def _config_dirs(out):
    return sorted(p.parent.relative_to(out) for p in out.rglob("manifest.json"))


# ------------------------------------------------------------------------- no Ray needed


@pytest.mark.parametrize("n,m,b", [(12, 2, 4), (12, 3, 4), (7, 3, 16), (5, 8, 16), (9, 16, 4),
                                   (10, 5, 5), (4, 100, 16), (1, 1, 1), (13, 6, 4)])
def test_units_replay_the_single_process_batches(n, m, b):
    units = cluster.shard_units(n, m, b)
    assert [i for u in units for i in u] == list(range(n))  # a partition, in order
    whole = plan_batches(n, m, b)
    replayed = [[(u.start + p, a, z) for p, a, z in batch]
                for u in units for batch in plan_batches(len(u), m, b)]
    assert replayed == whole
    if b % m == 0 or m % b == 0:
        assert max(len(u) for u in units) == max(1, b // m)


class _FakeRay:
    def __init__(self, **resources):
        self.resources = resources

    def cluster_resources(self):
        return self.resources


class _Runtime:  # the fields of canopy.settings.Runtime that placement reads
    def __init__(self, device="auto", threads=None):
        self.device, self.threads = device, threads


def test_worker_placement_fits_the_cluster():
    plan = cluster._plan_workers
    assert plan(_FakeRay(CPU=8.0, GPU=2.0), None, None) == (2, {"CPU": 1, "GPU": 1}, None)
    assert plan(_FakeRay(CPU=8.0, GPU=2.0), _Runtime("cpu"), None) == (2, {"CPU": 4}, 4)
    assert plan(_FakeRay(CPU=8.0), None, 2) == (2, {"CPU": 4}, 4)  # cores // workers
    assert plan(_FakeRay(CPU=8.0), _Runtime(threads=1), None) == (8, {"CPU": 1}, 1)
    assert plan(_FakeRay(CPU=2.0), None, None) == (1, {"CPU": 2}, 2)
    with pytest.raises(ValueError, match="3 GPU worker.* has 2 GPU"):
        plan(_FakeRay(CPU=8.0, GPU=2.0), _Runtime("cuda"), 3)
    with pytest.raises(ValueError, match="has 0 GPU"):
        plan(_FakeRay(CPU=8.0), _Runtime("cuda:1"), None)
    with pytest.raises(ValueError, match="3 CPU worker.*need 6 CPUs.* has 4"):
        plan(_FakeRay(CPU=4.0), _Runtime(threads=2), 3)


def test_workers_and_ray_arguments_are_one_line_errors(model_dir, tmp_path):
    for kwargs, message in [(dict(ray=True, workers=0), "workers must be an integer ≥ 1"),
                            (dict(ray=True, workers=1.5), "workers must be an integer"),
                            (dict(workers=2), "needs ray"),
                            (dict(ray=3), "ray must be True")]:
        with pytest.raises(ValueError, match=message) as info:
            sample_to_store(spec(model_dir), PROMPTS, CFG, tmp_path, progress=False, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="needs a store directory"):
        sample_to_store(spec(model_dir), PROMPTS, CFG, None, ray=True)


def test_cli_workers_zero_is_a_clear_error(model_dir, tmp_path, capsys):
    from canopy.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a b"}\n')
    with pytest.raises(SystemExit) as info:
        main(["sample", "--models", str(model_dir), "--prompts", str(prompts), "--out",
              str(tmp_path / "r"), "--ray", "--workers", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "workers must be an integer ≥ 1" in err and "\n" not in err


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.path.join(REPO, "tests")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)


def test_without_ray_nothing_imports_ray(model_dir, tmp_path):
    code = (f"import sys\nfrom canopy.cli import main\n"
            f"open({str(tmp_path / 'p.jsonl')!r}, 'w').write('{{\"prompt\": \"a b\"}}\\n')\n"
            f"main(['sample', '--models', {str(model_dir)!r}, '--prompts', "
            f"{str(tmp_path / 'p.jsonl')!r}, '--rollouts', '2', '--max-new-tokens', '3', "
            f"'--out', {str(tmp_path / 'r')!r}])\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\nprint('no ray')\n")
    done = _run_python(code)
    assert done.returncode == 0 and "no ray" in done.stdout, done.stderr[-2000:]


def test_missing_ray_package_is_a_one_line_error(model_dir, tmp_path):
    code = ("import sys\nsys.modules['ray'] = None  # as if not installed\n"
            "from canopy.run import sample_to_store\n"
            "try:\n"
            f"    sample_to_store({str(model_dir)!r}, ['a b'], "
            "__import__('canopy.sampling').sampling.SamplingConfig(rollouts=1), "
            f"{str(tmp_path)!r}, ray=True)\n"
            "except ValueError as exc:\n    print('ERROR', exc)\n")
    done = _run_python(code)
    assert "ERROR --ray needs the Ray package: install canopy[ray]" in done.stdout, done.stderr


# ---------------------------------------------------------------------------- with Ray


def test_unreachable_address_fails_fast_with_one_line(model_dir, tmp_path, capsys):
    _ray_or_skip()
    with socket.socket() as s:  # a free port on this machine: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from canopy.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a b"}\n')
    started = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        main(["sample", "--models", str(model_dir), "--prompts", str(prompts), "--out",
              str(tmp_path / "r"), "--ray", f"127.0.0.1:{port}"])
    assert time.perf_counter() - started < 10
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert f"cannot reach a Ray cluster at 127.0.0.1:{port}" in err and "\n" not in err
    with pytest.raises(ValueError, match="must be HOST:PORT"):
        sample_to_store(spec(model_dir), PROMPTS, CFG, tmp_path, ray="nonsense")


def test_ray_workers_write_the_single_process_store(ray_instance, model_dir, single,
                                                    tmp_path, capsys):
    single_out, single_table = single
    out = tmp_path / "ray"
    table = sample_to_store(spec(model_dir), PROMPTS, CFG, out, **ON_RAY)
    info = table.attrs["canopy"]
    assert info["sampled_prompts"] == len(PROMPTS) and info["reused_prompts"] == 0
    assert len(info["workers"]) == 2 and "worker 1" in info["workers"][1]
    assert "1 thread(s)" in info["workers"][0]
    assert "worker 0" in capsys.readouterr().err  # the per-worker summary lines
    pd.testing.assert_frame_equal(canonical(table), canonical(single_table))
    pd.testing.assert_frame_equal(canonical(load_rollouts(out)), canonical(single_table))
    assert _config_dirs(out) == _config_dirs(single_out)  # the same configuration hash
    assert len(list(out.rglob("*.parquet"))) == len(PROMPTS)
    # rerun: everything is reused, nothing is rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    again = sample_to_store(spec(model_dir), PROMPTS, CFG, out, **ON_RAY,
                            progress=False)
    assert again.attrs["canopy"]["reused_prompts"] == len(PROMPTS)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == mtimes


def test_killed_worker_loses_and_duplicates_nothing(ray_instance, model_dir, single, tmp_path,
                                                    monkeypatch):
    _, single_table = single
    killed = []

    def kill_a_busy_worker(busy_pids, units_done):
        if not killed and busy_pids:
            os.kill(busy_pids[0], signal.SIGKILL)
            killed.append(busy_pids[0])

    monkeypatch.setattr(cluster, "_after_unit", kill_a_busy_worker)
    out = tmp_path / "ray"
    table = sample_to_store(spec(model_dir), PROMPTS, CFG, out, **ON_RAY,
                            progress=False)
    assert killed
    assert any("1 restart(s)" in line for line in table.attrs["canopy"]["workers"])
    assert not table.duplicated(["task", "prompt_id", "rollout_id"]).any()
    pd.testing.assert_frame_equal(canonical(table), canonical(single_table))
    pd.testing.assert_frame_equal(canonical(load_rollouts(out)), canonical(single_table))
    assert len(list(out.rglob("*.parquet"))) == len(PROMPTS)


def test_interrupted_driver_resumes(ray_instance, model_dir, single, tmp_path, monkeypatch):
    _, single_table = single

    def interrupt(busy_pids, units_done):
        if units_done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cluster, "_after_unit", interrupt)
    out = tmp_path / "ray"
    with pytest.raises(KeyboardInterrupt):
        sample_to_store(spec(model_dir), PROMPTS, CFG, out, **ON_RAY,
                        progress=False)
    kept = len(list(out.rglob("*.parquet")))
    assert 4 <= kept < len(PROMPTS)  # two units of two prompts at least
    monkeypatch.setattr(cluster, "_after_unit", lambda *a: None)
    table = sample_to_store(spec(model_dir), PROMPTS, CFG, out, **ON_RAY,
                            progress=False)
    assert table.attrs["canopy"]["reused_prompts"] == kept
    pd.testing.assert_frame_equal(canonical(table), canonical(single_table))


def test_too_many_workers_is_a_clear_error(ray_instance, model_dir, tmp_path):
    with pytest.raises(ValueError, match="need 3 CPUs but the Ray cluster has 2"):
        sample_to_store(spec(model_dir), PROMPTS, CFG, tmp_path, runtime=CPU1, ray=True,
                        workers=3)


@pytest.mark.integration
def test_smollm2_on_ray_equals_single_process(ray_instance, tmp_path):
    from canopy.models import available, get_spec

    ok, needs = available(get_spec("smollm2-135m-instruct"))
    if not ok:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"smollm2-135m-instruct is not available under CI: {needs}")
        pytest.skip(f"smollm2-135m-instruct not available: {needs}")
    prompts = [Prompt("demo", str(i), text) for i, text in
               enumerate(["Name a colour.", "Say hi.", "Count to three.", "Name a fruit."])]
    cfg = SamplingConfig(rollouts=2, max_new_tokens=6, top_k=50, seed=1, batch_size=4)
    single = sample_to_store("smollm2-135m-instruct", prompts, cfg, tmp_path / "one",
                             runtime=CPU1, progress=False)
    table = sample_to_store("smollm2-135m-instruct", prompts, cfg, tmp_path / "ray",
                            runtime=CPU1, ray=True, workers=2, progress=False)
    pd.testing.assert_frame_equal(canonical(table), canonical(single))
    assert _config_dirs(tmp_path / "ray") == _config_dirs(tmp_path / "one")


def test_row_units_replay_the_scoring_passes():
    sizes = [3, 1, 4, 2, 2, 5, 3, 4]
    for per_batch in (1, 2, 4, 5, 16):
        units = cluster.row_units(sizes, per_batch)
        assert [i for u in units for i in u] == list(range(len(sizes)))
        offsets = [sum(sizes[: u.start]) for u in units]
        assert all(o % per_batch == 0 for o in offsets)  # each unit starts a pass
        # …and is the smallest such unit: no group inside it starts at a pass boundary
        assert all(sum(sizes[:i]) % per_batch for u in units for i in u[1:])


def test_score_on_ray_equals_single_process(ray_instance, model_dir, tmp_path, capsys):
    from canopy.models import load_model
    from canopy.run import score_to_store

    made = sample_to_store(spec(model_dir), PROMPTS, SamplingConfig(
        rollouts=3, max_new_tokens=12, top_k=10, seed=7), None, runtime=CPU1, progress=False)
    rollouts = made[["task", "prompt_id", "rollout_id", "prompt_token_ids", "token_ids"]]
    cfg = SamplingConfig(max_new_tokens=12, top_k=10)
    one = score_to_store(load_model(spec(model_dir), runtime=CPU1), rollouts, cfg,
                         tmp_path / "one", batch_size=4, progress=False)
    on_ray = cluster.score_on_ray(spec(model_dir), rollouts, cfg, tmp_path / "ray",
                                  batch_size=4, workers=2, runtime=CPU1)
    assert on_ray.attrs["canopy"]["scored_prompts"] == len(PROMPTS)
    assert len(on_ray.attrs["canopy"]["workers"]) == 2
    assert "worker 1" in capsys.readouterr().err
    pd.testing.assert_frame_equal(canonical(on_ray), canonical(one))
    assert _config_dirs(tmp_path / "ray") == _config_dirs(tmp_path / "one")
    # the scores are those of the sampler (teacher forcing recomputes q_t exactly)
    assert canonical(on_ray)["token_ids"].tolist() == canonical(made)["token_ids"].tolist()
    again = cluster.score_on_ray(spec(model_dir), rollouts, cfg, tmp_path / "ray",
                                 batch_size=4, workers=2, runtime=CPU1, progress=False)
    assert again.attrs["canopy"]["reused_prompts"] == len(PROMPTS)


def test_cli_score_workers_zero_is_a_clear_error(model_dir, tmp_path, capsys):
    from canopy.cli import main

    rollouts = tmp_path / "r.jsonl"
    rollouts.write_text('{"prompt": "a b", "completion": "c"}\n')
    with pytest.raises(SystemExit) as info:
        main(["score", "--models", str(model_dir), "--rollouts", str(rollouts), "--out",
              str(tmp_path / "s"), "--ray", "--workers", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "workers must be an integer ≥ 1" in err and "\n" not in err
