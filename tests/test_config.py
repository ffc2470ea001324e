import pytest
from typer.testing import CliRunner
from vragent.sandbox.cli import app
from vragent.sandbox.config import ScenarioError, list_scenarios, load_scenario, parse_scenario

from tests.conftest import tiny_scenario, write_scenario


def test_bundled_scenarios_validate():
    assert list_scenarios(), "no bundled scenarios"
    for path in list_scenarios():
        sc, text, _ = load_scenario(str(path))
        assert sc.name and text


def test_quickstart_by_name():
    sc, _, path = load_scenario("quickstart")
    assert path.name == "quickstart.yaml"
    assert [a.recommender for a in sc.arms] == ["popular", "cooccurrence"]
    assert sc.dataset.kind == "movielens-100k" and sc.backend.model == "smollm2"


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"simulation": {"stepz": 3}}, "simulation.stepz: unknown key"),
        ({"simulation": {"steps": "many"}}, "simulation.steps: Input should be a valid integer"),
        ({"population": {"size": -4}}, "population.size: Input should be greater than or equal"),
        ({"backend": {"kind": "gpt"}}, "backend.kind: Input should be"),
        ({"arms": []}, "arms: List should have at least 1 item"),
        ({"colour": "blue"}, "colour: unknown key"),
    ],
)
def test_errors_name_the_key(patch, expected):
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(tiny_scenario(**patch), "x.yaml")
    msg = str(exc.value)
    assert msg.startswith("x.yaml: ") and expected in msg
    assert "\n" not in msg


def test_duplicate_arm_names_rejected():
    arms = [{"name": "a", "recommender": "popular"}, {"name": "a", "recommender": "random"}]
    with pytest.raises(ScenarioError, match="arm names must be unique"):
        parse_scenario(tiny_scenario(arms=arms))


def test_openai_needs_base_url():
    with pytest.raises(ScenarioError, match="base_url is required"):
        parse_scenario(tiny_scenario(backend={"kind": "openai"}))


@pytest.mark.parametrize(("backend", "expected"), [
    ({"kind": "hf", "p_yes": 0.5}, "backend: p_yes is a setting of kind constant, not of 'hf'"),
    ({"kind": "constant", "kv_cache_mb": 10}, "kv_cache_mb is a setting of kind hf or"),
    ({"kind": "tiny", "base_url": "http://127.0.0.1:1/v1"}, "base_url is a setting of kind "
     "openai"),
])
def test_a_setting_of_another_backend_kind_is_one_line(backend, expected):
    with pytest.raises(ScenarioError, match=expected):
        parse_scenario(tiny_scenario(backend=backend))
    # The same keys at their defaults (as a stored config holds them) are fine.
    full = parse_scenario(tiny_scenario()).model_dump(mode="json")
    assert parse_scenario(full).backend.kind == "tiny"


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load_scenario(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="invalid YAML"):
        load_scenario(str(bad))


def test_cli_exits_2_with_one_line(tmp_path):
    path = write_scenario(tmp_path, tiny_scenario(simulation={"slate_size": 0}))
    result = CliRunner().invoke(app, ["run", str(path), "--db", f"sqlite:///{tmp_path}/s.db"])
    assert result.exit_code == 2
    assert "simulation.slate_size: Input should be greater than 0" in result.output


def test_cli_run_applies_set_overrides_and_stores_them(tmp_path):
    import yaml as _yaml
    from vragent.sandbox.store import Store

    path = write_scenario(tmp_path, tiny_scenario(ip_agent={"enabled": False},
                                                  backend={"kind": "tiny", "trace_rate": 0.0}))
    db = f"sqlite:///{tmp_path}/s.db"
    result = CliRunner().invoke(app, ["run", str(path), "--db", db, "--set",
                                      "population.size=2", "--set", "simulation.steps=1"])
    assert result.exit_code == 0, result.output
    (run,) = Store(db).list_runs()
    assert run.config["population"]["size"] == 2 and run.n_steps == 1
    # The stored text carries the overrides, so a resume rebuilds the same scenario.
    assert _yaml.safe_load(run.scenario_yaml)["population"]["size"] == 2
    bad = CliRunner().invoke(app, ["run", str(path), "--db", db, "--set", "population.size"])
    assert bad.exit_code == 2 and "is not key.path=value" in bad.output
    wrong = CliRunner().invoke(app, ["run", str(path), "--db", db, "--set",
                                     "population.size=-1"])
    assert wrong.exit_code == 2 and "population.size" in wrong.output
    resumed = CliRunner().invoke(app, ["run", "--resume", run.id, "--db", db, "--set", "seed=3"])
    assert resumed.exit_code == 2 and "a resumed run keeps" in resumed.output
    assert len(Store(db).list_runs()) == 1  # no bad command created a run
