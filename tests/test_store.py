"""The model store: add, activate, rollback, list, the audit log; a bundle that fails
verification or the smoke test never becomes active."""

import json

import pytest
from conftest import one_line_error, run_cli
from test_serve_helpers import tampered_copy, two_version_store


@pytest.fixture()
def store(tiny_bundle, tmp_path):
    return two_version_store(tiny_bundle, tmp_path)[0]


def test_add_activate_rollback_and_audit(store):
    from edgeseg.serve.store import ModelStore, bundle_sha256

    st = ModelStore(store)
    assert st.versions() == ["v1", "v2"] and st.active == "v1"
    assert st.activate("v2").version == "v2" and st.active == "v2"
    loaded = st.rollback()
    assert loaded.version == "v1" and st.active == "v1"
    assert loaded.sha256 == bundle_sha256(store / "versions" / "v1")
    actions = [(e["action"], e.get("to", e.get("version")), e["outcome"]) for e in st.audit()]
    assert actions == [("add", "v1", "ok"), ("add", "v2", "ok"), ("activate", "v1", "ok"), ("activate", "v2", "ok"),
                       ("rollback", "v1", "ok")]
    assert all("time" in e and "actor" in e for e in st.audit())
    listing = st.listing()
    assert [r["version"] for r in listing["versions"] if r["active"]] == ["v1"]
    assert listing["versions"][0]["sha256"] != listing["versions"][1]["sha256"]


def test_rollback_with_nothing_before_is_refused(tiny_bundle, tmp_path):
    from edgeseg.serve.store import ModelStore, StoreError

    st = ModelStore(tmp_path / "s", create=True)
    st.add(tiny_bundle, "a")
    with pytest.raises(StoreError, match="nothing to roll back"):
        st.rollback()
    st.activate("a")
    with pytest.raises(StoreError, match="only one version"):
        st.rollback()


def test_tampered_bundle_is_never_added(tiny_bundle, tmp_path, store):
    from edgeseg.runtime.errors import BundleError
    from edgeseg.serve.store import ModelStore

    bad = tampered_copy(tiny_bundle, tmp_path / "bad")
    st = ModelStore(store)
    with pytest.raises(BundleError, match="sha256"):
        st.add(bad, "v3")
    assert "v3" not in st.versions() and not list((store / "versions").glob(".v3*"))
    assert st.audit()[-1]["outcome"] == "refused" and st.active == "v1"


def test_version_tampered_after_add_never_becomes_active(store):
    from edgeseg.runtime.errors import BundleError
    from edgeseg.serve.store import ModelStore

    model = store / "versions" / "v2" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[100] ^= 1
    model.write_bytes(bytes(data))
    st = ModelStore(store)
    with pytest.raises(BundleError, match="was not activated"):
        st.activate("v2")
    assert st.active == "v1" and st.state()["history"] == ["v1"]
    last = st.audit()[-1]
    assert (last["action"], last["to"], last["outcome"]) == ("activate", "v2", "refused")


def test_failed_smoke_test_never_becomes_active(store, monkeypatch):
    import edgeseg.serve.store as S
    from edgeseg.runtime.errors import BundleError

    def broken(seg):
        raise BundleError("smoke test failed: stand-in for a model that cannot run")

    monkeypatch.setattr(S, "smoke_test", broken)
    st = S.ModelStore(store)
    with pytest.raises(BundleError, match="smoke test"):
        st.activate("v2")
    assert st.active == "v1"


def test_smoke_test_passes_a_real_model(tiny_bundle):
    from edgeseg.runtime import Segmenter
    from edgeseg.serve.store import smoke_test

    smoke_test(Segmenter(tiny_bundle))  # raises on failure


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "x" * 65, "a b"])
def test_bad_version_names(store, tiny_bundle, name):
    from edgeseg.serve.store import ModelStore, StoreError

    with pytest.raises(StoreError, match="version"):
        ModelStore(store).add(tiny_bundle, name)


def test_versions_are_never_replaced(store, tiny_bundle):
    from edgeseg.serve.store import ModelStore, StoreError, UnknownVersion

    with pytest.raises(StoreError, match="already"):
        ModelStore(store).add(tiny_bundle, "v1")
    with pytest.raises(UnknownVersion, match="unknown model version"):
        ModelStore(store).activate("v9")


def test_single_bundle_is_a_read_only_store(tiny_bundle):
    from edgeseg.serve.store import ModelStore, StoreError

    st = ModelStore(tiny_bundle)
    assert st.single and st.versions() == [st.active]
    with pytest.raises(StoreError, match="single bundle"):
        st.rollback()


@pytest.mark.slow
def test_store_cli(tiny_bundle, tmp_path):
    store = tmp_path / "s"
    r = run_cli("store", "add", store, tiny_bundle, "--version", "1", "--activate")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["active"] == "1"
    assert run_cli("store", "add", store, tiny_bundle, "--version", "2").returncode == 0
    r = run_cli("store", "activate", store, "2")
    assert r.returncode == 0 and json.loads(r.stdout) == {"active": "2"}
    r = run_cli("store", "rollback", store)
    assert r.returncode == 0 and json.loads(r.stdout) == {"active": "1"}
    listing = json.loads(run_cli("store", "list", store).stdout)
    assert listing["active"] == "1" and [v["version"] for v in listing["versions"]] == ["1", "2"]
    one_line_error(run_cli("store", "activate", store, "7"), "unknown model version")
    one_line_error(run_cli("store", "add", store, tiny_bundle), "--version")
    one_line_error(run_cli("store", "remove", store), "unknown store action")
    one_line_error(run_cli("store", "list", tmp_path / "nothing"), "neither a model store")
