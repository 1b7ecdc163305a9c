"""A team server: `mlflow server --app-name basic-auth` on loopback, users made through the admin's REST API, a
process-launcher sweep with credentials from the environment. Wrong credentials and a read-only user are one line
(exit 2) before any cell runs; no credential and no DPF key material reaches a log, param, tag or artifact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_mlflow_server import serve

pytestmark = [pytest.mark.mlflow_auth, pytest.mark.slow]

ADMIN, ADMIN_PW = "admin", "admin-pw-Zq81-never-logged"
ALICE, ALICE_PW = "alice", "alice-pw-Kx42-never-logged"  # EDIT on the team's experiment
BOB, BOB_PW = "bob", "bob-pw-Vn77-never-logged"          # READ only
EXPERIMENT = "team"
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def _as(user: str, password: str) -> dict[str, str]:
    return dict(zip(CREDENTIALS, (user, password), strict=True))


@pytest.fixture
def team_server(tmp_path: Path, monkeypatch) -> Iterator[str]:
    """A basic-auth server (its user store in tmp_path, the admin's password from the environment), an experiment
    made by the admin, alice given EDIT on it and bob READ (the server's default for everyone else is READ)."""
    from mlflow.server import get_app_client
    from mlflow.tracking import MlflowClient

    server_dir = tmp_path / "server"
    server_dir.mkdir()
    ini = server_dir / "basic_auth.ini"
    ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{server_dir}/auth.db\n"
                   f"admin_username = {ADMIN}\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PW,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key"}
    with serve(server_dir, "--app-name", "basic-auth", env=env) as (url, _):
        for key, value in _as(ADMIN, ADMIN_PW).items():
            monkeypatch.setenv(key, value)  # this test process talks to the server as the admin
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")  # each request hashes a password: slow on a busy CPU
        users = get_app_client("basic-auth", tracking_uri=url)
        users.create_user(ALICE, ALICE_PW)
        users.create_user(BOB, BOB_PW)
        exp = MlflowClient(url).create_experiment(EXPERIMENT)
        users.grant_user_permission(ALICE, "experiment", exp, "EDIT")
        users.grant_user_permission(BOB, "experiment", exp, "READ")
        yield url


def _runs(url: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None
    return client.search_runs([exp.experiment_id], max_results=1000)


def _texts(url: str, run, dest: Path) -> list[str]:
    """Every param, tag and artifact of a run, as text."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    out = [f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items()]
    local = Path(client.download_artifacts(run.info.run_id, "", str(dest / run.info.run_id)))
    out += [p.read_bytes().decode(errors="replace") for p in local.rglob("*") if p.is_file()]
    return out


def _key_hex(cell) -> list[str]:
    """The DPF key material of the cell's first query, as hex (both parties' root seeds and the shared final CW)."""
    from morphogen_exp.measure.datasets import domain_bits_for
    from morphogen_exp.measure.queries import make_queries

    pages = int(cell.data.tags["dataset.num_pages"])
    qs = make_queries(domain_bits_for(pages), pages, int(cell.data.params["seed"]), 1)
    k0, k1 = qs.keys[0][0][0], qs.keys[1][0][0]
    return [k0.root_seed.hex(), k1.root_seed.hex(), k0.final_cw.hex()]


def test_a_team_sweep_with_credentials_from_the_environment(cli, workdir, team_server, tmp_path):
    args = ("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "strategy=full_batch", "q=1,2",
            f"mlflow.tracking_uri={team_server}", f"mlflow.experiment={EXPERIMENT}",
            "bench.system_metrics_s=null", "bench.max_time_s=0.2")
    logs = []
    for who, says in (((ALICE, "wrong-password"), f"refused the credentials of user '{ALICE}'"),
                      ((BOB, BOB_PW), f"user '{BOB}' may not write to experiment '{EXPERIMENT}'")):
        res = cli(*args, test_strategies=False, extra_env=_as(*who))
        logs += [res.stdout, res.stderr]
        assert res.returncode == 2, res.stderr[-3000:]
        assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and says in res.stderr, res.stderr
        assert _runs(team_server) == []  # before any cell: not even a sweep run

    res = cli(*args, test_strategies=False, extra_env=_as(ALICE, ALICE_PW))
    logs += [res.stdout, res.stderr]
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (workdir / "outputs" / "mlflow.db").exists()
    runs = _runs(team_server)
    (parent,) = [r for r in runs if r.data.tags.get("morphogen.role") == "sweep"]
    cells = [r for r in runs if r.data.tags.get("morphogen.role") == "cell"]
    assert parent.info.status == "FINISHED"
    assert len(cells) == 2 and all(r.data.tags["cell_status"] == "ok" for r in cells)
    assert {"report/report.md", "report/matrix.csv"} <= {a.path for a in _client_artifacts(team_server, parent)}

    secrets = [ADMIN_PW, ALICE_PW, BOB_PW, "wrong-password", *_key_hex(cells[0])]
    texts = [t for r in runs for t in _texts(team_server, r, tmp_path / "artifacts")]
    assert any("report" in t for t in texts) and len(texts) > 50  # the search below saw the records
    sweep_files = [p.read_bytes().decode(errors="replace") for p in (workdir / "outputs").rglob("*")
                   if p.is_file() and p.suffix in (".log", ".yaml", ".md", ".csv", ".env", ".json", "")]
    for secret in secrets:
        for where, items in (("logs", logs), ("params, tags and artifacts", texts), ("the sweep folder", sweep_files)):
            leaked = [t[:200] for t in items if secret in t]
            assert not leaked, f"{secret[:6]}... found in {where}: {leaked[:3]}"


def _client_artifacts(url: str, run) -> list:
    from mlflow.tracking import MlflowClient

    return MlflowClient(url).list_artifacts(run.info.run_id, "report")
