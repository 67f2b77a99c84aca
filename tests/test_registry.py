"""Plugin discovery: third-party entries, broken-plugin isolation, disabling, lookup and did-you-mean.

Plugins are real distributions (a ``.dist-info`` with ``entry_points.txt``) on
``sys.path`` in-process, or on ``PYTHONPATH`` for the ``zoo`` CLI in a subprocess.
"""

from __future__ import annotations

import json
import sys

import pytest

from zoo import registry as zreg
from zoo.errors import PluginError, UsageError

BUILTIN_PLUGINS = {"builtin", "torchvision"}

ACME = """
    from zoo import hookimpl

    @hookimpl
    def zoo_register(registry):
        registry.model("acme_net", "acme_heavy.models:AcmeNet", "Acme network\\nsecond line is dropped")
        registry.loss("acme_loss", "acme_heavy.losses:AcmeLoss", "Acme loss")
        registry.dataset("acme_data", "acme_heavy.data:AcmeData", "Acme data")
        registry.hook("acme_hook", "acme_heavy.hooks:AcmeHook", "Acme hook", default=True)
"""

IMPORT_FAILS = """
    raise ImportError("acme_gpu needs libfoo 9")
"""

REGISTER_RAISES = """
    from zoo import hookimpl

    @hookimpl
    def zoo_register(registry):
        registry.model("half_done", "somewhere:Model", "registered before the failure")
        raise RuntimeError("register exploded")
"""

MIS_SIGNED = """
    from zoo import hookimpl

    @hookimpl
    def zoo_register(registry, extra):
        registry.model("never_seen", "somewhere:Model")
"""

BAD_NAME = """
    from zoo import hookimpl

    @hookimpl
    def zoo_register(registry):
        registry.model("Bad Name", "somewhere:Model")
"""

BAD_TARGET = """
    from zoo import hookimpl

    @hookimpl
    def zoo_register(registry):
        registry.loss("fine_name", "not a target")
"""

NO_HOOK = """
    def zoo_register(registry):  # not marked with @hookimpl
        registry.model("unmarked", "somewhere:Model")
"""

DUPLICATE_DCGAN = """
    from zoo import hookimpl

    @hookimpl
    def zoo_register(registry):
        registry.model("dcgan", "plugins.models.dcgan:DCGAN", "Acme's own DCGAN")
"""


def _install_broken(make_plugin):
    make_plugin("acme_gpu", IMPORT_FAILS)
    make_plugin("acme_raise", REGISTER_RAISES)
    return make_plugin("acme_sig", MIS_SIGNED)


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# --------------------------------------------------------------------------- in-process


@pytest.fixture
def discover_with(monkeypatch, tmp_path):
    """``discover_with(site, disabled=())``: discovery with ``site`` on sys.path, zoo env vars unset."""
    for var in ("ZOO_DISABLE_PLUGINS", "ZOO_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(var, raising=False)
    zreg.clear_cache()

    def discover(site=None, disabled=()):
        if site is not None and str(site) not in sys.path:
            monkeypatch.syspath_prepend(str(site))
        return zreg.discover(disabled)

    yield discover
    zreg.clear_cache()
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]


def test_third_party_entries_carry_plugin_and_version(make_plugin, discover_with):
    registry = discover_with(make_plugin("acme", ACME, version="2.3.4"))
    info = registry.plugins["acme"]
    assert (info.status, info.distribution, info.version, info.module) == ("ok", "acme", "2.3.4",
                                                                           "acme_zoo_plugin")
    assert not info.builtin
    assert info.counts == {"model": 1, "loss": 1, "dataset": 1, "hook": 1}
    for kind in zreg.KINDS:
        (entry,) = [e for e in registry.entries(kind) if e.plugin == "acme"]
        assert entry.name == f"acme_{ {'model': 'net', 'loss': 'loss', 'dataset': 'data', 'hook': 'hook'}[kind] }"
        assert entry.qualified_name == f"acme:{entry.name}"
    assert registry.resolve("model", "acme_net").summary == "Acme network"
    assert [e.name for e in registry.defaults("hook") if e.plugin == "acme"] == ["acme_hook"]
    # listing never imports a target: acme_heavy does not even exist
    assert "acme_heavy" not in sys.modules
    assert {"builtin", "torchvision"} <= set(registry.plugins)
    assert all(registry.plugins[p].status == "ok" and registry.plugins[p].builtin for p in BUILTIN_PLUGINS)


@pytest.mark.parametrize("source, expected", [
    (IMPORT_FAILS, "ImportError: acme_gpu needs libfoo 9"),
    (REGISTER_RAISES, "RuntimeError: register exploded"),
    (MIS_SIGNED, "hook signature mismatch"),
    (BAD_NAME, "invalid model name 'Bad Name'"),
    (BAD_TARGET, "invalid target 'not a target' for loss 'fine_name'"),
    (NO_HOOK, "zoo_register in acme_bad_zoo_plugin is not marked @zoo.hookimpl; decorate it"),
    ("x = 1\n", "module acme_bad_zoo_plugin defines no zoo_register hook; add one"),
], ids=["import-error", "register-raises", "mis-signed", "bad-name", "bad-target", "unmarked", "no-hook"])
def test_broken_plugin_is_isolated(make_plugin, discover_with, source, expected):
    registry = discover_with(make_plugin("acme_bad", source))
    info = registry.plugins["acme_bad"]
    assert info.status == "broken"
    assert expected in info.error
    assert "\n" not in info.error and "Traceback" not in info.error
    assert [e for e in registry.entries() if e.plugin == "acme_bad"] == []  # partial work dropped
    assert registry.broken() == [info]
    assert "dcgan" in registry.names("model") and "tv_resnet18" in registry.names("model")


def test_an_entry_point_naming_the_function_says_to_name_the_module(make_plugin, discover_with):
    site = make_plugin("acme_attr", ACME)
    (site / "acme_attr-1.0.0.dist-info" / "entry_points.txt").write_text(
        "[zoo]\nacme_attr = acme_attr_zoo_plugin:zoo_register\n")
    info = discover_with(site).plugins["acme_attr"]
    assert info.status == "broken"
    assert info.error == ("its entry point names 'acme_attr_zoo_plugin:zoo_register', an object in a module; "
                          "it must name the module: acme_attr = acme_attr_zoo_plugin")


def test_cli_debug_shows_where_a_broken_plugin_failed(make_plugin, run_zoo):
    site = make_plugin("acme_gpu", IMPORT_FAILS)
    quiet = run_zoo("list", "plugins", env={"PYTHONPATH": str(site)})
    assert "Traceback" not in quiet.stdout + quiet.stderr
    for debug in (["--debug", "list", "plugins"], ["list", "plugins", "--debug"]):
        shown = run_zoo(*debug, env={"PYTHONPATH": str(site)})
        assert shown.returncode == 0
        assert "zoo: plugin acme_gpu failed here:\nTraceback (most recent call last):" in shown.stderr
        assert "acme_gpu_zoo_plugin.py" in shown.stderr and "ImportError: acme_gpu needs libfoo 9" in shown.stderr


def test_mis_signed_hook_names_the_bad_argument(make_plugin, discover_with):
    info = discover_with(make_plugin("acme_sig", MIS_SIGNED)).plugins["acme_sig"]
    assert info.error.startswith("hook signature mismatch")
    assert "zoo_register(registry, extra)" in info.error
    assert "'extra'" in info.error


def test_disabled_plugins_by_argument_and_env(make_plugin, discover_with, monkeypatch):
    site = _install_broken(make_plugin)
    registry = discover_with(site, disabled=["acme_gpu"])
    assert registry.plugins["acme_gpu"].status == "disabled"
    assert {p.name for p in registry.broken()} == {"acme_raise", "acme_sig"}

    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", " acme_raise , acme_sig ")
    registry = discover_with(site, disabled=["acme_gpu"])
    assert {n: p.status for n, p in registry.plugins.items() if n.startswith("acme")} == {
        "acme_gpu": "disabled", "acme_raise": "disabled", "acme_sig": "disabled"}
    assert registry.broken() == []
    assert zreg.get_registry() is zreg.get_registry()  # cached per disabled set


def test_disabling_an_unknown_plugin_is_a_usage_error(discover_with, monkeypatch):
    with pytest.raises(UsageError, match="cannot disable unknown plugin.*nosuch.*builtin"):
        discover_with(disabled=["nosuch"])
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", "alsonot")
    with pytest.raises(UsageError, match="alsonot"):
        discover_with()


def test_autoload_off_loads_builtin_plugins_only(make_plugin, discover_with, monkeypatch):
    site = make_plugin("acme", ACME)
    monkeypatch.setenv("ZOO_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = discover_with(site)
    loaded = {n for n, p in registry.plugins.items() if p.status == "ok"}
    assert loaded == BUILTIN_PLUGINS
    assert all(registry.plugins[n].distribution == "zoo" for n in loaded)
    assert registry.plugins["acme"].status == "disabled"
    assert "ZOO_DISABLE_PLUGIN_AUTOLOAD" in registry.plugins["acme"].error
    assert not [e for e in registry.entries() if e.plugin == "acme"]


def test_same_name_from_two_plugins(make_plugin, discover_with):
    registry = discover_with(make_plugin("acme", DUPLICATE_DCGAN))
    both = registry.entries("model", ["dcgan"])
    assert [e.qualified_name for e in both] == ["acme:dcgan", "builtin:dcgan"]
    with pytest.raises(UsageError) as err:
        registry.resolve("model", "dcgan")
    assert "acme:dcgan" in str(err.value) and "builtin:dcgan" in str(err.value)
    assert registry.resolve("model", "acme:dcgan").summary == "Acme's own DCGAN"
    assert registry.resolve("model", "builtin:dcgan").plugin == "builtin"
    with pytest.raises(UsageError, match="Did you mean: .*dcgan"):
        registry.resolve("model", "acme:dcgna")


def test_unknown_name_suggests_close_ones(discover_with):
    registry = discover_with()
    with pytest.raises(UsageError) as err:
        registry.resolve("model", "dcgna")
    message = str(err.value)
    assert "unknown model 'dcgna'" in message and "Did you mean: dcgan" in message
    assert "zoo list models" in message
    with pytest.raises(UsageError, match="unknown loss 'xyzzy'. Run 'zoo list losses'"):
        registry.resolve("loss", "xyzzy")
    assert registry.suggest_any("perceptul") == ["perceptual"]


def test_registrar_rejects_invalid_names_and_targets():
    registrar = zreg.Registrar("p")
    for name in ("", "Upper", "has space", "-lead", None):
        with pytest.raises(ValueError, match="invalid model name"):
            registrar.model(name, "pkg.mod:Cls")
    for target in ("pkg.mod", "pkg mod:Cls", ":Cls", "pkg.mod:", 42):
        with pytest.raises(ValueError, match="invalid target"):
            registrar.hook("h", target)
    registrar.dataset("ok.name-1", "pkg.mod:Outer.Inner")
    with pytest.raises(ValueError, match="registered twice"):
        registrar.dataset("ok.name-1", "pkg.mod:Other")
    assert [e.qualified_name for e in registrar.entries] == ["p:ok.name-1"]


def test_entries_fnmatch_and_natural_sort(discover_with):
    registry = discover_with()
    names = [e.name for e in registry.entries("model", ["tv_resnet*"])]
    assert names == ["tv_resnet18", "tv_resnet34", "tv_resnet50", "tv_resnet101", "tv_resnet152"]
    assert [e.name for e in registry.entries("model", ["tv_resnet1?", "dcgan"])] == ["dcgan", "tv_resnet18"]
    assert [e.name for e in registry.entries("model", ["torchvision:tv_vgg1?"])] == [
        "tv_vgg11", "tv_vgg13", "tv_vgg16", "tv_vgg19"]
    assert registry.entries("loss", ["tv_*"]) == []
    assert registry.entries("model", ["b*"]) == []  # a bare pattern is not matched against 'builtin:...'
    assert {e.plugin for e in registry.entries("model", ["torch*:*"])} == {"torchvision"}
    assert zreg.natural_key("resnet18") < zreg.natural_key("resnet101")


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def slow_cli(tmp_path_factory, install_plugin, run_zoo):
    """Commands that import torch (about 4 s each) run once for the module.

    One site holds three broken plugins and a plugin ``acme`` that offers its own ``dcgan``.
    """
    site = tmp_path_factory.mktemp("site")
    for dist, source in [("acme_gpu", IMPORT_FAILS), ("acme_raise", REGISTER_RAISES), ("acme_sig", MIS_SIGNED)]:
        install_plugin(site, dist, source)
    install_plugin(site, "acme", DUPLICATE_DCGAN, version="2.0.0")
    return {"site": site,
            "info acme:dcgan": run_zoo("info", "acme:dcgan", env={"PYTHONPATH": str(site)}),
            "train --model dcgna": run_zoo("train", "--model", "dcgna")}


def test_cli_lists_third_party_entries(make_plugin, run_zoo):
    site = make_plugin("acme", ACME, version="2.3.4")
    result = run_zoo("list", "--json", env={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    records = {(r["kind"], r["name"]): r for r in json.loads(result.stdout)}
    for kind, name in [("model", "acme_net"), ("loss", "acme_loss"), ("dataset", "acme_data"),
                       ("hook", "acme_hook")]:
        assert records[kind, name]["plugin"] == "acme"
        assert records[kind, name]["version"] == "2.3.4"
    plugin = records["plugin", "acme"]
    assert (plugin["status"], plugin["version"], plugin["distribution"]) == ("ok", "2.3.4", "acme")
    assert records["model", "dcgan"]["plugin"] == "builtin"


def test_cli_list_shows_broken_plugins_and_still_lists_builtins(make_plugin, run_zoo):
    site = _install_broken(make_plugin)
    result = run_zoo("list", env={"PYTHONPATH": str(site)})
    assert result.returncode == 0
    assert result.stderr == ""
    assert "Traceback" not in result.stdout
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  acme_")}
    assert set(rows) == {"acme_gpu", "acme_raise", "acme_sig"}
    assert "broken" in rows["acme_gpu"] and "ImportError: acme_gpu needs libfoo 9" in rows["acme_gpu"]
    assert "broken" in rows["acme_raise"] and "RuntimeError: register exploded" in rows["acme_raise"]
    assert "broken" in rows["acme_sig"] and "hook signature mismatch" in rows["acme_sig"]
    assert "half_done" not in result.stdout and "never_seen" not in result.stdout
    assert "  dcgan " in result.stdout and "  perceptual " in result.stdout
    assert any(line.split()[:4] == ["builtin", "zoo", "0.1.0", "ok"] for line in result.stdout.splitlines())


def test_cli_other_commands_warn_once_and_still_work(slow_cli):
    result = slow_cli["info acme:dcgan"]  # zoo info of a dcgan model, with broken plugins installed
    assert result.returncode == 0, result.stderr
    warning = _one_line(result.stderr)
    assert warning.startswith("zoo: warning: plugin(s) skipped:")
    for name in ("acme_gpu", "acme_raise", "acme_sig"):
        assert warning.count(name + " (broken: ") == 1
    assert "ImportError: acme_gpu needs libfoo 9" in warning and "register exploded" in warning
    assert "zoo list plugins" in warning
    assert "parameters:" in result.stdout and "  options:" in result.stdout


def test_cli_disable_plugin_flag_and_env(make_plugin, run_zoo):
    site = _install_broken(make_plugin)
    flag = run_zoo("--disable-plugin", "acme_gpu", "--disable-plugin", "acme_sig", "list", "plugins", "--json",
                   env={"PYTHONPATH": str(site)})
    assert flag.returncode == 0, flag.stderr
    status = {r["name"]: r["status"] for r in json.loads(flag.stdout)}
    assert status == {"acme_gpu": "disabled", "acme_raise": "broken", "acme_sig": "disabled",
                      "builtin": "ok", "torchvision": "ok"}

    env = {"PYTHONPATH": str(site), "ZOO_DISABLE_PLUGINS": "acme_gpu,acme_raise,acme_sig"}
    table = run_zoo("list", "plugins", env=env)
    assert table.returncode == 0
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[2:]}
    assert [rows[name][3] for name in ("acme_gpu", "acme_raise", "acme_sig")] == ["disabled"] * 3
    quiet = run_zoo("info", "tensorboard", env=env)
    assert (quiet.returncode, quiet.stderr) == (0, "")
    assert "on by default: yes" in quiet.stdout


def test_cli_disabling_an_unknown_plugin_exits_2(run_zoo):
    result = run_zoo("--disable-plugin", "nosuch", "list")
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert line.startswith("zoo: error: cannot disable unknown plugin(s) nosuch")
    assert "builtin" in line and "zoo list plugins" in line
    assert result.stdout == ""


def test_cli_autoload_off(make_plugin, run_zoo):
    site = make_plugin("acme", ACME)
    result = run_zoo("list", "--json", env={"PYTHONPATH": str(site), "ZOO_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    plugins = {r["name"]: r for r in records if r["kind"] == "plugin"}
    assert {n for n, r in plugins.items() if r["status"] == "ok"} == BUILTIN_PLUGINS
    assert all(plugins[n]["distribution"] == "zoo" for n in BUILTIN_PLUGINS)
    assert plugins["acme"]["status"] == "disabled"
    assert not [r for r in records if r["kind"] != "plugin" and r["plugin"] == "acme"]


def test_cli_same_model_name_from_two_plugins(slow_cli, run_zoo):
    env = {"PYTHONPATH": str(slow_cli["site"]), "ZOO_DISABLE_PLUGINS": "acme_gpu,acme_raise,acme_sig"}
    bare = run_zoo("info", "dcgan", env=env)
    assert bare.returncode == 2
    line = _one_line(bare.stderr)
    assert "offered by several plugins" in line
    assert "acme:dcgan" in line and "builtin:dcgan" in line
    assert bare.stdout == ""

    qualified = slow_cli["info acme:dcgan"]
    assert qualified.returncode == 0, qualified.stderr
    assert qualified.stdout.startswith("dcgan  (model from plugin acme 2.0.0; acme:dcgan)")
    assert "Acme's own DCGAN" in qualified.stdout and "builtin:dcgan" not in qualified.stdout

    listed = run_zoo("list", "models", "dcgan", env=env)
    assert [line.split()[:2] for line in listed.stdout.splitlines()[2:]] == [["dcgan", "acme"],
                                                                             ["dcgan", "builtin"]]


def test_cli_did_you_mean(slow_cli, run_zoo):
    for result in (run_zoo("info", "dcgna"), slow_cli["train --model dcgna"]):
        assert result.returncode == 2
        line = _one_line(result.stderr)
        assert line.startswith("zoo: error:")
        assert "dcgna" in line and "Did you mean: dcgan?" in line and "'zoo list" in line
        assert result.stdout == ""


CLASHING_L1 = """
    from zoo import hookimpl

    @hookimpl
    def zoo_register(registry):
        registry.loss("l1", "torch.nn:L1Loss", "another plugin's l1")
"""


ANOTHER_RESTORER = """
    from zoo import hookimpl

    @hookimpl
    def zoo_register(registry):
        registry.model("restorer", "plugins.models.resnet_i2i:ResnetI2I", "builtin's net, default loss l1")
"""


def test_a_models_default_loss_comes_from_its_own_plugin_despite_a_clash(make_plugin, discover_with):
    from zoo import build

    make_plugin("restorers", ANOTHER_RESTORER)
    registry = discover_with(make_plugin("clash", CLASHING_L1))
    with pytest.raises(UsageError, match=r"^model 'restorer' trains with loss 'l1' by default, which several plugins "
                                         r"offer; pass --loss with one of: builtin:l1, clash:l1\.$"):
        build.plan_run(registry, "restorer", None, None, [], [])  # its own plugin offers no l1
    plan = build.plan_run(registry, "resnet_i2i", None, None, [], [])  # default loss l1: builtin's
    assert plan.loss.qualified_name == "builtin:l1"
    with pytest.raises(UsageError, match="offered by several plugins; pick one of"):
        build.plan_run(registry, "resnet_i2i", "l1", None, [], [])  # the user's bare --loss stays ambiguous
    assert build.plan_run(registry, "resnet_i2i", "clash:l1", None, [], []).loss.qualified_name == "clash:l1"


def test_a_name_of_a_disabled_plugin_says_the_plugin_is_skipped(make_plugin, discover_with):
    registry = discover_with(make_plugin("clash", CLASHING_L1), disabled=("clash",))
    with pytest.raises(UsageError, match=r"^loss 'clash:l1' comes from plugin 'clash', which is skipped: "
                                         r"disabled by the user\.$"):
        registry.resolve("loss", "clash:l1")
    broken = discover_with(make_plugin("acme_raise", REGISTER_RAISES))
    with pytest.raises(PluginError, match=r"^model 'acme_raise:net' comes from plugin 'acme_raise', which is "
                                          r"skipped: .*register exploded"):
        broken.resolve("model", "acme_raise:net")  # a run of a plugin that broke since: exit 1


def test_a_bare_name_not_found_mentions_the_skipped_plugins_it_may_belong_to(make_plugin, discover_with, run_zoo):
    site = make_plugin("clash", CLASHING_L1)
    make_plugin("acme_raise", REGISTER_RAISES)
    registry = discover_with(site, disabled=("clash",))
    with pytest.raises(UsageError, match=r"Run 'zoo list models' to see all \(plugins skipped: "
                                         r"(clash \(disabled\), acme_raise \(broken\)|acme_raise \(broken\), "
                                         r"clash \(disabled\))\)\.$"):
        registry.resolve("model", "half_done")
    done = run_zoo("--disable-plugin", "clash", "info", "half_done", env={"PYTHONPATH": str(site)})
    assert done.returncode == 2
    assert "nothing named 'half_done' is installed." in done.stderr and "plugins skipped: " in done.stderr
    assert "acme_raise (broken)" in done.stderr and "clash (disabled)" in done.stderr


def test_a_plugin_installed_later_cannot_make_a_saved_run_ambiguous(make_plugin, zoo_cli, run_zoo, tmp_path):
    run = tmp_path / "run"
    code, _, err = zoo_cli("train", "--model", "resnet_i2i", "--loss", "l1", "--model-opt", "ngf=4",
                           "--model-opt", "blocks=1", "--dataset-opt", "train_count=8", "--dataset-opt",
                           "test_count=4", "--batch-size", "4", "--device", "cpu", "--max-steps", "1",
                           "--run-dir", str(run))
    assert code == 0, err
    env = {"PYTHONPATH": str(make_plugin("clash", CLASHING_L1))}  # a second l1 from now on
    assert run_zoo("info", "l1", env=env).returncode == 2  # the bare name is ambiguous now
    tested = run_zoo("test", "--run", str(run), env=env)
    assert tested.returncode == 0, tested.stderr
    resumed = run_zoo("train", "--resume", str(run), "--max-steps", "2", "--loss", "l1", env=env)
    assert resumed.returncode == 0, resumed.stderr  # the saved builtin:l1, repeated by its bare name
    assert json.loads((run / "config.json").read_text())["config"]["loss"] == "builtin:l1"


def test_a_second_distribution_of_a_plugin_name_can_be_disabled_alone(make_plugin, discover_with, monkeypatch):
    import importlib.metadata

    make_plugin("clashone", CLASHING_L1, plugin="clash", module="clash_one")
    site = make_plugin("clashtwo", CLASHING_L1, plugin="clash", module="clash_two")
    monkeypatch.syspath_prepend(str(site))
    listed = list(zreg._entry_points())  # importlib lists one entry point of a name: add the other's
    others = [ep for name in ("clashone", "clashtwo") for ep in importlib.metadata.distribution(name).entry_points
              if ep.group == zreg.ENTRY_POINT_GROUP and ep.value not in {e.value for e in listed}]
    monkeypatch.setattr(zreg, "_entry_points", lambda: iter(listed + others))
    both = discover_with(site)
    second = next(name for name in both.plugins if name.startswith("clash@"))
    assert both.plugins["clash"].status == both.plugins[second].status == "ok"
    alone = discover_with(site, disabled=(second,))
    assert alone.plugins["clash"].status == "ok" and alone.plugins[second].status == "disabled"
    first = discover_with(site, disabled=("clash@clashone",))  # the first distribution by its full spelling
    assert first.plugins["clash"].status == "disabled" and first.plugins[second].status == "ok"
    every = discover_with(site, disabled=("clash",))
    assert every.plugins["clash"].status == every.plugins[second].status == "disabled"


def test_a_saved_run_whose_plugin_changed_version_or_distribution_gets_a_note(make_plugin, discover_with):
    registry = discover_with(make_plugin("acme", ACME, version="2.3.4"))
    resolved = {"model": {"name": "acme:acme_net", "version": "2.3.3", "distribution": "acme"},
                "loss": {"name": "acme:acme_loss", "version": "2.3.4", "distribution": "acme-fork"},
                "dataset": {"name": "acme:acme_data", "version": "2.3.4"},  # recorded before distributions were
                "hooks": [{"name": "acme:acme_hook", "version": "1.0"}]}
    assert zreg.changed_plugins(registry, resolved) == [
        "zoo: note: model 'acme:acme_net' now comes from acme 2.3.4; the run was made with acme 2.3.3, "
        "so results may differ.",
        "zoo: note: loss 'acme:acme_loss' now comes from acme 2.3.4; the run was made with acme-fork 2.3.4, "
        "so results may differ."]
    assert zreg.changed_plugins(registry, None) == []
    assert zreg.changed_plugins(registry, {"model": {"name": "gone:net", "version": "1"}}) == []


def test_a_run_resumed_under_a_new_plugin_version_keeps_the_first_one(make_plugin, discover_with):
    before = {"model": {"name": "acme:acme_net", "version": "2.3.3", "distribution": "acme"},
              "loss": {"name": "acme:acme_loss", "version": "2.3.4"}}  # recorded before distributions were
    now = {"model": {"name": "acme:acme_net", "version": "2.3.4", "distribution": "acme"},
           "loss": {"name": "acme:acme_loss", "version": "2.3.4", "distribution": "acme"}}
    zreg.keep_first_made_with(before, now)
    assert now["model"]["first_made_with"] == {"version": "2.3.3", "distribution": "acme"}
    assert "first_made_with" not in now["loss"]
    later = {kind: {key: value for key, value in record.items() if key != "first_made_with"}
             for kind, record in now.items()}
    zreg.keep_first_made_with(now, later)  # a second resume under 2.3.4 still knows the first version
    assert later["model"]["first_made_with"] == {"version": "2.3.3", "distribution": "acme"}
    registry = discover_with(make_plugin("acme", ACME, version="2.3.4"))
    assert zreg.changed_plugins(registry, later) == [
        "zoo: note: model 'acme:acme_net' now comes from acme 2.3.4; the run was made with acme 2.3.3, "
        "so results may differ."]
